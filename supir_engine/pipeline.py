"""SUPIRPipeline: PIL image in, restored and upscaled PIL image out.

Data flow of one upscale (each bracket is a stage whose weights are on the device while it runs):
  preprocess -> [denoise encoder -> decoder -> encoder]  stage 1: control latent, colour reference, anchor
             -> [text encoders]                          conditioning, once per image
             -> [UNet + GLVControl]                       restoration-guided sampling, tiled when large
             -> [decoder] -> colour fix -> PIL
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .colorfix import apply_color_fix
from .errors import CancelledError
from .host import Host, NullHost
from .models import SUPIRModel
from .models.vae import FirstStage, split_moments
from .preprocess import prepare_image, to_pil
from .sampling import (
    SAMPLERS,
    SCHEDULES,
    Conditioning,
    Denoiser,
    GuidedConditioning,
    NoiseSource,
    SamplerSettings,
    generator_noise,
)
from .settings import UpscaleSettings

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1


def resolve_seed(seed: int) -> int:
    return random.randint(0, MAX_SEED) if seed is None or seed < 0 else int(seed)


@dataclass
class Stage1:
    """Everything stage 1 produces that does not depend on the seed."""

    control: torch.Tensor  # control latent z_c (scaled)
    reference: torch.Tensor  # colour-fix reference image in [-1, 1]
    anchor_mean: torch.Tensor  # posterior of the encoder on the reference (scaled by the caller)
    anchor_logvar: torch.Tensor


def compute_stage1(vae: FirstStage, lq: torch.Tensor, denoise_stage: bool, scale_factor: float) -> Stage1:
    """Stage 1 of SUPIR: denoise-encode, decode the restoration preview, and encode it again.

    With ``denoise_stage`` off the LQ image itself is encoded by the normal encoder and is the
    colour reference (the denoise encoder smooths some images too much).
    """
    if denoise_stage:
        mean, _ = split_moments(vae.encode_moments(lq, denoise=True))
        control = scale_factor * mean
        reference = vae.decode(control, scale_factor)
    else:
        reference = lq
    mean, logvar = split_moments(vae.encode_moments(reference, denoise=False))
    if not denoise_stage:
        control = scale_factor * mean
    return Stage1(control, reference, mean, logvar)


def sample_anchor(stage1: Stage1, noise: NoiseSource, scale_factor: float) -> torch.Tensor:
    """The restoration anchor: a posterior *sample* (one Gaussian draw), as the original."""
    eps = noise(stage1.anchor_mean)
    return scale_factor * (stage1.anchor_mean + torch.exp(0.5 * stage1.anchor_logvar) * eps)


def sampler_settings(settings: UpscaleSettings) -> SamplerSettings:
    return SamplerSettings(
        cfg_scale=settings.cfg_scale,
        cfg_scale_start=settings.cfg_scale_start,
        control_scale=settings.control_scale,
        control_scale_start=settings.control_scale_start,
        restoration_scale=settings.restoration_scale,
        s_churn=settings.s_churn,
        s_noise=settings.s_noise,
        eta=settings.eta,
        tile_size=settings.tile_size,
        tile_stride=settings.tile_stride,
    )


def restore_latent(
    denoiser: Denoiser,
    sampler: str,
    initial_noise: torch.Tensor,
    guided: GuidedConditioning,
    settings: SamplerSettings,
    steps: int,
    noise: NoiseSource,
    callback: Callable | None = None,
) -> torch.Tensor:
    sigmas = SCHEDULES[sampler](steps)
    return SAMPLERS[sampler](denoiser, initial_noise, sigmas, guided, settings, callback, noise)


@dataclass
class UpscaleResult:
    image: Image.Image
    settings: UpscaleSettings  # as actually used: the seed is the one drawn when -1 was asked
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)
    network_evaluations: int = 0
    stage1_cached: bool = False


class _CountingDenoiser(Denoiser):
    def __init__(self, inner: Denoiser):
        super().__init__(inner.unet, inner.control_model, inner.dtype)
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return super().__call__(*args, **kwargs)


class SUPIRPipeline:
    """A loaded SUPIR model plus where and in which dtype each stage runs.

    The memory policy is deliberately simple here: each stage's modules are moved to the device
    for the stage and back afterwards (a no-op on the CPU).
    """

    def __init__(
        self,
        model: SUPIRModel,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        vae_dtype: torch.dtype | None = None,
    ):
        self.model = model
        self.device = torch.device(device)
        on_cpu = self.device.type == "cpu"
        self.dtype = dtype or (torch.float32 if on_cpu else torch.float16)
        self.vae_dtype = vae_dtype or (torch.float32 if on_cpu else torch.bfloat16)
        self._stage1_cache: tuple[tuple, Stage1] | None = None

    @classmethod
    def from_files(
        cls,
        sdxl: str | Path | None,
        supir: str | Path | None,
        device: torch.device | str = "cpu",
        **load_options,
    ) -> SUPIRPipeline:
        from .checkpoints import LoadOptions, load_supir

        model, _ = load_supir(sdxl, supir, LoadOptions(**load_options))
        return cls(model, device)

    @property
    def scale_factor(self) -> float:
        return self.model.first_stage_model.config.scale_factor

    @contextlib.contextmanager
    def _stage(
        self, name: str, host: Host, timings: dict[str, float], *modules: torch.nn.Module, total: int = 1
    ) -> Iterator[None]:
        """Run a stage with its modules on the device; stages with steps report them themselves."""
        if host.should_stop():
            raise CancelledError("stopped before " + name)
        host.progress(name, 0, total)
        start = time.perf_counter()
        moved = [m for m in modules if self.device.type != "cpu"]
        for m in moved:
            m.to(self.device)
        try:
            yield
        finally:
            for m in moved:
                m.to("cpu")
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        if total == 1:
            host.progress(name, 1, 1)

    def clear_cache(self) -> None:
        self._stage1_cache = None

    def _vae(self, settings: UpscaleSettings) -> FirstStage:
        vae = self.model.first_stage_model
        if settings.vae_encoder_tile is None and settings.vae_decoder_tile is None:
            return vae
        from .tiled_vae import TiledFirstStage

        return TiledFirstStage(vae, settings.vae_encoder_tile, settings.vae_decoder_tile)

    def _stage1(
        self, lq: torch.Tensor, settings: UpscaleSettings, host: Host, timings
    ) -> tuple[Stage1, bool]:
        key = (
            hashlib.sha1(lq.cpu().numpy().tobytes()).hexdigest(),
            tuple(lq.shape),
            settings.denoise_stage,
            settings.vae_encoder_tile,
            settings.vae_decoder_tile,
            id(self.model),
            self.vae_dtype,
        )
        if self._stage1_cache is not None and self._stage1_cache[0] == key:
            return self._stage1_cache[1], True
        vae = self.model.first_stage_model
        with self._stage("stage1", host, timings, vae):
            x = lq.to(self.device, self.vae_dtype)
            result = compute_stage1(self._vae(settings), x, settings.denoise_stage, self.scale_factor)
        self._stage1_cache = (key, result)
        return result, False

    def _conditioning(self, settings: UpscaleSettings, host: Host, timings) -> tuple[torch.Tensor, ...]:
        conditioner = self.model.conditioner
        with self._stage("text", host, timings, conditioner):
            conditioner.compute_device, conditioner.compute_dtype = self.device, self.dtype
            c = conditioner([settings.positive_text])
            uc = conditioner([settings.negative_prompt])
        return (*c, *uc)

    def upscale(
        self, image: Image.Image, settings: UpscaleSettings | None = None, host: Host | None = None
    ) -> UpscaleResult:
        """Restore and upscale ``image``. Raises CancelledError when the host asks to stop."""
        settings = settings or UpscaleSettings()
        settings = settings.replace(seed=resolve_seed(settings.seed))
        host = host or NullHost()
        timings: dict[str, float] = {}
        host.acquire_device()
        try:
            with torch.inference_mode():
                return self._upscale(image, settings, host, timings)
        finally:
            host.release_device()

    def _upscale(self, image: Image.Image, settings: UpscaleSettings, host: Host, timings) -> UpscaleResult:
        start = time.perf_counter()
        lq, _ = prepare_image(image, settings.scale, settings.min_size, settings.alignment)
        timings["preprocess"] = time.perf_counter() - start
        stage1, cached = self._stage1(lq, settings, host, timings)
        crossattn, vector, un_crossattn, un_vector = self._conditioning(settings, host, timings)

        generator = torch.Generator("cpu").manual_seed(settings.seed)
        noise = generator_noise(generator)
        anchor = sample_anchor(stage1, noise, self.scale_factor).to(self.device, torch.float32)
        control = stage1.control.to(self.device, torch.float32)
        guided = GuidedConditioning(
            Conditioning(crossattn.to(self.device), vector.to(self.device), control),
            Conditioning(un_crossattn.to(self.device), un_vector.to(self.device), control),
            anchor,
        )
        initial = noise(control)
        denoiser = _CountingDenoiser(Denoiser(self.model.unet, self.model.control_model, self.dtype))

        def on_step(info) -> None:
            host.progress("sampling", info.step + 1, info.total)
            if host.should_stop():
                raise CancelledError(f"stopped after sampler step {info.step + 1} of {info.total}")

        with self._stage("sampling", host, timings, self.model.model, total=settings.steps):
            latent = restore_latent(
                denoiser,
                settings.sampler,
                initial,
                guided,
                sampler_settings(settings),
                settings.steps,
                noise,
                on_step,
            )
        vae = self.model.first_stage_model
        with self._stage("decode", host, timings, vae):
            decoded = self._vae(settings).decode(latent.to(self.vae_dtype), self.scale_factor).float()
            fixed = apply_color_fix(settings.color_fix, decoded, stage1.reference.float().to(decoded.device))
        out = to_pil(fixed.cpu())
        return UpscaleResult(out, settings, image.size, out.size, timings, denoiser.calls, cached)


# ------------------------------------------------------------------------------ golden fixture


def run_batchify_case(
    denoiser: Denoiser, vae: FirstStage, sidecar: Mapping, t: Mapping[str, torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """f-style fixture: the original's whole batchify_sample with injected text embeddings and draws."""
    from .models.text import size_embedding

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
