"""OpenCLIP ViT-bigG tensors from the Hugging Face ``CLIPTextModel`` layout, as SDXL checkpoints name them.

SDXL checkpoints store the second text encoder in open_clip's layout (``conditioner.embedders.1.model.*``).
Hosts built on transformers (the Forge family) hold it as a ``CLIPTextModel`` instead. The two differ in
names only, except that open_clip keeps the attention's query/key/value projections as one
``in_proj_weight`` (concatenated on the output dimension) and the text projection as a matrix applied as
``x @ P``, where a ``Linear`` holds ``P`` transposed. The concatenation is the only copy made: about
0.3 GB at fp16 for bigG's 32 layers; every other tensor is the host's own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

BIGG_PREFIX = "conditioner.embedders.1.model."
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_RENAMES = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "self_attn.out_proj.": "attn.out_proj.",
}
_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
DEFAULT_LOGIT_SCALE = 4.6052  # ln(100): open_clip's value; SUPIR never uses it, the model only holds it


def has_hf_layout(tensors: Mapping[str, torch.Tensor], prefix: str) -> bool:
    return f"{prefix}encoder.layers.0.self_attn.q_proj.weight" in tensors


def bigg_from_hf(
    text_model: Mapping[str, torch.Tensor],
    projection: torch.Tensor,
    projection_is_linear: bool,
    logit_scale: torch.Tensor | None = None,
    prefix: str = BIGG_PREFIX,
) -> dict[str, torch.Tensor]:
    """bigG in checkpoint layout from a ``CLIPTextModel``'s ``text_model`` state dict (keys without
    ``text_model.``) and its text projection: a ``Linear`` weight (``projection_is_linear``) or the
    open_clip matrix itself."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in text_model.items():
        if key in _TOP:
            out[prefix + _TOP[key]] = tensor
            continue
        match = _LAYER.fullmatch(key)
        if match is None:
            continue  # position_ids and other buffers the model does not keep
        layer, rest = int(match.group(1)), match.group(2)
        part = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if part is not None:
            qkv.setdefault((layer, part.group(2)), {})[part.group(1)] = tensor
            continue
        for old, new in _RENAMES.items():
            if rest.startswith(old):
                out[f"{prefix}transformer.resblocks.{layer}.{new}{rest[len(old) :]}"] = tensor
                break
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"CLIP-G layer {layer}: {kind} of q/k/v projections incomplete ({sorted(parts)})")
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = fused
    out[prefix + "text_projection"] = projection.t().contiguous() if projection_is_linear else projection
    if logit_scale is None:
        logit_scale = torch.tensor(DEFAULT_LOGIT_SCALE, dtype=projection.dtype)
    out[prefix + "logit_scale"] = logit_scale
    return out


def hf_from_bigg(tensors: Mapping[str, torch.Tensor], prefix: str = BIGG_PREFIX) -> dict[str, torch.Tensor]:
    """The inverse (``text_model`` keys plus ``text_projection.weight`` as a Linear holds it); for tests and
    fakes of hosts that keep CLIP-G in the transformers layout."""
    out: dict[str, torch.Tensor] = {}
    inverse_top = {v: k for k, v in _TOP.items()}
    inverse = {v: k for k, v in _RENAMES.items()}
    for key, tensor in tensors.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name in inverse_top:
            out[inverse_top[name]] = tensor
        elif name == "text_projection":
            out["text_projection.weight"] = tensor.t().contiguous()
        elif name.startswith("transformer.resblocks."):
            layer, rest = name[len("transformer.resblocks.") :].split(".", 1)
            fused = re.fullmatch(r"attn\.in_proj_(weight|bias)", rest)
            if fused is not None:
                for letter, chunk in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                    out[f"encoder.layers.{layer}.self_attn.{letter}_proj.{fused.group(1)}"] = chunk.clone()
                continue
            for new, old in inverse.items():
                if rest.startswith(new):
                    out[f"encoder.layers.{layer}.{old}{rest[len(new) :]}"] = tensor
                    break
    return out
