"""SUPIR as a webui Upscaler: "SUPIR-v0Q" / "SUPIR-v0F" in Hires. fix, SD upscale and the Extras dropdowns.

The webui instantiates every ``modules.upscaler.Upscaler`` subclass at start-up (after loading extension
scripts) and passes the ``--<name>-models-path`` flag, here ``--supir-models-path``. Forge Neo and reForge
list only their own upscalers, so :func:`ensure_listed` adds SUPIR's entries before the UI is built where
they are missing. The parameters are not the accordion's: they come from Settings (default preset and prompts,
steps), with no caption.
"""

from __future__ import annotations

import logging
from pathlib import Path

from modules import shared
from modules.upscaler import Upscaler, UpscalerData
from PIL import Image

from supir_engine.errors import SupirError

from . import fallbacks, runner
from .args import model_name, to_settings
from .options import default_args, models_dir, opt

log = logging.getLogger(__name__)


class UpscalerSUPIR(Upscaler):
    name = "SUPIR"

    def __init__(self, dirname: str | None = None) -> None:
        self.user_path = dirname
        super().__init__(create_dirs=False)
        self.model_path = str(models_dir())
        self.scalers = [
            UpscalerData(model_name(variant), str(path), self, 2)
            for variant, path in runner.supir_files().items()
        ]

    def load_model(self, path: str) -> None:
        return None  # loaded on first use and cached by the runner

    def do_upscale(self, img: Image.Image, selected_model: str | None = None) -> Image.Image:
        variant = _variant_of(selected_model)
        args = default_args()
        steps = int(opt("supir_upscaler_steps"))
        if steps:
            args = args.replace(steps=steps)
        settings = to_settings(args.replace(scale=max(self.scale, 1.0)), runner.base_settings(), "", -1)
        name = model_name(variant)
        try:
            result = runner.upscale(img.convert("RGB"), settings, variant, label="SUPIR upscaler").image
        except Exception as exc:  # the webui then resizes the input with Lanczos: say so, and why
            reason = runner.user_message(exc).removeprefix("SUPIR: ")
            if not isinstance(exc, SupirError):
                log.exception("SUPIR upscaler failed")
            message = fallbacks.record(name, reason).describe("Upscaler")
            log.warning(message)
            shared.state.textinfo = message
            return img
        fallbacks.record(name, None)
        return result


def _variant_of(path: str | None) -> str:
    """The variant whose file the webui selected (its UpscalerData.data_path)."""
    for variant, found in runner.supir_files().items():
        if str(found) == str(path):
            return variant
    return "F" if "v0f" in Path(str(path)).name.lower() else "Q"


def ensure_listed() -> None:
    """Add SUPIR's entries to ``shared.sd_upscalers`` when the webui did not make them from the subclass."""
    listed = {getattr(entry.scaler, "name", None) for entry in shared.sd_upscalers}
    if UpscalerSUPIR.name in listed:
        return
    path = getattr(shared.cmd_opts, "supir_models_path", None)
    scaler = UpscalerSUPIR(path)
    scaler.user_path = path
    shared.sd_upscalers = [*shared.sd_upscalers, *scaler.scalers]
