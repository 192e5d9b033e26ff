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

    Defaults are the original demo's "Quality" preset.
    """

    scale: float = 2.0
    min_size: int = 1024
    alignment: int = 32
    steps: int = 50
    sampler: str = "restore_edm"
    cfg_scale: float = 7.5
    cfg_scale_start: float | None = 4.0
    control_scale: float = 1.0
    control_scale_start: float | None = None
    restoration_scale: float = -1.0
    s_churn: float = 5.0
    s_noise: float = 1.003
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
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def positive_text(self) -> str:
        """Caption and positive prompt joined with no separator, exactly as the original does."""
        return "".join([self.caption, self.positive_prompt])

    def replace(self, **changes: Any) -> UpscaleSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The original demo's two parameter presets (gradio_demo.py, load_and_reset): they differ only in CFG.
_PRESET_COMMON: dict[str, Any] = {
    "control_scale": 1.0,
    "control_scale_start": None,
    "restoration_scale": -1.0,
    "s_churn": 5.0,
    "s_noise": 1.003,
    "steps": 50,
    "color_fix": "wavelet",
}
PRESETS: dict[str, dict[str, Any]] = {
    "quality": {**_PRESET_COMMON, "cfg_scale": 7.5, "cfg_scale_start": 4.0},
    "fidelity": {**_PRESET_COMMON, "cfg_scale": 4.0, "cfg_scale_start": 1.0},
}


# The UI controls a preset sets: each optional ramp start is shown as an on/off switch plus a value.
PRESET_CONTROLS = (
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
    """Values of PRESET_CONTROLS for preset ``name`` (KeyError if unknown).

    A ramp the preset leaves off keeps the given ``*_off`` value in its (disabled) start control.
    """
    values = PRESETS[name.lower()]
    cfg_start, control_start = values["cfg_scale_start"], values["control_scale_start"]
    return {
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
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose {' or '.join(PRESETS)}")
    return UpscaleSettings(**{**PRESETS[key], **overrides})
