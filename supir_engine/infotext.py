"""Names under which upscale settings are written into PNG text chunks and webui infotext.

One table maps each UpscaleSettings attribute to its user-facing name; everything that writes or
reads parameters (CLI, web app, webui extension) goes through it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .pre_upscale import label as pre_upscaler_label
from .progressive import progressive_from_infotext, progressive_infotext
from .regions import TILE_PROMPTS_KEY, format_tile_prompts, read_tile_prompts
from .settings import UpscaleSettings

# (attribute, infotext key). Prompts are long and already in the webui's own infotext there.
INFOTEXT_FIELDS: tuple[tuple[str, str], ...] = (
    ("scale", "SUPIR scale"),
    ("steps", "SUPIR steps"),
    ("sampler", "SUPIR sampler"),
    ("cfg_scale", "SUPIR CFG scale"),
    ("cfg_scale_start", "SUPIR CFG start"),
    ("control_scale", "SUPIR control scale"),
    ("control_scale_start", "SUPIR control start"),
    ("restoration_scale", "SUPIR restoration scale"),
    ("s_churn", "SUPIR s_churn"),
    ("s_noise", "SUPIR s_noise"),
    ("eta", "SUPIR eta"),
    ("color_fix", "SUPIR color fix"),
    ("denoise_stage", "SUPIR stage 1"),
    ("seed", "SUPIR seed"),
    ("min_size", "SUPIR min size"),
    ("alignment", "SUPIR alignment"),
    ("tile_size", "SUPIR tile size"),
    ("tile_stride", "SUPIR tile stride"),
    ("caption", "SUPIR caption"),
    ("positive_prompt", "SUPIR positive prompt"),
    ("negative_prompt", "SUPIR negative prompt"),
    ("pre_upscaler", "SUPIR pre-upscaler"),
)
MODEL_KEY = "SUPIR model"
PRE_UPSCALER_KEY = "SUPIR pre-upscaler"  # a model file is written by its name only
PRECISION_KEY = "SUPIR precision"  # what ran (Precision.label); informative, not read back
PLAN_KEY = "SUPIR plan"  # written only when the memory plan changed the tiling (read back by nobody)
RESUMED_KEY = "SUPIR resumed"  # "step k/n" when a run continued a saved sampler state (informative)


def to_infotext(
    settings: UpscaleSettings,
    model_name: str | None = None,
    precision: str | None = None,
    plan_notes: Sequence[str] = (),
) -> dict[str, str]:
    """Settings as {infotext key: text}; ``None`` (a constant scale, untiled) is written as None.

    ``precision`` (``Precision.label``) is what the run computed in; ``plan_notes`` (``MemoryPlan.notes``) say
    how the memory plan changed the tiling, under PLAN_KEY.
    """
    params = {key: _format(getattr(settings, attr)) for attr, key in INFOTEXT_FIELDS}
    params.update(tile_prompts_infotext(settings))
    params[PRE_UPSCALER_KEY] = _format(pre_upscaler_label(settings.pre_upscaler))
    if model_name:
        params[MODEL_KEY] = model_name
    if precision:
        params[PRECISION_KEY] = _format(precision)
    params.update({k: _format(v) for k, v in progressive_infotext(settings).items()})
    params.update(plan_infotext(plan_notes))
    return params


def result_infotext(result: Any, model_name: str | None = None) -> dict[str, str]:
    """The infotext of an UpscaleResult: its settings, precision and memory-plan notes."""
    params = to_infotext(result.settings, model_name, precision_label(result), plan_notes(result))
    params.update(resume_infotext(result))
    return params


def resume_infotext(result: Any) -> dict[str, str]:
    """``{RESUMED_KEY: "step k/n"}`` for an UpscaleResult that resumed a saved state, else nothing."""
    resumed = getattr(result, "resumed_at", None)
    return {RESUMED_KEY: "step {}/{}".format(*resumed)} if resumed else {}


def precision_label(result: Any) -> str | None:
    """The precision an UpscaleResult ran in, as infotext shows it (None when it does not say)."""
    precision = getattr(result, "precision", None)
    return None if precision is None else precision.label


def plan_notes(result: Any) -> tuple[str, ...]:
    """How the memory plan of an UpscaleResult changed the tiling (empty when it did not)."""
    memory = getattr(result, "memory", None)
    return tuple(getattr(memory, "notes", ()) or ())


def plan_infotext(notes: Sequence[str]) -> dict[str, str]:
    """``{PLAN_KEY: notes}`` when there are notes, else nothing."""
    return {PLAN_KEY: _format("; ".join(notes))} if notes else {}


def from_infotext(params: Mapping[str, str], base: UpscaleSettings | None = None) -> UpscaleSettings:
    """Settings from infotext keys; keys absent fall back to ``base`` (default settings), except the
    progressive key, which is written only for progressive runs: without it, progressive is off."""
    base = base or UpscaleSettings()
    types = {f.name: f.type for f in dataclasses.fields(UpscaleSettings)}
    changes: dict[str, Any] = {}
    for attr, key in INFOTEXT_FIELDS:
        if key in params:
            changes[attr] = _parse(str(params[key]), types[attr])
    changes["progressive"] = progressive_from_infotext(params)
    if TILE_PROMPTS_KEY in params:
        changes["tile_prompts"] = read_tile_prompts(_parse(str(params[TILE_PROMPTS_KEY]), "str"))
    return base.replace(**changes)


def tile_prompts_infotext(settings: UpscaleSettings) -> dict[str, str]:
    """``{TILE_PROMPTS_KEY: JSON list}`` when the run had tile prompts, else nothing."""
    if not settings.tile_prompts:
        return {}
    return {TILE_PROMPTS_KEY: _format(format_tile_prompts(settings.tile_prompts))}


def _format(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value) if ("," in value or ":" in value or '"' in value) else value
    return str(value)


def _parse(text: str, annotation: str) -> Any:
    text = text.strip()
    if text == "None" and "None" in annotation:
        return None
    if text.startswith('"'):
        return json.loads(text)
    if "bool" in annotation:
        return text.lower() in ("true", "1", "yes")
    if "float" in annotation:
        return float(text)
    if "int" in annotation:
        return int(float(text))
    return text


def infotext_line(params: Mapping[str, str]) -> str:
    """``key: value, key: value`` as the webui writes generation parameters."""
    return ", ".join(f"{k}: {v}" for k, v in params.items())
