"""The fake webui (tests/webui/fakewebui/modules), tiny SUPIR weights, and the extension loaded into it.

Set up once per session, as the webui does at start-up: preload flags, scripts imported from the
extension folder, Settings registered, the UIs built with the installed gradio, upscalers loaded. Each
test then starts from a clean shared.state and an SDXL checkpoint "on the GPU" (a fake model that
records where the webui moves it and refuses to hand out its tensors while "on the GPU").
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).resolve().parent / "fakewebui"
DATA = Path(tempfile.mkdtemp(prefix="fake_webui_"))
atexit.register(shutil.rmtree, DATA, ignore_errors=True)
os.environ["FAKE_WEBUI_DATA"] = str(DATA)
sys.path[:0] = [str(FAKE), str(ROOT)]

from modules import (  # noqa: E402 - the fake must be importable first
    devices,
    errors,
    images,
    modelloader,
    script_callbacks,
    scripts,
    sd_models,
    shared,
    shared_state,
    shared_total_tqdm,
)

from supir_engine.tiny import random_state_dict, save_checkpoint, split_state_dict  # noqa: E402

FAST = {"enabled": True, "steps": 2, "s_churn": 0.0, "seed": 7}


def hijacked(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SDXL tensors named as the webui's hijacked model names them (text encoders wrapped)."""
    out = {"alphas_cumprod": torch.linspace(1, 0, 10)}  # a non-weight key the webui model also has
    for key, tensor in tensors.items():
        for i in (0, 1):
            key = key.replace(f"conditioner.embedders.{i}.", f"conditioner.embedders.{i}.wrapped.")
        key = key.replace("token_embedding.weight", "token_embedding.wrapped.weight")
        out[key] = tensor
    return out


class FakeSdModel:
    """The webui's loaded checkpoint: where it is, what it is, its state dict."""

    def __init__(
        self, tensors: dict[str, torch.Tensor], is_sdxl: bool = True, title: str = "fake-sdxl.safetensors"
    ):
        self._tensors = tensors
        self.device = devices.device
        self.lowvram = False
        self.is_sdxl = is_sdxl
        self.sd_checkpoint_info = sd_models.CheckpointInfo(f"/models/Stable-diffusion/{title}", title)
        self.sd_model_checkpoint = self.sd_checkpoint_info.filename
        self.sd_model_hash = "0123abcd"

    def to(self, device=None, *args, **kwargs):
        self.device = torch.device(device)
        return self

    def state_dict_on_cpu(self) -> dict[str, torch.Tensor]:
        """The tensors, wherever the model is (for tests that build other hosts' models from them)."""
        return dict(self._tensors)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.device.type != "cpu":
            raise AssertionError("the SD checkpoint's tensors were read while it was still on the GPU")
        return dict(self._tensors)


class Webui:
    """Handles the tests use."""

    FakeSdModel = FakeSdModel

    def __init__(self, sdxl: FakeSdModel, sd15: FakeSdModel, models_dir: Path, blocks):
        self.sdxl, self.sd15, self.models_dir, self.blocks = sdxl, sd15, models_dir, blocks

    @staticmethod
    def script_args(runner: scripts.ScriptRunner, **values) -> list:
        """The Script's argument list: its components' initial values, then ``values`` by name."""
        from sd_webui_supir.args import ARG_NAMES

        args = runner.default_args()
        script = runner.scripts[0]
        for name, value in {**FAST, **values}.items():
            args[script.args_from + ARG_NAMES.index(name)] = value
        return args


def keep_gradio_from_writing_stubs() -> None:
    """gradio >= 4 writes a .pyi next to any module defining a component class (the fake InputAccordion)."""
    try:
        from gradio import component_meta
    except ImportError:  # gradio 3.41, as the webui runs it: nothing to do
        return
    component_meta.create_or_modify_pyi = lambda *args, **kwargs: None


@pytest.fixture(scope="session")
def webui() -> Webui:
    import gradio as gr

    keep_gradio_from_writing_stubs()

    models_dir = DATA / "models" / "SUPIR"
    sdxl, supir_q = split_state_dict(random_state_dict(seed=11))
    _, supir_f = split_state_dict(random_state_dict(seed=12))
    save_checkpoint(supir_q, models_dir / "SUPIR-v0Q.safetensors")
    save_checkpoint(supir_f, models_dir / "SUPIR-v0F.safetensors")

    import preload  # the extension's flags, parsed as the webui does before anything else

    parser = argparse.ArgumentParser()
    preload.preload(parser)
    assert parser.parse_args([]).supir_models_path is None
    shared.cmd_opts.use_cpu = ["supir"]  # the webui's --use-cpu: SUPIR computes on the CPU here

    scripts.load_scripts(str(ROOT))
    script_callbacks.ui_settings_callback()
    shared.opts.supir_min_size = 64
    shared.opts.supir_upscaler_steps = 2
    with gr.Blocks() as blocks:
        for runner in (scripts.scripts_txt2img, scripts.scripts_img2img):
            runner.setup_ui()
        scripts.scripts_postproc.setup_ui()
    modelloader.load_upscalers()
    script_callbacks.before_ui_callback()  # as the webui does, after the upscalers and before the UI
    sd15 = FakeSdModel(
        {"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(4)}, False
    )
    return Webui(FakeSdModel(hijacked(sdxl)), sd15, models_dir, blocks)


@pytest.fixture(autouse=True)
def fresh(request):
    """A clean webui state; the SDXL checkpoint loaded and on the GPU."""
    if "webui" not in request.fixturenames:
        yield
        return
    webui = request.getfixturevalue("webui")
    shutil.rmtree(DATA / "supir_resume", ignore_errors=True)  # no test resumes another's interrupted job
    shared.state = shared_state.State()
    shared.state.begin(job="test")
    shared.total_tqdm = shared_total_tqdm.TotalTQDM()
    sd_models.calls.clear()
    images.saved.clear()
    errors.reported.clear()
    webui.sdxl.device = devices.device
    sd_models.model_data.set_sd_model(webui.sdxl)
    yield
    sd_models.model_data.set_sd_model(webui.sdxl)


@pytest.fixture
def upscale_calls(monkeypatch):
    """Every runner.upscale call: (input image, settings asked, settings used)."""
    from sd_webui_supir import runner

    calls = []
    real = runner.upscale

    def spy(image, settings, variant, label="SUPIR", **kwargs):
        result = real(image, settings, variant, label, **kwargs)
        calls.append((image.copy(), settings, result.settings))
        return result

    monkeypatch.setattr(runner, "upscale", spy)
    return calls
