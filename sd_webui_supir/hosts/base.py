"""AUTOMATIC1111's webui (1.10 and its dev branch): the adapter the Forge families specialise.

The loaded checkpoint is ``sd_models.model_data.sd_model``, an ``ldm``/``sgm`` model whose state dict is
in checkpoint key layout. Memory goes through ``sd_models.send_model_to_cpu`` (which also handles
--medvram / --lowvram) and back through ``send_model_to_device``.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from modules import devices, sd_models

SDXL_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.")


@dataclass
class Offload:
    """What was moved off the device for SUPIR, so that it can be given back."""

    models: list[Any] = field(default_factory=list)
    restore: bool = False
    modules: list[Any] = field(default_factory=list)  # moved to the CPU by hand; go back to the device


def webui_sdxl_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The SDXL tensors of an A1111-style model in checkpoint key layout.

    The webui wraps its text encoders (``sd_hijack``) in modules holding the original as ``wrapped``,
    which inserts ``.wrapped`` into their state-dict keys; removing it gives the file's names back.
    """
    tensors = {}
    for key, tensor in state.items():
        if key.startswith(SDXL_PREFIXES):
            tensors[key.replace(".wrapped.", ".")] = tensor
    return tensors


def on_accelerator(model) -> bool:
    if getattr(model, "lowvram", False):
        return True  # --medvram / --lowvram: send_model_to_device re-applies the webui's own scheme
    device = getattr(model, "device", None)
    if device is None:
        try:
            device = next(model.parameters()).device
        except (AttributeError, StopIteration, TypeError):
            return False
    return str(device).split(":")[0] not in ("cpu", "meta")


class WebuiAdapter:
    family = "a1111"

    @property
    def name(self) -> str:
        return "AUTOMATIC1111"

    # ------------------------------------------------------------------------------------ the checkpoint

    def loaded_model(self) -> Any | None:
        """The loaded checkpoint, or None; never triggers a load (``shared.sd_model`` would)."""
        return sd_models.model_data.sd_model

    def model_for_run(self) -> Any | None:
        """The checkpoint SUPIR may run on, loading it first where the host loads lazily."""
        return self.loaded_model()

    def pending_checkpoint(self) -> str | None:
        """The title of a checkpoint that is selected but not loaded yet (hosts that load lazily)."""
        return None

    def is_sdxl(self, model) -> bool:
        return bool(getattr(model, "is_sdxl", False))

    def describe(self, model) -> str:
        info = getattr(model, "sd_checkpoint_info", None)
        return getattr(info, "title", None) or getattr(info, "name", None) or "unknown"

    def token(self, model) -> Hashable:
        """Identifies the loaded weights: a new load or another checkpoint gives another token."""
        return (id(model), getattr(model, "sd_model_checkpoint", None), getattr(model, "sd_model_hash", None))

    def lora_family(self, model) -> str:
        """How ``lora.unmerged_overrides`` must read this model's LoRA backups."""
        return "a1111"

    def base_problem(self, model) -> str | None:
        """Why this loaded SDXL cannot lend its tensors (quantized storage), or None."""
        return None

    def sdxl_tensors(
        self, model, overrides: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """The SDXL tensors in checkpoint key layout, the host's own storage (nothing copied).

        ``overrides``: tensors to use instead of some of the model's, named as :func:`lora.unmerged_overrides`
        names them for this host (the weights before LoRAs were merged in).
        """
        state = model.state_dict()
        if overrides:
            state.update((k, v) for k, v in overrides.items() if k in state)
        return webui_sdxl_tensors(state)

    # ------------------------------------------------------------------------------------ memory

    def offload(self) -> Offload:
        """Move the host's models off the accelerator; returns what to give back afterwards."""
        model = self.loaded_model()
        result = Offload([model] if model is not None else [], model is not None and on_accelerator(model))
        if model is not None:
            sd_models.send_model_to_cpu(model)
        devices.torch_gc()
        return result

    def restore(self, offload: Offload) -> None:
        """Put back what :meth:`offload` moved; raises when it cannot (out of memory)."""
        if offload.restore:
            for model in offload.models:
                sd_models.send_model_to_device(model)

    def leave_in_ram(self, offload: Offload) -> None:
        """After a failed restore: everything in RAM, so that the next generation starts clean."""
        for model in offload.models:
            with contextlib.suppress(Exception):
                sd_models.send_model_to_cpu(model)  # also undoes --medvram/--lowvram placement
            model.to(devices.cpu)
        gc.collect()

    def empty_cache(self) -> None:
        devices.torch_gc()
