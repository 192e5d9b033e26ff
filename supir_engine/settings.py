"""User-facing upscale settings, presets and the original's default prompts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# The original demo's default positive ("a_prompt") and negative ("n_prompt") prompts, as YAML
# folds them into single lines.
DEFAULT_POSITIVE_PROMPT = (
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo - "
    "realistic maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore "
    "detailing, hyper sharpness, perfect without deformations."
)
DEFAULT_NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D render, "
    "unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, jpeg "
    "artifacts, deformed, lowres, over-smooth"
)

SAMPLER_NAMES = ("restore_edm", "restore_dpmpp_2m")
COLOR_FIXES = ("wavelet", "adain", "none")


@dataclass(frozen=True)
class UpscaleSettings:
    """Everything that decides one upscale. ``None`` for a ``*_start`` value means a constant scale.

    Defaults are the "quality" preset (the SUPIR authors' quality-oriented settings of 2025).
    """

    scale: float = 2.0
    min_size: int = 1024
    alignment: int = 32
    steps: int = 50
    sampler: str = "restore_edm"
    cfg_scale: float = 6.0
    cfg_scale_start: float | None = 3.0
    control_scale: float = 1.0
    control_scale_start: float | None = None
    restoration_scale: float = -1.0
    s_churn: float = 5.0
    s_noise: float = 1.02
    eta: float = 1.0
    color_fix: str = "wavelet"
    denoise_stage: bool = True
    caption: str = ""
    positive_prompt: str = DEFAULT_POSITIVE_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    seed: int = -1
    tile_size: int | None = None  # latent pixels (x8 image pixels); None = untiled sampling
    tile_stride: int | None = None
    vae_encoder_tile: int | None = None  # image pixels; None = untiled
    vae_decoder_tile: int | None = None  # latent pixels; None = untiled
    progressive: bool = False  # x2 passes up to ``scale``, each a full run (progressive.py)
    tile_prompts: tuple[str, ...] = ()  # per-tile captions, see regions.py; () = the caption everywhere
    pre_upscaler: str = "lanczos"  # lanczos, bicubic, an upscaler model file, or a host's upscaler name
    pre_upscale_tile: int | None = None  # input pixels; None = from the free device memory

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.scale <= 16:
            problems.append(f"scale must be in (0, 16], got {self.scale}")
        if not 1 <= self.steps <= 1000:
            problems.append(f"steps must be between 1 and 1000, got {self.steps}")
        if self.sampler not in SAMPLER_NAMES:
            problems.append(f"sampler must be one of {', '.join(SAMPLER_NAMES)}, got {self.sampler!r}")
        if self.color_fix.lower() not in COLOR_FIXES:
            problems.append(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {self.color_fix!r}")
        if self.alignment < 8 or self.alignment % 8:
            problems.append(f"alignment must be a positive multiple of 8, got {self.alignment}")
        if self.sampler == "restore_dpmpp_2m" and self.eta < 0:
            problems.append("eta must be >= 0")
        problems += _tile_prompt_problems(self)
        if not self.pre_upscaler.strip():
            problems.append("pre_upscaler must be lanczos, bicubic or an upscaler model file, got ''")
        if self.pre_upscale_tile is not None and self.pre_upscale_tile < 32:
            problems.append(f"pre_upscale_tile must be at least 32 pixels, got {self.pre_upscale_tile}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def positive_text(self) -> str:
        """Caption and positive prompt joined with no separator, exactly as the original does."""
        return "".join([self.caption, self.positive_prompt])

    def replace(self, **changes: Any) -> UpscaleSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (tuples as lists), as files and saved states hold them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _tile_prompt_problems(settings: UpscaleSettings) -> list[str]:
    """Checks ``tile_prompts`` (a list is stored as a tuple); addressed lines must parse."""
    entries = settings.tile_prompts
    if isinstance(entries, str) or not all(isinstance(e, str) for e in entries):
        return [f"tile_prompts must be a list of strings (one per tile), got {entries!r}"]
    object.__setattr__(settings, "tile_prompts", tuple(entries))
    if not entries:
        return []
    from .regions import is_addressed, parse_addressed  # imports torch: only when there are tile prompts

    problems = []
    for entry in entries:
        if is_addressed(entry):
            try:
                parse_addressed(entry)
            except ValueError as exc:
                problems.append(str(exc))
    return problems


# Parameter presets. Sources (Fanghua-Yu/SUPIR):
# * "quality" / "fidelity": the authors' recommendation of 2025-05-12 (README, "Empirical Hyperparameters
#   Settings"; test.py's defaults became the fidelity values). Quality-oriented: s_cfg 6.0, CFG start 3.0,
#   s_noise 1.02 (the authors also suggest lowering the control strength s_stage2 to 0.93 for more freedom);
#   fidelity-oriented: s_cfg 4.0, CFG start 1.0, s_noise 1.01; linear CFG on in both.
# * "quality_classic" / "fidelity_classic": the first demo's values (gradio_demo.py, load_and_reset with
#   options/SUPIR_v0.yaml): s_cfg 7.5 / 4.0 ramping from 4.0 / 1.0, s_noise 1.003.
# * "lightning_quality" / "lightning_fidelity": options/SUPIR_v0_Juggernautv9_lightning.yaml, made for an
#   SDXL-Lightning base (e.g. Juggernaut RunDiffusionPhoto2 Lightning 4 steps): RestoreDPMPP2MSampler,
#   edm_steps 8, s_cfg = spt_linear_CFG = 2.0 (quality) / 1.5 (fidelity), restore_cfg 4.0, s_churn 0. The
#   original's DPM++ 2M sampler ignores restore_cfg and s_churn; they are kept as the YAML gives them.
_EDM_COMMON: dict[str, Any] = {
    "sampler": "restore_edm",
    "steps": 50,
    "control_scale": 1.0,
    "control_scale_start": None,
    "restoration_scale": -1.0,
    "s_churn": 5.0,
    "color_fix": "wavelet",
}
_LIGHTNING_COMMON: dict[str, Any] = {
    "sampler": "restore_dpmpp_2m",
    "steps": 8,
    "control_scale": 1.0,
    "control_scale_start": None,
    "restoration_scale": 4.0,
    "s_churn": 0.0,
    "s_noise": 1.003,
    "color_fix": "wavelet",
}
PRESETS: dict[str, dict[str, Any]] = {
    "quality": {**_EDM_COMMON, "cfg_scale": 6.0, "cfg_scale_start": 3.0, "s_noise": 1.02},
    "fidelity": {**_EDM_COMMON, "cfg_scale": 4.0, "cfg_scale_start": 1.0, "s_noise": 1.01},
    "quality_classic": {**_EDM_COMMON, "cfg_scale": 7.5, "cfg_scale_start": 4.0, "s_noise": 1.003},
    "fidelity_classic": {**_EDM_COMMON, "cfg_scale": 4.0, "cfg_scale_start": 1.0, "s_noise": 1.003},
    "lightning_quality": {**_LIGHTNING_COMMON, "cfg_scale": 2.0, "cfg_scale_start": 2.0},
    "lightning_fidelity": {**_LIGHTNING_COMMON, "cfg_scale": 1.5, "cfg_scale_start": 1.5},
}
# How the presets are shown in the UIs, in this order.
PRESET_LABELS: dict[str, str] = {
    "quality": "Quality",
    "fidelity": "Fidelity",
    "quality_classic": "Quality (classic)",
    "fidelity_classic": "Fidelity (classic)",
    "lightning_quality": "Lightning Quality",
    "lightning_fidelity": "Lightning Fidelity",
}
LIGHTNING_NOTE = (
    "Lightning presets are made for an SDXL-Lightning base (such as Juggernaut RunDiffusionPhoto2 "
    "Lightning): 8 DPM++ 2M steps at low CFG; with a normal SDXL base they give soft, unfinished results."
)


def preset_key(name: str) -> str:
    """The PRESETS key of ``name``, a key or a label ("Quality (classic)"); ValueError when unknown."""
    key = "_".join(name.lower().replace("(", " ").replace(")", " ").replace("-", " ").split())
    if key not in PRESETS:
        labels = ", ".join(PRESET_LABELS.values())
        raise ValueError(f"unknown preset {name!r}: choose one of {labels}")
    return key


# The UI controls a preset sets: each optional ramp start is shown as an on/off switch plus a value.
PRESET_CONTROLS = (
    "sampler",
    "steps",
    "cfg_scale",
    "linear_cfg",
    "cfg_scale_start",
    "control_scale",
    "linear_control",
    "control_scale_start",
    "restoration_scale",
    "s_churn",
    "s_noise",
    "color_fix",
)


def preset_controls(name: str, cfg_start_off: float, control_start_off: float) -> dict[str, Any]:
    """Values of PRESET_CONTROLS for preset ``name`` (a key or a label; ValueError if unknown).

    A ramp the preset leaves off keeps the given ``*_off`` value in its (disabled) start control.
    """
    values = PRESETS[preset_key(name)]
    cfg_start, control_start = values["cfg_scale_start"], values["control_scale_start"]
    return {
        "sampler": values["sampler"],
        "steps": values["steps"],
        "cfg_scale": values["cfg_scale"],
        "linear_cfg": cfg_start is not None,
        "cfg_scale_start": cfg_start_off if cfg_start is None else cfg_start,
        "control_scale": values["control_scale"],
        "linear_control": control_start is not None,
        "control_scale_start": control_start_off if control_start is None else control_start,
        "restoration_scale": values["restoration_scale"],
        "s_churn": values["s_churn"],
        "s_noise": values["s_noise"],
        "color_fix": values["color_fix"],
    }


def preset(name: str, **overrides: Any) -> UpscaleSettings:
    return UpscaleSettings(**{**PRESETS[preset_key(name)], **overrides})
