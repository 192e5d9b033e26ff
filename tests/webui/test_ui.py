"""The UIs and the Settings section, built with the installed gradio (CI runs this with 3.41.2 too)."""

from __future__ import annotations

import gradio as gr
from modules import scripts, shared

from sd_webui_supir.args import ARG_NAMES, INFOTEXT_KEYS, SupirArgs
from sd_webui_supir.options import DEFAULTS, SECTION


def test_script_ui_components_match_the_argument_order(webui):
    for runner, tab in ((scripts.scripts_txt2img, "txt2img"), (scripts.scripts_img2img, "img2img")):
        script = runner.scripts[0]
        assert len(script.controls) == len(ARG_NAMES)
        assert script.controls[ARG_NAMES.index("steps")].elem_id == f"script_{tab}_supir_steps"
        assert script.controls[0].value is False  # the accordion starts closed: SUPIR off
        skip = script.controls[ARG_NAMES.index("skip_img2img")]
        assert skip.visible is (tab == "img2img")
        assert {key for _, key in script.infotext_fields} >= {key for _, key in INFOTEXT_KEYS}
        assert script.paste_field_names == [key for _, key in INFOTEXT_KEYS]


def test_initial_values_come_from_settings(webui):
    script = scripts.scripts_txt2img.scripts[0]
    values = dict(zip(ARG_NAMES, (c.value for c in script.controls)))
    assert values["steps"] == 50 and values["cfg_scale"] == 6.0  # the Quality preset (authors, 2025)
    assert values["positive_prompt"] == DEFAULTS["supir_positive_prompt"]


def test_preset_change_sets_the_sampler_values(webui):
    from sd_webui_supir.ui import PRESET_FIELDS, preset_values

    fidelity = dict(zip(PRESET_FIELDS, preset_values("Fidelity")))
    assert (
        fidelity["cfg_scale"] == 4.0 and fidelity["cfg_scale_start"] == 1.0 and fidelity["linear_cfg"] is True
    )
    assert fidelity["s_noise"] == 1.01
    lightning = dict(zip(PRESET_FIELDS, preset_values("Lightning Quality")))
    assert lightning["sampler"] == "restore_dpmpp_2m" and lightning["steps"] == 8
    assert lightning["cfg_scale"] == 2.0 and lightning["s_churn"] == 0.0
    classic = dict(zip(PRESET_FIELDS, preset_values("Quality (classic)")))
    assert (classic["cfg_scale"], classic["cfg_scale_start"], classic["s_noise"]) == (7.5, 4.0, 1.003)


def test_extras_ui_returns_named_controls(webui):
    script = next(s for s in scripts.scripts_postproc.scripts if s.name == "SUPIR")
    assert list(script.controls) == [n for n in ARG_NAMES if n != "skip_img2img"]
    assert script.controls["model"].elem_id == "extras_supir_model"


def test_settings_section_builds_as_the_webui_builds_it(webui):
    """modules/ui_settings.create_setting_component: component(label=, value=, elem_id=, **args)."""
    keys = [k for k, info in shared.opts.data_labels.items() if info.section == SECTION]
    assert keys == list(DEFAULTS)
    # in the sidebar's Postprocessing category, not "Uncategorized"
    assert {shared.opts.data_labels[k].category_id for k in keys} == {"postprocessing"}
    with gr.Blocks():
        for key in keys:
            info = shared.opts.data_labels[key]
            args = info.component_args() if callable(info.component_args) else info.component_args
            kind = type(info.default)
            component = info.component or {str: gr.Textbox, int: gr.Number, bool: gr.Checkbox}[kind]
            built = component(
                label=info.label, value=getattr(shared.opts, key), elem_id=f"setting_{key}", **(args or {})
            )
            assert built.label == info.label


def test_status_html_names_missing_files_and_where_to_get_them(webui, tmp_path):
    from sd_webui_supir.ui import status_html

    assert "SUPIR-v0Q" in status_html() and "Missing" not in status_html()
    shared.opts.supir_models_path = str(tmp_path)
    try:
        html = status_html()
    finally:
        shared.opts.supir_models_path = ""
    assert "Missing: SUPIR-v0Q, SUPIR-v0F" in html and "Fanghua-Yu/SUPIR" in html and str(tmp_path) in html
    assert "supir-missing" in html


def test_status_refresh_sees_a_file_added_after_start(webui, tmp_path):
    from sd_webui_supir.ui import REFRESH_SYMBOL, status_html

    script = scripts.scripts_txt2img.scripts[0]
    assert script.refresh_status.value == REFRESH_SYMBOL  # the button next to the status line
    shared.opts.supir_models_path = str(tmp_path)
    try:
        (tmp_path / "SUPIR-v0F.safetensors").write_bytes(b"")
        one = status_html()
        (tmp_path / "SUPIR-v0Q.ckpt").write_bytes(b"")
        both = status_html()
    finally:
        shared.opts.supir_models_path = ""
    assert "Not found: SUPIR-v0Q" in one and "supir-optional" in one and "supir-missing" not in one
    assert "SUPIR-v0Q.ckpt" in both and "Not found" not in both


def test_every_label_has_a_tooltip(webui):
    from pathlib import Path

    script_js = (Path(__file__).resolve().parents[2] / "javascript" / "supir.js").read_text()
    labels = {c.label for c in scripts.scripts_txt2img.scripts[0].controls} - {"SUPIR"}
    assert all(f'"{label}":' in script_js for label in labels), labels


def _blocks_of(block):
    yield block
    for child in getattr(block, "children", []) or []:
        yield from _blocks_of(child)


def test_status_line_is_computed_on_every_page_load(webui, monkeypatch):
    """Not once at start-up: a value given as a callable is computed again when a page loads."""
    from sd_webui_supir import ui

    calls = []
    monkeypatch.setattr(ui, "model_status", lambda: calls.append(1) or _status())
    with gr.Blocks() as root:
        ui._components(SupirArgs(), lambda name: f"t_{name}", False, with_skip=False)
    status = next(b for b in _blocks_of(root) if getattr(b, "elem_id", None) == "t_status")
    load = status.load_event_to_attach
    assert load is not None and load[0] is ui.status_html
    before = len(calls)
    assert "SUPIR-v0Q" in load[0]()  # what the page shows when it loads
    assert len(calls) == before + 1


def _status():
    return {
        "models": [{"name": "SUPIR-v0Q", "file": "x"}],
        "missing": [],
        "how_to_get": "",
        "sdxl_problem": None,
        "sdxl_base_in_use": "the loaded checkpoint",
    }


def test_sampler_knobs_wait_in_a_closed_advanced_group(webui):
    from sd_webui_supir import ui

    with gr.Blocks() as root:
        c = ui._components(SupirArgs(), lambda name: f"a_{name}", False, with_skip=False)
    advanced = next(b for b in _blocks_of(root) if getattr(b, "elem_id", None) == "a_advanced")
    inside = {id(b) for b in _blocks_of(advanced)}
    for name in ("steps", "cfg_scale", "s_noise", "positive_prompt", "negative_prompt", "seed"):
        assert id(c[name]) in inside, name
    for name in ("model", "scale", "prompt_source", "caption"):
        assert id(c[name]) not in inside, name
    assert advanced.open is False


def test_status_line_refreshes_after_a_checkpoint_loads():
    """supir.js clicks the refresh buttons when the webui's options change (checkpoint loaded, Settings)."""
    import shutil
    import subprocess
    from pathlib import Path

    import pytest

    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    script = (Path(__file__).resolve().parents[2] / "javascript" / "supir.js").read_text()
    harness = """
const callbacks = [];
let clicks = 0;
globalThis.onOptionsChanged = (fn) => callbacks.push(fn);
globalThis.onAfterUiUpdate = () => {};
globalThis.window = {addEventListener: () => {}};
globalThis.opts = {sd_model_checkpoint: "sdxl.safetensors"};
globalThis.gradioApp = () => ({querySelectorAll: (sel) =>
    sel === "[id$='supir_refresh_status']" ? [{click: () => clicks++}, {click: () => clicks++}] : []});
SCRIPT
const run = () => callbacks.forEach((fn) => fn());
run(); const first = clicks;
run(); const same = clicks;
opts.sd_model_checkpoint = "other.safetensors"; run();
console.log(JSON.stringify([first, same, clicks]));
""".replace("SCRIPT", script)
    out = subprocess.run([node, "-e", harness], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[2,2,4]"  # both tabs on a change, nothing when nothing changed
