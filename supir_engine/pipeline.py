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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from .colorfix import apply_color_fix
from .device_policy import Precision, precision_for
from .errors import CancelledError, DeviceMemoryError
from .finite import check_sampled, run_vae_checked
from .host import Host, NullHost
from .memory import MemoryConfig, MemoryPlan, Residency, Workload, memory_config, plan_memory
from .memory.host_heap import release_free_heap
from .models import SUPIRModel
from .models.vae import FirstStage, split_moments
from .oom import drop_frames, empty_device_cache, is_out_of_memory
from .pre_upscale import prepare_input
from .preprocess import target_size, to_pil
from .regions import TileGrid, assign_captions, grid_for_output, per_tile_conditionings, tile_texts
from .resume_options import ResumeOptions
from .resume_run import ResumeRun
from .sampling import (
    SAMPLERS,
    SCHEDULES,
    Conditioning,
    Denoiser,
    GuidedConditioning,
    NoiseSource,
    SamplerSettings,
    SamplerStart,
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

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.control, self.reference, self.anchor_mean, self.anchor_logvar)

    def to(self, device: torch.device | str) -> Stage1:
        return Stage1(*(t.to(device) for t in self.tensors()))


StagePlacement = Callable[[str], contextlib.AbstractContextManager]


def compute_stage1(
    vae: FirstStage,
    lq: torch.Tensor,
    denoise_stage: bool,
    scale_factor: float,
    place: StagePlacement | None = None,
) -> Stage1:
    """Stage 1 of SUPIR: denoise-encode, decode the restoration preview, and encode it again.

    With ``denoise_stage`` off the LQ image itself is encoded by the normal encoder and is the
    colour reference (the denoise encoder smooths some images too much). ``place(part)`` runs each of
    "denoise_encode", "decode" and "encode" with that part of the VAE on the device.
    """
    place = place or (lambda part: contextlib.nullcontext())
    if denoise_stage:
        with place("denoise_encode"):
            mean, _ = split_moments(vae.encode_moments(lq, denoise=True))
        control = scale_factor * mean
        with place("decode"):
            reference = vae.decode(control, scale_factor)
    else:
        reference = lq
    with place("encode"):
        mean, logvar = split_moments(vae.encode_moments(reference, denoise=False))
    if not denoise_stage:
        control = scale_factor * mean
    return Stage1(control, reference, mean, logvar)


def sample_anchor(stage1: Stage1, noise: NoiseSource, scale_factor: float) -> torch.Tensor:
    """The restoration anchor: a posterior *sample* (one Gaussian draw), as the original."""
    eps = noise(stage1.anchor_mean)
    return scale_factor * (stage1.anchor_mean + torch.exp(0.5 * stage1.anchor_logvar) * eps)


def sampler_settings(
    settings: UpscaleSettings, batch_cfg: bool = True, tile_batch: int = 1, lockstep: bool = False
) -> SamplerSettings:
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
        batch_cfg=batch_cfg,
        tile_batch=tile_batch,
        lockstep=lockstep,
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
    start: SamplerStart | None = None,
) -> torch.Tensor:
    sigmas = SCHEDULES[sampler](steps)
    resumed = {} if start is None else {"start": start}  # samplers wrapped by callers may not take it
    return SAMPLERS[sampler](denoiser, initial_noise, sigmas, guided, settings, callback, noise, **resumed)


@dataclass
class UpscaleResult:
    image: Image.Image
    settings: UpscaleSettings  # as actually used: the seed is the one drawn when -1 was asked
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)
    network_evaluations: int = 0
    stage1_cached: bool = False
    memory: MemoryPlan | None = None  # how device memory was used (policy, residency, tiles, CFG batching)
    precision: Precision | None = None  # compute dtypes of each part, and why
    bytes_to_device: dict[str, int] = field(default_factory=dict)  # weight bytes copied, per stage
    notes: list[str] = field(default_factory=list)  # what the run did differently (e.g. an fp32 VAE retry)
    base: str = ""  # the SDXL base it ran on, as the front-end names it (set by front-ends)
    base_loras: str = ""  # LoRAs merged into that base by a host, as the front-end describes them
    resumed_at: tuple[int, int] | None = None  # (steps done, steps) of a saved state the run resumed from


class _CountingDenoiser(Denoiser):
    def __init__(self, inner: Denoiser):
        super().__init__(inner.unet, inner.control_model, inner.dtype)
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return super().__call__(*args, **kwargs)

    def steps(self, *args, **kwargs):
        self.calls += 1
        return super().steps(*args, **kwargs)


class SUPIRPipeline:
    """A loaded SUPIR model plus where and in which dtype each stage runs.

    ``precision`` (a Precision, or ``auto`` / ``fp32`` / ``fp16`` / ``bf16``; device_policy.py) decides the
    compute dtypes; ``dtype`` (UNet, control, text) and ``vae_dtype`` override it. ``memory`` (a
    MemoryConfig or a policy name) decides which weights are on the device when; see memory.py.
    ``transfer`` and ``observer`` are passed to the Residency (tests watch residency with them).
    """

    def __init__(
        self,
        model: SUPIRModel,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        vae_dtype: torch.dtype | None = None,
        memory: MemoryConfig | str | None = None,
        *,
        precision: Precision | str | None = None,
        transfer: Callable[[torch.Tensor], torch.Tensor] | None = None,
        observer: Callable[[str, str], None] | None = None,
    ):
        self.model = model
        self.device = torch.device(device)
        if not isinstance(precision, Precision):
            precision = precision_for(self.device, precision or "auto")
        if dtype is not None or vae_dtype is not None:
            precision = precision.replace(
                unet=dtype or precision.unet,
                text=dtype or precision.text,
                vae=vae_dtype or precision.vae,
                reason=precision.reason + "; dtypes set by the caller",
            )
        self.precision = precision
        self.dtype, self.text_dtype, self.vae_dtype = precision.unet, precision.text, precision.vae
        log.info("SUPIR precision on %s: %s (%s)", self.device, precision.label, precision.reason)
        self.memory = memory_config(memory)
        self._transfer, self._observer = transfer, observer
        self._residency: Residency | None = None
        self._stage1_cache: tuple[tuple, Stage1, list[str]] | None = None  # key, result, its notes
        self._vae_storage: torch.device | None = None  # where the tiled VAE keeps its maps (None: RAM)

    @classmethod
    def from_files(
        cls,
        sdxl: str | Path | None,
        supir: str | Path | None,
        device: torch.device | str = "cpu",
        memory: MemoryConfig | str | None = None,
        precision: Precision | str | None = None,
        **load_options,
    ) -> SUPIRPipeline:
        """Load the model in the storage dtypes ``precision`` picks for ``device`` (``load_options`` win)."""
        from .checkpoints import LoadOptions, load_supir

        if not isinstance(precision, Precision):
            precision = precision_for(torch.device(device), precision or "auto")
        storage, vae_storage = precision.storage_dtypes(load_options.get("dtype", "auto"))
        load_options = {"dtype": storage, "vae_dtype": vae_storage, **load_options}
        model, _ = load_supir(sdxl, supir, LoadOptions(**load_options))
        return cls(model, device, memory=memory, precision=precision)

    @property
    def scale_factor(self) -> float:
        return self.model.first_stage_model.config.scale_factor

    @contextlib.contextmanager
    def _stage(
        self,
        name: str,
        host: Host,
        timings: dict[str, float],
        *modules: nn.Module,
        total: int = 1,
        streamed: Sequence[nn.Module] = (),
    ) -> Iterator[None]:
        """Run a stage with its modules on the device; stages with steps report them themselves."""
        if host.should_stop():
            raise CancelledError("stopped before " + name)
        host.progress(name, 0, total)
        start = time.perf_counter()
        try:
            with self._residency.stage(name, modules, streamed):
                yield
        finally:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        if total == 1:
            host.progress(name, 1, 1)

    def _vae_part(self, part: str) -> contextlib.AbstractContextManager:
        vae = self.model.first_stage_model
        modules = {
            "denoise_encode": (vae.denoise_encoder, vae.quant_conv),
            "decode": (vae.decoder, vae.post_quant_conv),
            "encode": (vae.encoder, vae.quant_conv),
        }[part]
        return self._residency.stage(f"stage1.{part}", modules)

    def clear_cache(self) -> None:
        self._stage1_cache = None

    def _vae(self, settings: UpscaleSettings) -> FirstStage:
        vae = self.model.first_stage_model
        if settings.vae_encoder_tile is None and settings.vae_decoder_tile is None:
            return vae
        from .tiled_vae import TiledFirstStage

        return TiledFirstStage(
            vae, settings.vae_encoder_tile, settings.vae_decoder_tile, storage_device=self._vae_storage
        )

    def _stage1_key(self, image: Image.Image, settings: UpscaleSettings) -> tuple:
        return (
            hashlib.sha1(image.tobytes()).hexdigest(),
            image.size,
            image.mode,
            settings.scale,
            settings.min_size,
            settings.alignment,
            settings.denoise_stage,
            settings.vae_encoder_tile,
            settings.vae_decoder_tile,
            settings.pre_upscaler,
            settings.pre_upscale_tile,
            id(self.model),
            self.vae_dtype,
        )

    def _stage1(
        self, lq: torch.Tensor, key: tuple, settings: UpscaleSettings, host: Host, timings, notes: list[str]
    ) -> Stage1:
        """Stage 1 results, kept in RAM (not on the device) for the next run with the same input."""
        if self._stage1_cache is not None and self._stage1_cache[0] == key:
            notes.extend(self._stage1_cache[2])
            return self._stage1_cache[1]
        own_notes: list[str] = []

        def run(dtype: torch.dtype) -> Stage1:
            x = lq.to(self.device, dtype)
            vae = self._vae(settings)
            return compute_stage1(vae, x, settings.denoise_stage, self.scale_factor, self._vae_part)

        with self._stage("stage1", host, timings):
            result = run_vae_checked(run, self.vae_dtype, "stage 1 (VAE)", own_notes, Stage1.tensors)
            result = result.to("cpu")
        self._stage1_cache = (key, result, own_notes)
        notes.extend(own_notes)
        return result

    def _decode(self, settings: UpscaleSettings, latent: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self._vae(settings).decode(latent.to(dtype), self.scale_factor).float()

    def _conditioning(self, settings: UpscaleSettings, host: Host, timings) -> tuple[torch.Tensor, ...]:
        conditioner = self.model.conditioner
        with self._stage("text", host, timings, streamed=(conditioner,)):
            conditioner.compute_device, conditioner.compute_dtype = self.device, self.text_dtype
            c = conditioner([settings.positive_text])
            uc = conditioner([settings.negative_prompt])
        return (*c, *uc)

    def _regional(
        self,
        settings: UpscaleSettings,
        output_hw: tuple[int, int],
        cond: Conditioning,
        host: Host,
        timings: dict[str, float],
        notes: list[str],
    ) -> Conditioning | list[Conditioning]:
        """One conditioning per sampler tile from ``settings.tile_prompts``; tiles without a prompt of their
        own keep ``cond`` itself (the global caption's)."""
        tile = None if settings.tile_size is None else (settings.tile_size, settings.tile_stride)
        grid = grid_for_output(output_hw, tile)
        assigned = assign_captions(settings.tile_prompts, grid)
        for note in assigned.notes:
            log.info("tile prompts: %s", note)
        notes.extend(assigned.notes)
        if not assigned.regional:
            return cond
        texts = tile_texts(assigned.captions, settings.caption, settings.positive_prompt)
        conditioner = self.model.conditioner

        def encode(text: str) -> Conditioning:
            crossattn, vector = conditioner([text])
            return Conditioning(crossattn.to(self.device), vector.to(self.device), cond.control)

        with self._stage("text", host, timings, streamed=(conditioner,)):
            conditioner.compute_device, conditioner.compute_dtype = self.device, self.text_dtype
            per_tile = per_tile_conditionings(texts, settings.positive_text, cond, encode)
        return per_tile[0] if grid.tile is None else per_tile

    def tile_grid(self, image_size: tuple[int, int], settings: UpscaleSettings | None = None) -> TileGrid:
        """The sampler tiles of an input of ``image_size`` (width, height) pixels, in output pixels, as the
        memory plan would choose them now (``auto`` plans with the device's free memory at this moment)."""
        settings = settings or UpscaleSettings()
        w, h = image_size
        output_hw = target_size(h, w, settings.scale, settings.min_size, settings.alignment)
        return grid_for_output(output_hw, self.plan_memory(output_hw, settings).tile)

    def plan_memory(self, output_hw: tuple[int, int], settings: UpscaleSettings) -> MemoryPlan:
        """How the next run at ``output_hw`` pixels will use the device (the policy resolved)."""
        workload = Workload.of(self.model, output_hw, settings, self.dtype, self.vae_dtype)
        return plan_memory(workload, self.memory, self.device)

    def _residency_for(self, plan: MemoryPlan) -> Residency:
        return Residency(
            self.device,
            plan.policy,
            resident_bytes=plan.resident_bytes,
            chunk_bytes=self.memory.chunk_bytes,
            prefetch=self.memory.prefetch,
            pin_memory=self.memory.pin_memory,
            transfer=self._transfer,
            observer=self._observer,
        )

    def upscale(
        self,
        image: Image.Image,
        settings: UpscaleSettings | None = None,
        host: Host | None = None,
        *,
        resume: ResumeOptions | None = None,
    ) -> UpscaleResult:
        """Restore and upscale ``image``. Raises CancelledError when the host asks to stop.

        With ``resume`` the sampler's state is saved to ``resume.folder`` as it runs, and a run of the same
        job (input, settings, weights, device policy) continues from the newest state (resume.py).
        Also runs under a fake-tensor mode (memory benchmarks): the image it returns is then blank.
        """
        settings = settings or UpscaleSettings()
        if settings.progressive:  # a chain of full runs; a stopped chain starts again (no sampler states)
            from .progressive import upscale_progressive

            return upscale_progressive(self, image, settings, host)
        resume_run = None if resume is None else ResumeRun(resume, image, settings.seed, self)
        settings = settings.replace(seed=resolve_seed(settings.seed))
        host = host or NullHost()
        timings: dict[str, float] = {}
        host.acquire_device()
        failed = True
        try:
            with torch.inference_mode():
                result = self._upscale(image, settings, host, timings, resume_run)
            failed = False
            return result
        except Exception as exc:
            # The traceback holds the failed frames' activations: let them go before the host's restore.
            if not is_out_of_memory(exc):
                drop_frames(exc)
                raise
            drop_frames(exc, keep_traceback=False)
            raise DeviceMemoryError(
                f"the device ran out of memory ({exc}). Use the memory policy 'auto' or 'blocks', "
                "fp8 weight storage, smaller tiles, or close other programs using the GPU"
            ) from exc
        finally:
            if self._residency is not None:
                self._residency.release()
                self._residency = None
            if failed:
                empty_device_cache(self.device)
            host.release_device()
            release_free_heap()

    def _upscale(
        self, image: Image.Image, settings: UpscaleSettings, host: Host, timings, resume: ResumeRun | None
    ) -> UpscaleResult:
        start = time.perf_counter()
        lq, _ = prepare_input(image, settings, host, self.device, self.vae_dtype)
        timings["preprocess"] = time.perf_counter() - start
        plan = self.plan_memory(tuple(lq.shape[-2:]), settings)
        for note in plan.notes:
            log.info("memory plan: %s", note)
        self._vae_storage = self.device if plan.vae_storage == "device" else None
        settings = plan.apply(settings)
        self._residency = self._residency_for(plan)
        key = self._stage1_key(image, settings)
        cached = self._stage1_cache is not None and self._stage1_cache[0] == key
        notes: list[str] = []
        stage1 = self._stage1(lq, key, settings, host, timings, notes)
        crossattn, vector, un_crossattn, un_vector = self._conditioning(settings, host, timings)
        saved = None
        if resume is not None:
            saved = resume.open(settings, plan, tuple(stage1.control.shape))
            settings = resume.settings(settings)
            notes.extend(resume.notes())

        generator = torch.Generator("cpu").manual_seed(settings.seed)
        noise = generator_noise(generator)
        anchor = sample_anchor(stage1, noise, self.scale_factor).to(self.device, torch.float32)
        control = stage1.control.to(self.device, torch.float32)
        cond = Conditioning(crossattn.to(self.device), vector.to(self.device), control)
        if settings.tile_prompts:
            cond = self._regional(settings, tuple(lq.shape[-2:]), cond, host, timings, notes)
        guided = GuidedConditioning(
            cond,
            Conditioning(un_crossattn.to(self.device), un_vector.to(self.device), control),
            anchor,
        )
        initial = noise(control)
        if saved is not None:
            generator.set_state(saved.rng)  # where the saved run's generator was after its last step
        denoiser = _CountingDenoiser(Denoiser(self.model.unet, self.model.control_model, self.dtype))

        def on_step(info) -> None:
            host.progress("sampling", info.step + 1, info.total)
            stop = host.should_stop()
            if resume is not None:
                resume.after_step(info, generator, stop)
            if stop:
                raise CancelledError(f"stopped after sampler step {info.step + 1} of {info.total}")

        sampling_modules = (self.model.control_model, self.model.unet)  # execution order
        with self._stage("sampling", host, timings, total=settings.steps, streamed=sampling_modules):
            latent = restore_latent(
                denoiser,
                settings.sampler,
                initial,
                guided,
                sampler_settings(settings, plan.batch_cfg, plan.tile_batch, plan.lockstep),
                settings.steps,
                noise,
                on_step,
                None if saved is None else saved.start(),
            )
        del guided, anchor, control, initial
        check_sampled(latent, self.dtype)
        vae = self.model.first_stage_model
        with self._stage("decode", host, timings, vae.decoder, vae.post_quant_conv):
            decode = partial(self._decode, settings, latent)
            decoded = run_vae_checked(decode, self.vae_dtype, "the VAE decode", notes)
            del decode
            del latent
            fixed = apply_color_fix(settings.color_fix, decoded, stage1.reference.to(decoded.device).float())
            del decoded
            out = fixed.cpu()
        if resume is not None:
            resume.completed()
        return UpscaleResult(
            _to_image(out),
            settings,
            image.size,
            (out.shape[-1], out.shape[-2]),
            timings,
            denoiser.calls,
            cached,
            plan,
            self.precision,
            dict(self._residency.bytes_to_device),
            notes,
            resumed_at=None if saved is None else (saved.step, saved.total),
        )


def _to_image(tensor: torch.Tensor) -> Image.Image:
    """The output image; blank under a fake-tensor mode (memory benchmarks), where there are no values."""
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(tensor):
        return Image.new("RGB", (tensor.shape[-1], tensor.shape[-2]))
    return to_pil(tensor)
