"""The extension's arguments: one validated dataclass, its positional order, and its infotext names.

The field order of :class:`SupirArgs` is the order of the accordion's components, hence of the
``alwayson_scripts["supir"]["args"]`` list in the webui API. Values arrive from gradio, from JSON or as
``None`` (the webui's Extras API passes ``None`` for every control of an extension): ``None`` means the
default, and everything else is coerced to the field's type or reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from supir_engine.errors import SupirError
from supir_engine.infotext import (
    INFOTEXT_FIELDS,
    MODEL_KEY,
    PLAN_KEY,
    PRECISION_KEY,
    RESUMED_KEY,
    plan_infotext,
    plan_notes,
    precision_label,
    resume_infotext,
)
from supir_engine.progressive import INFOTEXT_KEY as PROGRESSIVE_KEY
from supir_engine.progressive import progressive_from_infotext, progressive_infotext
from supir_engine.regions import (
    TILE_PROMPTS_KEY,
    format_tile_prompts,
    is_addressed,
    parse_addressed,
    read_tile_prompts,
)
from supir_engine.settings import (
    COLOR_FIXES,
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_POSITIVE_PROMPT,
    SAMPLER_NAMES,
    UpscaleSettings,
    preset_controls,
)
from supir_engine.upscaler_files import is_model_file

MODEL_NAMES = ("SUPIR-v0Q", "SUPIR-v0F")
PROMPT_SOURCES = ("Generation prompt", "Custom caption", "None")
PROMPT_SOURCE_KEY = "SUPIR prompt source"
SKIP_IMG2IMG_KEY = "SUPIR skip img2img"
SEED_FROM_IMAGE_KEY = "SUPIR seed from image"


class ArgumentError(SupirError):
    """Arguments that cannot be used; the message lists every problem."""


@dataclass(frozen=True)
class Limit:
    """The range of a numeric argument: the accordion's slider and the API's check both use it."""

    minimum: float
    maximum: float
    step: float


# One table for the UI and the API: a value the sliders cannot produce is refused from the API too.
LIMITS: dict[str, Limit] = {
    "scale": Limit(1.0, 8.0, 0.25),
    "steps": Limit(1, 200, 1),
    "cfg_scale": Limit(1.0, 15.0, 0.1),
    "cfg_scale_start": Limit(0.0, 15.0, 0.1),
    "control_scale": Limit(0.0, 2.0, 0.01),
    "control_scale_start": Limit(0.0, 2.0, 0.01),
    "restoration_scale": Limit(-1.0, 20.0, 0.5),
    "s_churn": Limit(0.0, 40.0, 1.0),
    "s_noise": Limit(1.0, 1.1, 0.001),
    "seed": Limit(-1, 2**32 - 1, 1),
}


@dataclass(frozen=True)
class SupirArgs:
    enabled: bool = False
    model: str = "SUPIR-v0Q"
    scale: float = 2.0
    skip_img2img: bool = False
    prompt_source: str = "Generation prompt"
    caption: str = ""
    positive_prompt: str = DEFAULT_POSITIVE_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    steps: int = 50
    sampler: str = "restore_edm"
    cfg_scale: float = 6.0
    linear_cfg: bool = True
    cfg_scale_start: float = 3.0
    control_scale: float = 1.0
    linear_control: bool = False
    control_scale_start: float = 0.0
    restoration_scale: float = -1.0
    s_churn: float = 5.0
    s_noise: float = 1.02
    seed: int = -1
    seed_from_image: bool = False
    color_fix: str = "wavelet"
    denoise_stage: bool = True
    progressive: bool = False  # appended: the API's positional arguments keep their places
    tile_prompts: str = ""  # one caption per sampler tile, a line each (see supir_engine.regions)
    pre_upscaler: str = "lanczos"

    def __post_init__(self) -> None:
        problems = tile_prompt_problems(self.tile_prompts)
        if model_variant(self.model) is None:
            problems.append(f"model must be one of {', '.join(MODEL_NAMES)}, got {self.model!r}")
        if self.prompt_source not in PROMPT_SOURCES:
            problems.append(
                f"prompt_source must be one of {', '.join(PROMPT_SOURCES)}, got {self.prompt_source!r}"
            )
        if self.sampler not in SAMPLER_NAMES:
            problems.append(f"sampler must be one of {', '.join(SAMPLER_NAMES)}, got {self.sampler!r}")
        if self.color_fix.lower() not in COLOR_FIXES:
            problems.append(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {self.color_fix!r}")
        if not self.pre_upscaler.strip() or is_model_file(self.pre_upscaler):
            problems.append(
                "pre_upscaler must be lanczos, bicubic or the name of one of the webui's upscalers "
                f"(GET /sdapi/v1/upscalers), got {self.pre_upscaler!r}"
            )
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if not limit.minimum <= value <= limit.maximum:
                allowed = f"between {limit.minimum:g} and {limit.maximum:g}"
                problems.append(f"{name} must be {allowed}, got {value!r}")
        if problems:
            raise ArgumentError("SUPIR arguments: " + "; ".join(problems))

    @property
    def variant(self) -> str:
        """ "Q" or "F"."""
        return model_variant(self.model) or "Q"

    def replace(self, **changes: Any) -> SupirArgs:
        return dataclasses.replace(self, **changes)


ARG_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SupirArgs))
_TYPES = {f.name: f.type for f in dataclasses.fields(SupirArgs)}
_KINDS = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "text"}


def model_variant(name: str) -> str | None:
    """ "Q" / "F" from "SUPIR-v0Q", "v0Q", "Q" (any case); None for anything else."""
    text = str(name).strip().upper().removeprefix("SUPIR-").removeprefix("V0")
    return text if text in ("Q", "F") else None


def model_name(variant: str) -> str:
    return f"SUPIR-v0{variant.upper()}"


def _coerce(name: str, value: Any) -> Any:
    kind = _TYPES[name]
    if kind == "bool":
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes", "on")
        return bool(value)
    if kind in ("int", "float"):
        if isinstance(value, bool):
            raise TypeError("a boolean is not a number")
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError("not a finite number")
        if kind == "int":
            if number != int(number):
                raise ValueError("not a whole number")
            return int(number)
        return number
    if isinstance(value, list | tuple):  # the API's list of tile prompts
        return "\n".join(str(v) for v in value)
    return str(value)


def asks_for_supir(values: Sequence[Any]) -> bool:
    """Whether the positional ``enabled`` argument turns SUPIR on, read alone (the others may be invalid)."""
    return bool(values) and _coerce(ARG_NAMES[0], values[0])


def from_values(values: Sequence[Any], defaults: SupirArgs | None = None) -> SupirArgs:
    """Arguments from positional values in ``ARG_NAMES`` order; missing or ``None`` ones keep the defaults."""
    if len(values) > len(ARG_NAMES):
        raise ArgumentError(f"SUPIR takes at most {len(ARG_NAMES)} arguments, got {len(values)}")
    return from_mapping(dict(zip(ARG_NAMES, values)), defaults)


def from_mapping(values: Mapping[str, Any], defaults: SupirArgs | None = None) -> SupirArgs:
    """Arguments from ``{name: value}``; unknown names are an error, ``None`` keeps the default."""
    unknown = sorted(set(values) - set(ARG_NAMES))
    if unknown:
        raise ArgumentError(f"unknown SUPIR argument(s): {', '.join(unknown)}; known: {', '.join(ARG_NAMES)}")
    changes, problems = {}, []
    for name, value in values.items():
        if value is None:
            continue
        try:
            changes[name] = _coerce(name, value)
        except (TypeError, ValueError):
            problems.append(f"{name} must be {_KINDS[_TYPES[name]]}, got {value!r}")
    if problems:
        raise ArgumentError("SUPIR arguments: " + "; ".join(problems))
    return (defaults or SupirArgs()).replace(**changes)


def with_preset(args: SupirArgs, preset_name: str) -> SupirArgs:
    """The preset's sampler values applied to ``args`` (a label such as "Quality (classic)", or a key)."""
    return args.replace(**preset_controls(preset_name, args.cfg_scale_start, args.control_scale_start))


def to_settings(args: SupirArgs, base: UpscaleSettings, caption: str, seed: int) -> UpscaleSettings:
    """Engine settings: ``base`` carries what comes from Settings (minimum size, tiles), ``args`` the rest."""
    return base.replace(
        scale=args.scale,
        steps=args.steps,
        sampler=args.sampler,
        cfg_scale=args.cfg_scale,
        cfg_scale_start=args.cfg_scale_start if args.linear_cfg else None,
        control_scale=args.control_scale,
        control_scale_start=args.control_scale_start if args.linear_control else None,
        restoration_scale=args.restoration_scale,
        s_churn=args.s_churn,
        s_noise=args.s_noise,
        color_fix=args.color_fix.lower(),
        denoise_stage=args.denoise_stage,
        progressive=args.progressive,
        caption=caption,
        positive_prompt=args.positive_prompt,
        negative_prompt=args.negative_prompt,
        seed=seed,
        tile_prompts=read_tile_prompts(args.tile_prompts),
        pre_upscaler=args.pre_upscaler,
    )


# ------------------------------------------------------------------------------------------ infotext

# (SupirArgs attribute, infotext key) for the fields that have a component in the accordion; keys are the
# engine's (supir_engine.infotext) wherever the engine has the value, so files written by the CLI and by
# the webui read back the same way.
_ENGINE_KEYS = dict(INFOTEXT_FIELDS)
INFOTEXT_KEYS: tuple[tuple[str, str], ...] = (
    ("model", MODEL_KEY),
    ("scale", _ENGINE_KEYS["scale"]),
    ("skip_img2img", SKIP_IMG2IMG_KEY),
    ("prompt_source", PROMPT_SOURCE_KEY),
    ("caption", _ENGINE_KEYS["caption"]),
    ("positive_prompt", _ENGINE_KEYS["positive_prompt"]),
    ("negative_prompt", _ENGINE_KEYS["negative_prompt"]),
    ("steps", _ENGINE_KEYS["steps"]),
    ("sampler", _ENGINE_KEYS["sampler"]),
    ("cfg_scale", _ENGINE_KEYS["cfg_scale"]),
    ("cfg_scale_start", _ENGINE_KEYS["cfg_scale_start"]),
    ("control_scale", _ENGINE_KEYS["control_scale"]),
    ("control_scale_start", _ENGINE_KEYS["control_scale_start"]),
    ("restoration_scale", _ENGINE_KEYS["restoration_scale"]),
    ("s_churn", _ENGINE_KEYS["s_churn"]),
    ("s_noise", _ENGINE_KEYS["s_noise"]),
    ("seed", _ENGINE_KEYS["seed"]),
    ("seed_from_image", SEED_FROM_IMAGE_KEY),
    ("color_fix", _ENGINE_KEYS["color_fix"]),
    ("denoise_stage", _ENGINE_KEYS["denoise_stage"]),
    ("pre_upscaler", _ENGINE_KEYS["pre_upscaler"]),
)
BASE_KEY = "SUPIR base"  # the SDXL base a run used (written by result_params; not pasted back)
BASE_LORA_KEY = "SUPIR base LoRA"  # LoRAs merged into that base, and whether they were left out
# Every key infotext_params may write, in the order the infotext shows them.
ALL_INFOTEXT_KEYS: tuple[str, ...] = (
    MODEL_KEY,
    *(key for _, key in INFOTEXT_FIELDS),
    PROMPT_SOURCE_KEY,
    SKIP_IMG2IMG_KEY,
    SEED_FROM_IMAGE_KEY,
    PRECISION_KEY,
    PLAN_KEY,
    BASE_KEY,
    BASE_LORA_KEY,
    RESUMED_KEY,
    PROGRESSIVE_KEY,
    TILE_PROMPTS_KEY,
)
# Fields read back from other keys (no key of their own): True when the ramp's start value is written.
DERIVED_FIELDS: dict[str, Callable[[Mapping[str, str]], Any]] = {
    "enabled": lambda params: MODEL_KEY in params,
    "linear_cfg": lambda params: _has_value(params, _ENGINE_KEYS["cfg_scale_start"]),
    "linear_control": lambda params: _has_value(params, _ENGINE_KEYS["control_scale_start"]),
    "progressive": progressive_from_infotext,
    "tile_prompts": lambda params: pasted_tile_prompts(params.get(TILE_PROMPTS_KEY)),
}


def _has_value(params: Mapping[str, str], key: str) -> bool:
    return key in params and str(params[key]) != "None"


def infotext_params(
    args: SupirArgs,
    settings: UpscaleSettings,
    default_prompts: tuple[str, str] = ("", ""),
    precision: str | None = None,
    plan_notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Infotext ``{key: raw value}`` for one upscale (the webui quotes values itself).

    Every engine setting is written, as used (the seed is the one drawn). The caption is written only when
    it is a custom one (a generation prompt is already the infotext's prompt), and the positive and
    negative prompts only when they differ from the Settings defaults, so infotexts stay readable.
    """
    params: dict[str, Any] = {MODEL_KEY: model_name(args.variant)}
    for attr, key in INFOTEXT_FIELDS:
        value = getattr(settings, attr)
        if value is not None:
            params[key] = value
    params[PROMPT_SOURCE_KEY] = args.prompt_source
    if args.skip_img2img:
        params[SKIP_IMG2IMG_KEY] = True
    if args.seed_from_image:
        params[SEED_FROM_IMAGE_KEY] = True
    params.pop(_ENGINE_KEYS["caption"], None)
    if args.prompt_source == "Custom caption" and args.caption:
        params[_ENGINE_KEYS["caption"]] = args.caption  # as typed (the run adds a separator)
    for attr, default in zip(("positive_prompt", "negative_prompt"), default_prompts):
        if getattr(settings, attr) == default:
            params.pop(_ENGINE_KEYS[attr], None)
    if precision:
        params[PRECISION_KEY] = precision
    params.update(plan_infotext(plan_notes))
    params.update(progressive_infotext(settings))
    if settings.tile_prompts:
        params[TILE_PROMPTS_KEY] = format_tile_prompts(settings.tile_prompts)
    return params


def result_params(
    args: SupirArgs, result: Any, default_prompts: tuple[str, str] = ("", "")
) -> dict[str, Any]:
    """:func:`infotext_params` of an UpscaleResult, with the precision it ran in and its memory-plan notes."""
    notes = plan_notes(result)
    params = infotext_params(args, result.settings, default_prompts, precision_label(result), notes)
    if getattr(result, "base", ""):
        params[BASE_KEY] = result.base
    if getattr(result, "base_loras", ""):
        params[BASE_LORA_KEY] = result.base_loras
    params.update(resume_infotext(result))
    return params


def paste_value(name: str, params: Mapping[str, str]) -> Any:
    """The value for the ``name`` component from pasted infotext parameters; None leaves it unchanged."""
    if name in DERIVED_FIELDS:
        return DERIVED_FIELDS[name](params)
    key = dict(INFOTEXT_KEYS)[name]
    if not _has_value(params, key):
        return None
    return _coerce(name, params[key])


def tile_prompt_problems(text: str) -> list[str]:
    """What is wrong with the tile prompts' text (a JSON list or lines); empty when they can be used."""
    try:
        entries = read_tile_prompts(str(text))
        for entry in entries:
            if is_addressed(entry):
                parse_addressed(entry)
    except ValueError as exc:
        return [f"tile_prompts: {exc}"]
    return []


def pasted_tile_prompts(value: Any) -> str | None:
    """The tile prompts textbox's text from a pasted infotext value (None: not in the infotext)."""
    if value is None or tile_prompt_problems(str(value)):
        return None
    return "\n".join(read_tile_prompts(str(value)))
