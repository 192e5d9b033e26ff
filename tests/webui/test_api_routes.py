"""The /supir/v1 routes through FastAPI's TestClient: results, errors, --api-auth and the queue lock."""

from __future__ import annotations

import base64
import io
import threading
import time

import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi", reason="fastapi is not installed (it comes with the `test` extra)")
pytest.importorskip("httpx", reason="httpx is not installed: FastAPI's TestClient needs it (`test` extra)")

from fastapi.testclient import TestClient  # noqa: E402
from modules import call_queue, script_callbacks, shared  # noqa: E402

from .test_generation import assert_restored  # noqa: E402


def client() -> TestClient:
    app = fastapi.FastAPI()
    script_callbacks.app_started_callback(None, app)  # demo is None under --nowebui
    return TestClient(app)


def png_b64(size=(32, 32)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, "orange").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


REQUEST = {"image": png_b64(), "model": "SUPIR-v0F", "args": {"steps": 2, "s_churn": 0, "seed": 5}}


def test_models_args_and_status(webui):
    api = client()
    models = api.get("/supir/v1/models").json()
    assert [m["name"] for m in models["models"]] == ["SUPIR-v0Q", "SUPIR-v0F"] and models["missing"] == []
    args = api.get("/supir/v1/args").json()
    assert [a["name"] for a in args[:4]] == ["enabled", "model", "scale", "skip_img2img"]
    assert args[8] == {"index": 8, "name": "steps", "default": 50}
    status = api.get("/supir/v1/status").json()
    assert status["busy"] is False and "cache" in status


def test_upscale_route(webui):
    response = client().post(
        "/supir/v1/upscale", json={**REQUEST, "image": "data:image/png;base64," + REQUEST["image"]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["image"])))
    assert image.size == (64, 64) and body["output_size"] == [64, 64]
    assert "SUPIR model: SUPIR-v0F" in image.info["parameters"] and body["parameters"]["seed"] == 5
    assert_restored(webui, runs=1)


@pytest.mark.parametrize(
    ("change", "status", "text"),
    [
        ({"model": "SUPIR-v0X"}, 422, "model must be one of"),
        ({"args": {"steps": "many"}}, 422, "steps must be a whole number"),
        ({"args": {"colour": 1}}, 422, "unknown SUPIR argument"),
        ({"image": "not base64 at all"}, 400, "not a base64-encoded image"),
    ],
)
def test_upscale_route_rejects_bad_requests(webui, change, status, text):
    response = client().post("/supir/v1/upscale", json={**REQUEST, **change})
    assert response.status_code == status and text in response.json()["detail"]


def test_missing_model_is_404_with_where_to_get_it(webui, tmp_path):
    shared.opts.supir_models_path = str(tmp_path)
    try:
        response = client().post("/supir/v1/upscale", json=REQUEST)
    finally:
        shared.opts.supir_models_path = ""
    assert response.status_code == 404 and "github.com/Fanghua-Yu/SUPIR" in response.json()["detail"]


def test_api_auth_is_honoured(webui):
    shared.cmd_opts.api_auth = "alice:secret,bob:pw"
    try:
        api = client()
    finally:
        shared.cmd_opts.api_auth = None
    assert api.get("/supir/v1/models").status_code == 401
    assert api.get("/supir/v1/models", auth=("alice", "wrong")).status_code == 401
    assert api.get("/supir/v1/models", auth=("bob", "pw")).status_code == 200


def test_upscale_waits_for_the_queue_lock(webui):
    api = client()
    result = {}

    def call():
        result["response"] = api.post("/supir/v1/upscale", json=REQUEST)

    with call_queue.queue_lock:  # another GPU job holds the queue
        worker = threading.Thread(target=call)
        worker.start()
        time.sleep(0.5)
        assert "response" not in result and webui.sdxl.device.type == "cuda"
    worker.join(timeout=60)
    assert result["response"].status_code == 200
