"""The Forge families: Forge and Forge Neo (``backend``), reForge and Forge Classic (``ldm_patched``).

Both keep the loaded SDXL in ``sd_model.forge_objects``: the UNet at ``unet.model.diffusion_model`` (SGM
key layout), the VAE at ``vae.first_stage_model`` (LDM layout), the text encoders at
``clip.cond_stage_model.clip_l`` / ``.clip_g`` as transformers-layout ``CLIPTextModel``s. Memory belongs to
the host's model manager: ``sd_models.send_model_to_cpu`` is a no-op stub there (Neo removed it), so
SUPIR asks the manager to unload everything and, afterwards, to load back what it had loaded.
Forge and Neo load the checkpoint lazily (``FakeInitialModel`` until the first generation):
``sd_models.forge_model_reload()`` loads the selected one.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import types
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import torch
from modules import devices, sd_models, shared

from supir_engine.clip_layout import bigg_from_hf
from supir_engine.models import tokenizer

from .base import Offload, WebuiAdapter

log = logging.getLogger(__name__)

QUANTIZED = (
    "the loaded checkpoint's UNet is stored as {kind}, which SUPIR cannot run on. Choose the SDXL file in "
    "Settings > SUPIR > 'SDXL base model SUPIR runs on' (SUPIR then reads it itself, in "
    "Settings > SUPIR > weight storage dtype), or load the checkpoint with a float or fp8 UNet "
    "(Forge: 'Diffusion in Low Bits' set to Automatic or fp8)."
)
_FLOAT_DTYPES = {torch.float32, torch.float16, torch.bfloat16}
_FP8_DTYPES = {getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)}
# The same file install.py looks for (it runs before this package can be imported).
_CLIP_MERGES = "backend/huggingface/stabilityai/stable-diffusion-xl-base-1.0/tokenizer/merges.txt"


def storage_kind(tensor: torch.Tensor) -> str | None:
    """None for plain float / fp8 tensors; else what the host's quantized parameter is."""
    for marker, kind in (
        ("gguf_cls", "GGUF"),
        ("bnb_quantized", "bitsandbytes nf4/fp4"),
        ("quant_state", "nf4"),
    ):
        if hasattr(tensor, marker):
            return kind
    if tensor.dtype in _FLOAT_DTYPES or tensor.dtype in _FP8_DTYPES:
        return None
    return f"{type(tensor).__name__} ({str(tensor.dtype).replace('torch.', '')})"


Overrides = Mapping[str, torch.Tensor]
_NONE: Overrides = types.MappingProxyType({})


def _state(module: torch.nn.Module, path: str, overrides: Overrides) -> dict[str, torch.Tensor]:
    """``module``'s state dict, with the overrides named ``<path>.<key>`` (paths from ``forge_objects``)."""
    state = module.state_dict()
    if overrides:
        for key in state:
            replacement = overrides.get(f"{path}.{key}")
            if replacement is not None:
                state[key] = replacement
    return state


def clip_g_tensors(
    clip_g: torch.nn.Module, overrides: Overrides = _NONE, path: str = "clip.cond_stage_model.clip_g"
) -> dict[str, torch.Tensor]:
    """bigG in checkpoint layout from a host's ``IntegratedCLIP`` / ``SDClipModel`` around a CLIPTextModel."""
    transformer = clip_g.transformer
    state = _state(transformer, path + ".transformer", overrides)
    text = {k[len("text_model.") :]: v for k, v in state.items() if k.startswith("text_model.")}
    linear = getattr(transformer, "text_projection", None)
    if isinstance(getattr(linear, "weight", None), torch.Tensor):  # Forge builds its own Linear class
        projection, is_linear = state.get("text_projection.weight", linear.weight).detach(), True
    elif isinstance(getattr(clip_g, "text_projection", None), torch.Tensor):
        projection, is_linear = clip_g.text_projection.detach(), False  # applied as x @ P
    else:
        raise KeyError("the host's CLIP-G has no text projection")
    scale = getattr(clip_g, "logit_scale", None)
    return bigg_from_hf(
        text, projection, is_linear, scale.detach() if isinstance(scale, torch.Tensor) else None
    )


def forge_sdxl_tensors(forge_objects, overrides: Overrides = _NONE) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    unet = _state(forge_objects.unet.model.diffusion_model, "unet.model.diffusion_model", overrides)
    tensors.update(("model.diffusion_model." + k, v) for k, v in unet.items())
    vae = forge_objects.vae.first_stage_model
    tensors.update(("first_stage_model." + k, v) for k, v in vae.state_dict().items())
    clip = forge_objects.clip.cond_stage_model
    clip_l = _state(clip.clip_l.transformer, "clip.cond_stage_model.clip_l.transformer", overrides)
    for key, value in clip_l.items():
        if key.startswith("text_model."):
            tensors["conditioner.embedders.0.transformer." + key] = value
    tensors.update(clip_g_tensors(clip.clip_g, overrides))
    return tensors


def register_host_tokenizer() -> None:
    """Forge Neo installs no open_clip: the CLIP merges the host ships serve SUPIR's tokenizer as well."""
    root = getattr(shared.cmd_opts, "forge_root", None) or getattr(
        importlib.import_module("modules.paths_internal"), "script_path", "."
    )
    candidate = Path(root) / _CLIP_MERGES
    if candidate.is_file() and candidate not in tokenizer.EXTRA_VOCAB_FILES:
        tokenizer.EXTRA_VOCAB_FILES.append(candidate)


class ForgeAdapter(WebuiAdapter):
    family = "forge"
    _memory_module = "backend.memory_management"

    def __init__(self) -> None:
        with contextlib.suppress(Exception):
            register_host_tokenizer()

    @property
    def memory(self):
        return importlib.import_module(self._memory_module)

    @property
    def name(self) -> str:
        with contextlib.suppress(Exception):
            args = importlib.import_module("backend.args")
            return "Forge" if isinstance(getattr(args, "dynamic_args", None), dict) else "Forge Neo"
        return "Forge"

    # ------------------------------------------------------------------------------------ the checkpoint

    def loaded_model(self) -> Any | None:
        model = sd_models.model_data.sd_model
        return model if getattr(model, "forge_objects", None) is not None else None  # not FakeInitialModel

    def model_for_run(self) -> Any | None:
        reload = getattr(sd_models, "forge_model_reload", None)
        if reload is not None:
            if not getattr(sd_models.model_data, "forge_loading_parameters", None):
                with contextlib.suppress(Exception):  # set by the UI at start; an API-only start may lack it
                    importlib.import_module("modules_forge.main_entry").refresh_model_loading_parameters()
            reload()
        return self.loaded_model()

    def pending_checkpoint(self) -> str | None:
        if self.loaded_model() is not None:
            return None
        params = getattr(sd_models.model_data, "forge_loading_parameters", None) or {}
        info = params.get("checkpoint_info")
        title = getattr(info, "title", None) or getattr(shared.opts, "sd_model_checkpoint", None)
        return str(title) if title else None

    def token(self, model) -> Hashable:
        unet = model.forge_objects.unet.model.diffusion_model
        lora = getattr(model, "current_lora_hash", None)
        return (id(model), getattr(model, "sd_model_hash", None), id(unet), str(lora))

    def lora_family(self, model) -> str:
        return "neo" if self.name == "Forge Neo" else "forge"

    def base_problem(self, model) -> str | None:
        for part in (model.forge_objects.unet.model.diffusion_model,):
            for tensor in part.parameters():
                kind = storage_kind(tensor)
                if kind is not None:
                    return QUANTIZED.format(kind=kind)
        return None

    def sdxl_tensors(self, model, overrides: Overrides | None = None) -> dict[str, torch.Tensor]:
        return forge_sdxl_tensors(model.forge_objects, overrides or _NONE)

    # ------------------------------------------------------------------------------------ memory

    def offload(self) -> Offload:
        memory = self.memory
        loaded = list(getattr(memory, "current_loaded_models", []))
        on_device = [
            lm for lm in loaded if str(getattr(lm, "device", "cpu")).split(":")[0] not in ("cpu", "meta")
        ]
        memory.unload_all_models()
        stuck = self._stuck_on_device()
        for module in stuck:  # offload device = GPU (--always-gpu / high-VRAM): SUPIR needs the room
            module.to(devices.cpu)
        self.empty_cache()
        return Offload([lm.model for lm in on_device], bool(on_device) or bool(stuck), stuck)

    def _stuck_on_device(self) -> list[torch.nn.Module]:
        model = self.loaded_model()
        if model is None:
            return []
        objects = model.forge_objects
        modules = [objects.unet.model, objects.vae.first_stage_model, objects.clip.cond_stage_model]
        stuck = []
        for module in modules:
            first = next(iter(module.parameters()), None)
            if first is not None and first.device.type not in ("cpu", "meta"):
                stuck.append(module)
        return stuck

    def restore(self, offload: Offload) -> None:
        for module in offload.modules:
            module.to(devices.device)
        if offload.restore and offload.models:
            self.memory.load_models_gpu(offload.models)

    def leave_in_ram(self, offload: Offload) -> None:
        with contextlib.suppress(Exception):
            self.memory.unload_all_models()
        for module in offload.modules:
            module.to(devices.cpu)

    def empty_cache(self) -> None:
        memory = self.memory
        try:
            memory.soft_empty_cache(force=True)
        except TypeError:
            memory.soft_empty_cache()


class ReForgeAdapter(ForgeAdapter):
    """reForge / Forge Classic: an A1111 model object with ``forge_objects`` beside it, loaded at start."""

    family = "reforge"
    _memory_module = "ldm_patched.modules.model_management"

    @property
    def name(self) -> str:
        return "reForge"

    # The checkpoint is A1111's object, loaded at start-up; memory and tensors are Forge's.
    loaded_model = WebuiAdapter.loaded_model
    model_for_run = WebuiAdapter.model_for_run
    pending_checkpoint = WebuiAdapter.pending_checkpoint

    def token(self, model) -> Hashable:
        if getattr(model, "forge_objects", None) is None:
            return WebuiAdapter.token(self, model)
        return super().token(model)

    def lora_family(self, model) -> str:
        return "reforge" if getattr(model, "forge_objects", None) is not None else "a1111"

    def base_problem(self, model) -> str | None:
        return super().base_problem(model) if getattr(model, "forge_objects", None) is not None else None

    def sdxl_tensors(self, model, overrides: Overrides | None = None) -> dict[str, torch.Tensor]:
        if getattr(model, "forge_objects", None) is None:
            return WebuiAdapter.sdxl_tensors(self, model, overrides)
        return forge_sdxl_tensors(model.forge_objects, overrides or _NONE)
