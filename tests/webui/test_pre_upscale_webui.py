"""The webui's upscaler list as SUPIR's pre-upscaler: choices, a run through the API, and refusals."""

from __future__ import annotations

import base64
import io

import pytest
from modules import shared
from PIL import Image

from sd_webui_supir import pre_upscale
from sd_webui_supir.args import ArgumentError, SupirArgs, from_mapping, infotext_params, to_settings
from sd_webui_supir.host import WebuiHost
from supir_engine.settings import UpscaleSettings

pytest.importorskip("fastapi", reason="fastapi is not installed (it comes with the `test` extra)")
pytest.importorskip("httpx", reason="httpx is not installed: FastAPI's TestClient needs it (`test` extra)")

from .test_api_routes import REQUEST, client  # noqa: E402


def test_choices_are_the_resamplers_and_the_webui_upscalers(webui):
    names = {u.name for u in shared.sd_upscalers}
    assert {"None", "Lanczos", "Nearest", "SUPIR-v0Q", "SUPIR-v0F"} <= names
    # SUPIR's own entries cannot pre-upscale for SUPIR; "None" does not enlarge; "Lanczos" is the engine's
    assert pre_upscale.choices() == ["lanczos", "bicubic", "Nearest"]


def test_host_finds_a_webui_upscaler_by_name(webui):
    upscale = WebuiHost().image_upscaler("Nearest")
    out = upscale(Image.new("RGB", (20, 10), "red"), (40, 80))
    assert out.size == (80, 40)
    assert WebuiHost().image_upscaler("SUPIR-v0Q") is None
    assert WebuiHost().image_upscaler("missing") is None


def test_argument_reaches_the_settings_and_the_infotext():
    args = from_mapping({"pre_upscaler": "Nearest"})
    settings = to_settings(args, UpscaleSettings(), "", 1)
    assert settings.pre_upscaler == "Nearest"
    assert infotext_params(args, settings)["SUPIR pre-upscaler"] == "Nearest"
    assert SupirArgs().pre_upscaler == "lanczos"


def test_a_file_path_is_refused():
    with pytest.raises(ArgumentError, match="webui's upscalers"):
        SupirArgs(pre_upscaler="/models/4x.safetensors")


def test_api_runs_the_webui_upscaler_first(webui, monkeypatch):
    data = next(u for u in shared.sd_upscalers if u.name == "Nearest")
    calls = []
    real = data.scaler.upscale

    def spy(img, scale, selected_model=None):
        calls.append((img.size, scale))
        return real(img, scale, selected_model)

    monkeypatch.setattr(data.scaler, "upscale", spy)
    request = {**REQUEST, "args": {**REQUEST["args"], "pre_upscaler": "Nearest"}}
    response = client().post("/supir/v1/upscale", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["image"])))
    assert image.size == (64, 64)
    assert calls == [((32, 32), 2.0)]
    assert "SUPIR pre-upscaler: Nearest" in body["infotext"]
    assert body["parameters"]["pre_upscaler"] == "Nearest"


def test_api_refuses_an_unknown_upscaler(webui):
    request = {**REQUEST, "args": {**REQUEST["args"], "pre_upscaler": "4x-Unknown"}}
    response = client().post("/supir/v1/upscale", json=request)
    assert response.status_code == 400 and "unknown pre-upscaler '4x-Unknown'" in response.json()["detail"]
