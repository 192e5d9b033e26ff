"""The SUPIR accordion (txt2img, img2img, Extras), built with whatever gradio the webui runs.

Only arguments that gradio 3.41 (the webui's pin) and current gradio both accept are used. Labels are
static strings, so the webui's localization files and ``javascript/supir.js`` (tooltips) can key on them.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr
from modules.ui_components import ToolButton

from supir_engine.settings import COLOR_FIXES, PRESET_CONTROLS, SAMPLER_NAMES

from . import pre_upscale
from .args import (
    ARG_NAMES,
    DERIVED_FIELDS,
    INFOTEXT_KEYS,
    LIMITS,
    MODEL_NAMES,
    PROMPT_SOURCES,
    SupirArgs,
    with_preset,
)
from .options import PRESETS, default_args, opt
from .runner import model_status
from .tile_ui import tile_prompt_components

REFRESH_SYMBOL = "\U0001f504"  # the webui's refresh button

# The components a preset sets, in the order preset_values returns them.
PRESET_FIELDS = PRESET_CONTROLS


def preset_values(preset: str) -> list[Any]:
    args = with_preset(SupirArgs(), preset if preset in PRESETS else "Quality")
    return [getattr(args, name) for name in PRESET_FIELDS]


def status_html() -> str:
    """Which model files were found, and for missing ones where they go and where to get them."""
    status = model_status()
    lines = []
    for model in status["models"]:
        lines.append(f"<li>{html.escape(model['name'])}: <code>{html.escape(model['file'])}</code></li>")
    if status["missing"]:
        # One model is enough: a second one missing is a hint, no model at all is the problem to fix.
        kind, label = ("supir-optional", "Not found") if status["models"] else ("supir-missing", "Missing")
        lines.append(
            f"<li class='{kind}'>{label}: {html.escape(', '.join(status['missing']))}. "
            f"{html.escape(status['how_to_get'])}</li>"
        )
    if status["sdxl_problem"]:
        lines.append(f"<li class='supir-missing'>{html.escape(status['sdxl_problem'])}</li>")
    else:
        lines.append(f"<li>SDXL base: {html.escape(status['sdxl_base_in_use'])}</li>")
    return f"<ul class='supir-status'>{''.join(lines)}</ul>"


def _slider(name: str, value: float, label: str, elem_id: str) -> Any:
    limit = LIMITS[name]
    return gr.Slider(limit.minimum, limit.maximum, value=value, step=limit.step, label=label, elem_id=elem_id)


def _components(defaults: SupirArgs, elem_id, is_img2img: bool, with_skip: bool) -> dict[str, Any]:
    """Every argument's component inside the current block; ``elem_id(name)`` gives stable element ids.

    On top, what people change every time (model, scale, preset, caption); the sampler's knobs and the
    prompts wait in a closed "Advanced" group.
    """
    c: dict[str, Any] = {}
    with gr.Row(elem_classes=["supir-status-row"]):
        # A callable value is computed again on every page load (the checkpoint may have loaded since).
        status = gr.HTML(status_html, elem_id=elem_id("status"))
        refresh = ToolButton(value=REFRESH_SYMBOL, elem_id=elem_id("refresh_status"))
    refresh.click(status_html, inputs=[], outputs=[status])
    c["refresh_status"] = refresh  # not an argument: taken out again by the callers
    with gr.Row():
        c["model"] = gr.Radio(
            list(MODEL_NAMES), value=defaults.model, label="SUPIR model", elem_id=elem_id("model")
        )
        c["scale"] = _slider("scale", defaults.scale, "SUPIR upscale by", elem_id("scale"))
        preset = gr.Dropdown(
            list(PRESETS),
            value=str(opt("supir_default_preset")),
            label="SUPIR preset",
            elem_id=elem_id("preset"),
        )
    c["progressive"] = gr.Checkbox(
        value=defaults.progressive,
        label="Progressive (x2 passes: 3x = 2x then 1.5x)",
        elem_id=elem_id("progressive"),
    )
    if with_skip:  # present in txt2img too (hidden), so both tabs take the same argument list
        c["skip_img2img"] = gr.Checkbox(
            value=defaults.skip_img2img,
            label="Skip img2img (upscale the input image directly)",
            visible=is_img2img,
            elem_id=elem_id("skip_img2img"),
        )
    with gr.Row():
        c["prompt_source"] = gr.Radio(
            list(PROMPT_SOURCES),
            value=defaults.prompt_source,
            label="SUPIR caption source",
            elem_id=elem_id("prompt_source"),
        )
        c["caption"] = gr.Textbox(
            value=defaults.caption, label="Custom caption", lines=1, elem_id=elem_id("caption")
        )
    with gr.Accordion("Advanced", open=False, elem_id=elem_id("advanced")):
        _advanced(c, defaults, elem_id)
        tile_prompt_components(c, defaults, elem_id)
    preset.change(preset_values, inputs=[preset], outputs=[c[name] for name in PRESET_FIELDS])
    return c


def _advanced(c: dict[str, Any], defaults: SupirArgs, elem_id) -> None:
    c["positive_prompt"] = gr.Textbox(
        value=defaults.positive_prompt,
        label="SUPIR positive prompt",
        lines=2,
        elem_id=elem_id("positive_prompt"),
    )
    c["negative_prompt"] = gr.Textbox(
        value=defaults.negative_prompt,
        label="SUPIR negative prompt",
        lines=2,
        elem_id=elem_id("negative_prompt"),
    )
    with gr.Row():
        c["steps"] = _slider("steps", defaults.steps, "SUPIR steps", elem_id("steps"))
        c["sampler"] = gr.Dropdown(
            list(SAMPLER_NAMES), value=defaults.sampler, label="SUPIR sampler", elem_id=elem_id("sampler")
        )
    with gr.Row():
        c["cfg_scale"] = _slider("cfg_scale", defaults.cfg_scale, "SUPIR CFG scale", elem_id("cfg_scale"))
        c["linear_cfg"] = gr.Checkbox(
            value=defaults.linear_cfg, label="Linear CFG", elem_id=elem_id("linear_cfg")
        )
        c["cfg_scale_start"] = _slider(
            "cfg_scale_start", defaults.cfg_scale_start, "CFG start", elem_id("cfg_start")
        )
    with gr.Row():
        c["control_scale"] = _slider(
            "control_scale", defaults.control_scale, "Control scale", elem_id("control")
        )
        c["linear_control"] = gr.Checkbox(
            value=defaults.linear_control, label="Linear control scale", elem_id=elem_id("linear_control")
        )
        c["control_scale_start"] = _slider(
            "control_scale_start", defaults.control_scale_start, "Control start", elem_id("ctl_start")
        )
    with gr.Row():
        c["restoration_scale"] = _slider(
            "restoration_scale", defaults.restoration_scale, "Restoration scale", elem_id("rs")
        )
        c["s_churn"] = _slider("s_churn", defaults.s_churn, "S-churn", elem_id("churn"))
        c["s_noise"] = _slider("s_noise", defaults.s_noise, "S-noise", elem_id("s_noise"))
    with gr.Row():
        c["seed"] = gr.Number(
            value=defaults.seed, precision=0, label="SUPIR seed (-1: random)", elem_id=elem_id("seed")
        )
        c["seed_from_image"] = gr.Checkbox(
            value=defaults.seed_from_image, label="Same seed as the image", elem_id=elem_id("seed_from_image")
        )
        c["color_fix"] = gr.Radio(
            list(COLOR_FIXES), value=defaults.color_fix, label="Color fix", elem_id=elem_id("color_fix")
        )
        c["denoise_stage"] = gr.Checkbox(
            value=defaults.denoise_stage, label="Stage 1 (denoise encoder)", elem_id=elem_id("denoise_stage")
        )
    c["pre_upscaler"] = gr.Dropdown(
        pre_upscale.choices(),
        value=defaults.pre_upscaler,
        label="Pre-upscaler",
        elem_id=elem_id("pre_upscaler"),
    )


def script_ui(script, is_img2img: bool) -> list[Any]:
    """The txt2img / img2img accordion; returns the components in ``ARG_NAMES`` order (the API's order)."""
    from modules.ui_components import InputAccordion

    defaults = default_args()
    with InputAccordion(False, label="SUPIR", elem_id=script.elem_id("enable")) as enabled:
        components = _components(defaults, script.elem_id, is_img2img, with_skip=True)
    script.refresh_status = components.pop("refresh_status")
    components["enabled"] = enabled
    script.infotext_fields = [(components[name], key) for name, key in INFOTEXT_KEYS] + [
        (components[name], read) for name, read in DERIVED_FIELDS.items()
    ]
    script.paste_field_names = [key for _, key in INFOTEXT_KEYS]
    return [components[name] for name in ARG_NAMES]


def extras_ui() -> dict[str, Any]:
    """The Extras tab accordion: ``{argument name: component}`` (no Skip img2img there)."""
    from modules.ui_components import InputAccordion

    defaults = default_args()
    with InputAccordion(False, label="SUPIR", elem_id="extras_supir") as enabled:
        components = _components(defaults, lambda name: f"extras_supir_{name}", False, with_skip=False)
    components.pop("refresh_status")
    return {"enabled": enabled, **{name: components[name] for name in ARG_NAMES if name in components}}
