"""Network definitions in the ldm/sgm state-dict layout of the real SUPIR and SDXL files."""

from .config import SUPIR_V0, SUPIRConfig, infer_config
from .supir import SUPIRModel, build_supir

__all__ = ["SUPIR_V0", "SUPIRConfig", "SUPIRModel", "build_supir", "infer_config"]
