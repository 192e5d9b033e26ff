"""A tiny random SRVGGNetCompact (Real-ESRGAN "compact") state dict, in the key layout spandrel detects."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def compact_state_dict(
    scale: int = 2, features: int = 8, convs: int = 2, seed: int = 0
) -> dict[str, torch.Tensor]:
    """``body.0`` conv 3->F, then (PReLU, conv F->F) x ``convs``, PReLU, and a last conv F->3*scale^2.

    Receptive radius: convs + 2 input pixels (one per 3x3 conv).
    """
    g = torch.Generator().manual_seed(seed)

    def conv(out_ch: int, in_ch: int) -> tuple[torch.Tensor, torch.Tensor]:
        bound = (in_ch * 9) ** -0.5
        w = (torch.rand(out_ch, in_ch, 3, 3, generator=g) * 2 - 1) * bound
        return w, (torch.rand(out_ch, generator=g) * 2 - 1) * 0.1

    state: dict[str, torch.Tensor] = {}
    index = 0
    for layer in range(convs + 2):
        last = layer == convs + 1
        out_ch, in_ch = (3 * scale * scale if last else features), (3 if layer == 0 else features)
        state[f"body.{index}.weight"], state[f"body.{index}.bias"] = conv(out_ch, in_ch)
        index += 1
        if not last:
            state[f"body.{index}.weight"] = torch.full((features,), 0.25)
            index += 1
    return state


def write_compact(path: Path, scale: int = 2, **kwargs) -> Path:
    if path.suffix == ".pth":
        torch.save(compact_state_dict(scale, **kwargs), path)
    else:
        save_file(compact_state_dict(scale, **kwargs), str(path))
    return path
