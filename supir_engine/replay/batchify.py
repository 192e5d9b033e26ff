"""Replays the original's whole ``batchify_sample`` (f-style fixtures), text embeddings and draws injected."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..colorfix import apply_color_fix
from ..models.vae import FirstStage
from ..pipeline import compute_stage1, restore_latent, sample_anchor
from ..sampling import Conditioning, Denoiser, GuidedConditioning, SamplerSettings


def run_batchify_case(
    denoiser: Denoiser, vae: FirstStage, sidecar: Mapping, t: Mapping[str, torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """f-style fixture: the original's whole batchify_sample with injected text embeddings and draws."""
    from ..models.text import size_embedding

    kw = sidecar["batchify_sample_kwargs"]
    scale = float(sidecar.get("scale_factor", vae.config.scale_factor))
    stage1 = compute_stage1(vae, t["lq_image"], True, scale)
    draws = iter(t[k] for k in sorted(k for k in t if k.startswith("rng_")))
    noise = lambda like: next(draws).to(like)  # noqa: E731 - recorded draws, in order
    anchor = sample_anchor(stage1, noise, scale)
    sizes = size_embedding((1024, 1024, 0, 0, 1024, 1024))

    def cond(side: str) -> Conditioning:
        crossattn = torch.cat([t[f"{side}_text_a"], t[f"{side}_text_b"]], dim=-1)
        vector = torch.cat([t[f"{side}_pooled"], sizes.expand(t[f"{side}_pooled"].shape[0], -1)], dim=-1)
        return Conditioning(crossattn, vector, stage1.control)

    c, uc = cond("c"), cond("uc")
    settings = SamplerSettings(
        cfg_scale=float(kw.get("cfg_scale", 4.0)),
        cfg_scale_start=float(kw["cfg_scale_start"]) if kw.get("use_linear_CFG") else None,
        control_scale=float(kw.get("control_scale", 1.0)),
        control_scale_start=float(kw["control_scale_start"]) if kw.get("use_linear_control_scale") else None,
        restoration_scale=float(kw.get("restoration_scale", -1.0)),
        s_churn=float(kw.get("s_churn", 0.0)),
        s_noise=float(kw.get("s_noise", 1.003)),
    )
    initial = noise(stage1.control)
    latent = restore_latent(
        denoiser,
        "restore_edm",
        initial,
        GuidedConditioning(c, uc, anchor),
        settings,
        int(kw["num_steps"]),
        noise,
    )
    out = apply_color_fix(str(kw.get("color_fix_type", "None")), vae.decode(latent, scale), stage1.reference)
    ours = {
        "out_image": out,
        "intermediate_z_denoise": stage1.control,
        "intermediate_x_stage1": stage1.reference,
        "intermediate_c_crossattn": c.crossattn,
        "intermediate_c_vector": c.vector,
        "intermediate_uc_crossattn": uc.crossattn,
        "intermediate_uc_vector": uc.vector,
    }
    return {k: (t[k], v) for k, v in ours.items() if k in t}
