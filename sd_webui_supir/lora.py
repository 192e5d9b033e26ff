"""Which LoRAs the webui has merged into the loaded checkpoint, and the weights as they were before.

Every supported host merges LoRAs into the loaded SDXL's weights in place and keeps the originals as
backups, so SUPIR, which restores with those weights, would silently restore with the LoRAs applied.

- A1111 (``extensions-builtin/Lora/networks.py``): ``network_apply_weights`` runs in each layer's
  forward. It keeps the original weight on the layer as ``network_weights_backup`` (for a
  ``MultiheadAttention`` a tuple ``(in_proj_weight, out_proj.weight)``) and ``network_bias_backup``, and
  records the merged set as ``network_current_names``: ``(name, te_multiplier, unet_multiplier,
  dyn_dim)`` per LoRA. The backups stay after a restore; only a non-empty ``network_current_names``
  says the weight is altered now.
- Forge and the older Forge Neo (``backend/patcher/lora.py`` ``LoraLoader``, one per model, also reachable
  as ``patcher.lora_loader``): ``backup`` maps parameter names inside ``patcher.model`` to the original
  parameters and holds exactly the weights merged now; ``loaded_hash`` is ``str()`` of the merged
  ``(filename, strength, strength_model, online_mode)`` keys. Online LoRAs are applied in forward, not
  merged.
- reForge and the ComfyUI-style patcher of newer Neo (``ModelPatcher.patch_weight_to_device``):
  ``patcher.backup`` maps parameter names inside ``patcher.model`` to ``(weight, inplace_update)`` while the
  LoRA is merged (``unpatch_model`` restores and clears it); the LoRA list is only on the checkpoint,
  ``sd_model.current_lora_hash``: ``str()`` of ``[[filename, unet_multiplier, te_multiplier(, online)]]``.

Multipliers reported are those merged now: a component (text encoders, UNet) whose weights carry no merge
counts as 0 for that LoRA.
"""

from __future__ import annotations

import ast
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import torch

log = logging.getLogger(__name__)

Family = Literal["a1111", "forge", "reforge", "neo"]

TEXT_ENCODERS = "te"
UNET = "unet"

# Where the Forge families keep each component's patcher, as attribute paths from ``forge_objects``,
# and the attribute path of that patcher's model (the root its backup keys are relative to).
FORGE_COMPONENTS = (
    (UNET, "unet", "unet.model"),
    (TEXT_ENCODERS, "clip.patcher", "clip.cond_stage_model"),
)


def merged_loras(model: Any = None) -> list[str]:
    """The LoRAs merged into the loaded checkpoint now, as ``name:weight`` or ``name:te/unet``.

    ``model``: the webui's ``sd_model``; by default the loaded one (never triggers a load). Empty when
    no checkpoint is loaded, no LoRA is merged, or the host has no LoRA support.
    """
    if model is None:
        model = _loaded_sd_model()
    if model is None:
        return []
    try:
        if getattr(model, "forge_objects", None) is not None:
            weights = _forge_multipliers(model)
        else:
            weights = _a1111_multipliers(model)
    except Exception:  # a host version whose structures differ: report nothing rather than break SUPIR
        log.warning("could not read which LoRAs the webui merged into the checkpoint", exc_info=True)
        return []
    return [_describe(name, te, unet) for name, (te, unet) in weights.items()]


def unmerged_overrides(model_or_forge_objects: Any, family: Family) -> dict[str, torch.Tensor]:
    """The original tensor of each weight a merged LoRA altered, keyed by parameter name.

    The tensors are the host's own backups (not copies; they may be on another device than the live
    weights). Names:

    - ``"a1111"``: ``sd_model.state_dict()`` names, text encoders included with their ``.wrapped.``
      (``model.diffusion_model.….weight``, ``conditioner.embedders.1.wrapped.model.transformer.resblocks.0.
      attn.in_proj_weight``); ``model_or_forge_objects`` is the ``sd_model``.
    - ``"forge"``, ``"neo"``, ``"reforge"``: attribute paths from ``forge_objects``:
      ``unet.model.diffusion_model.…`` and ``clip.cond_stage_model.…`` (e.g. ``clip.cond_stage_model.clip_l.
      transformer.text_model.…``); ``model_or_forge_objects`` is ``forge_objects`` or the ``sd_model``.
    """
    if family == "a1111":
        return dict(_a1111_backups(model_or_forge_objects))
    if family in ("forge", "reforge", "neo"):
        forge_objects = getattr(model_or_forge_objects, "forge_objects", None) or model_or_forge_objects
        return dict(_forge_backups(forge_objects))
    raise ValueError(f"unknown webui family {family!r}: pass one of 'a1111', 'forge', 'reforge', 'neo'")


def _loaded_sd_model() -> Any:
    """The host adapter's loaded checkpoint (None before Forge's first load); None outside a webui."""
    try:
        from . import hosts
    except ImportError:
        return None
    return hosts.current().loaded_model()


def _describe(name: str, te: float, unet: float) -> str:
    if te == unet:
        return f"{name}:{te:g}"
    return f"{name}:{te:g}/{unet:g}"


# A1111


def _a1111_merged_modules(model: Any) -> Iterator[tuple[str, torch.nn.Module]]:
    # remove_duplicate=False: state_dict() names a module shared by two parents under both names
    if not isinstance(model, torch.nn.Module):
        return
    for name, module in model.named_modules(remove_duplicate=False):
        if getattr(module, "network_current_names", ()) and (
            getattr(module, "network_weights_backup", None) is not None
            or getattr(module, "network_bias_backup", None) is not None
        ):
            yield name, module


def _a1111_component(module_name: str) -> str:
    return UNET if module_name.startswith("model.") else TEXT_ENCODERS


def _a1111_multipliers(model: Any) -> dict[str, tuple[float, float]]:
    weights: dict[str, list[float]] = {}
    for module_name, module in _a1111_merged_modules(model):
        component = _a1111_component(module_name)
        for name, te, unet, *_ in module.network_current_names:
            entry = weights.setdefault(name, [0.0, 0.0])
            if component == TEXT_ENCODERS:
                entry[0] = float(te)
            else:
                entry[1] = float(unet)
    return {name: (te, unet) for name, (te, unet) in weights.items()}


def _a1111_backups(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    for name, module in _a1111_merged_modules(model):
        prefix = f"{name}." if name else ""
        weight = getattr(module, "network_weights_backup", None)
        bias = getattr(module, "network_bias_backup", None)
        if isinstance(module, torch.nn.MultiheadAttention):
            in_proj, out_proj = weight if weight is not None else (None, None)
            pairs = (("in_proj_weight", in_proj), ("out_proj.weight", out_proj), ("out_proj.bias", bias))
        else:
            pairs = (("weight", weight), ("bias", bias))
        for field, tensor in pairs:
            if tensor is not None:
                yield prefix + field, tensor


# Forge families


def _attribute(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def _forge_backup_dicts(forge_objects: Any) -> Iterator[tuple[str, str, Any, dict]]:
    """(component, model path, where the backup lives, backup dict) for each component with backups."""
    for component, patcher_path, model_path in FORGE_COMPONENTS:
        patcher = _attribute(forge_objects, patcher_path)
        if patcher is None:
            continue
        loader = getattr(patcher, "lora_loader", None) or _attribute(patcher, "model.lora_loader")
        holder = loader if loader is not None else patcher
        backup = getattr(holder, "backup", None)
        if isinstance(backup, dict) and backup:
            yield component, model_path, holder, backup


def _forge_backups(forge_objects: Any) -> Iterator[tuple[str, torch.Tensor]]:
    for _, model_path, _, backup in _forge_backup_dicts(forge_objects):
        for key, saved in backup.items():
            # reForge / ComfyUI patchers store (weight, inplace_update); LoraLoader stores the tensor
            tensor = saved if isinstance(saved, torch.Tensor) else getattr(saved, "weight", None)
            if tensor is not None:
                yield f"{model_path}.{key}", tensor


def _forge_multipliers(model: Any) -> dict[str, tuple[float, float]]:
    merged: dict[str, dict[str, float]] = {}  # filename -> {component: multiplier}
    for component, _, holder, _ in _forge_backup_dicts(model.forge_objects):
        for filename, multiplier in _forge_merged_files(model, component, holder):
            merged.setdefault(filename, {})[component] = multiplier
    names = _names_by_filename()
    return {
        names.get(os.path.normcase(filename), _file_stem(filename)): (
            parts.get(TEXT_ENCODERS, 0.0),
            parts.get(UNET, 0.0),
        )
        for filename, parts in merged.items()
    }


def _forge_merged_files(model: Any, component: str, holder: Any) -> Iterator[tuple[str, float]]:
    """(filename, multiplier) of each LoRA merged (not online) into a component with backups."""
    loaded_hash = getattr(holder, "loaded_hash", None)
    if loaded_hash is not None:  # LoraLoader keys: (filename, strength, strength_model, online_mode)
        for item in _literal_list(loaded_hash):
            if not (len(item) > 3 and item[3]):
                yield item[0], float(item[1])
        return
    # ComfyUI-style patcher: only the checkpoint lists them, [filename, unet, te(, online_mode)]
    for item in _literal_list(getattr(model, "current_lora_hash", None)):
        if len(item) > 2 and not (len(item) > 3 and item[3]):
            yield item[0], float(item[2] if component == TEXT_ENCODERS else item[1])


def _literal_list(text: Any) -> list:
    if not isinstance(text, str):
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, (list, tuple)) and len(item) >= 2]


def _names_by_filename() -> dict[str, str]:
    """The name each loaded LoRA was written with in the prompt, by file; empty without the Lora extension."""
    networks = sys.modules.get("networks")
    loaded: Iterable = getattr(networks, "loaded_networks", None) or ()
    names = {}
    for net in loaded:
        filename = getattr(getattr(net, "network_on_disk", None), "filename", None)
        name = getattr(net, "mentioned_name", None) or getattr(net, "name", None)
        if filename and name:
            names[os.path.normcase(filename)] = name
    return names


def _file_stem(filename: str) -> str:
    # the webui names a LoRA by its file name without extension (networks.process_network_files)
    return os.path.splitext(os.path.basename(filename))[0]
