"""The whole SUPIR model as one module whose state_dict() is the real checkpoint layout."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..sampling import TRAINING_SIGMAS
from .config import SUPIR_V0, SUPIRConfig
from .control import GLVControl
from .text import TextConditioner
from .unet import SUPIRUNet
from .vae import FirstStage


class DiffusionModels(nn.Module):
    """Holder giving the ``model.diffusion_model`` / ``model.control_model`` key prefixes."""

    def __init__(self, config: SUPIRConfig):
        super().__init__()
        self.diffusion_model = SUPIRUNet(config.unet)
        self.control_model = GLVControl(config.unet)


class DenoiserBuffers(nn.Module):
    """Holds ``denoiser.sigmas``; always recomputed from the schedule, never read from a file."""

    def __init__(self):
        super().__init__()
        self.register_buffer("sigmas", torch.empty(len(TRAINING_SIGMAS)))

    def reset(self) -> None:
        self.sigmas = torch.tensor(TRAINING_SIGMAS, dtype=torch.float32)


class SUPIRModel(nn.Module):
    def __init__(self, config: SUPIRConfig = SUPIR_V0):
        super().__init__()
        self.config = config
        self.model = DiffusionModels(config)
        self.first_stage_model = FirstStage(config.vae)
        self.conditioner = TextConditioner(config.text)
        self.denoiser = DenoiserBuffers()

    @property
    def unet(self) -> SUPIRUNet:
        return self.model.diffusion_model

    @property
    def control_model(self) -> GLVControl:
        return self.model.control_model


_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
)


@contextlib.contextmanager
def _skip_weight_init() -> Iterator[None]:
    """Random initialisation is pointless for weights that are about to be replaced.

    On the meta device it is also slow: it goes through reference implementations that import
    torch's compiler stack (seconds, and ~150 MiB of RSS).
    """
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def build_supir(config: SUPIRConfig | None = None, device: torch.device | str = "meta") -> SUPIRModel:
    """Build the model with uninitialised tensors on ``device`` (meta: no memory at all).

    Load weights afterwards with ``load_state_dict(..., assign=True)`` (see checkpoints.py).
    """
    with torch.device(device), _skip_weight_init():
        model = SUPIRModel(config or SUPIR_V0)
    if torch.device(device).type != "meta":
        model.denoiser.reset()
    return model
