"""The /supir/v1 routes through FastAPI's TestClient: results, errors, --api-auth and the queue lock."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib

import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi", reason="fastapi is not installed (it comes with the `test` extra)")
pytest.importorskip("httpx", reason="httpx is not installed: FastAPI's TestClient needs it (`test` extra)")

from fastapi.testclient import TestClient  # noqa: E402
from modules import call_queue, script_callbacks, shared  # noqa: E402

from sd_webui_supir import runner  # noqa: E402

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


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels: enough for a reader to see how large it is."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("change", "status", "text"),
    [
        ({"model": "SUPIR-v0X"}, 422, "model must be one of"),
        ({"args": {"steps": "many"}}, 422, "steps must be a whole number"),
        ({"args": {"colour": 1}}, 422, "unknown SUPIR argument"),
        ({"image": "not base64 at all"}, 400, "'image' is not"),
        ({"image": base64.b64encode(b"just some text\n" * 20).decode()}, 400, "'image' is not an image"),
        ({"image": base64.b64encode(_png_header(9000, 16)).decode()}, 413, "at most 8192 pixels a side"),
        ({"image": base64.b64encode(_png_header(20000, 20000)).decode()}, 413, "too large"),
    ],
)
def test_upscale_route_rejects_bad_requests(webui, change, status, text):
    response = client().post("/supir/v1/upscale", json={**REQUEST, **change})
    detail = response.json()["detail"]
    assert response.status_code == status and text in detail, detail
    assert "object at 0x" not in detail and "Traceback" not in detail


def test_missing_model_is_404_with_where_to_get_it(webui, tmp_path):
    shared.opts.supir_models_path = str(tmp_path)
    try:
        response = client().post("/supir/v1/upscale", json=REQUEST)
    finally:
        shared.opts.supir_models_path = ""
    detail = response.json()["detail"]
    assert response.status_code == 404 and "github.com/Fanghua-Yu/SUPIR" in detail
    assert "Settings > SUPIR" in detail and "pass its path with --supir" not in detail  # webui terms


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


def test_before_images_for_the_gallery_comparison(webui):
    from sd_webui_supir.compare import BEFORE

    from .test_generation import txt2img

    BEFORE.clear()
    shared.state.job_timestamp = "20261122101500"
    _, processed = txt2img(webui, batch_size=2)
    api = client()
    for index, upscaled in enumerate(processed.images):
        response = api.get(f"/supir/v1/before/20261122101500/{index}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        before = Image.open(io.BytesIO(response.content))
        assert before.size == (32, 32) and upscaled.size == (64, 64)
    first = Image.open(io.BytesIO(api.get("/supir/v1/before/20261122101500/0").content))
    second = Image.open(io.BytesIO(api.get("/supir/v1/before/20261122101500/1").content))
    assert first.tobytes() != second.tobytes()  # each image its own original
    assert api.get("/supir/v1/before/20261122101500/2").status_code == 404
    assert api.get("/supir/v1/before/19990101000000/0").status_code == 404

    BEFORE.clear()
    shared.opts.supir_compare = False
    try:
        txt2img(webui, batch_size=1)
    finally:
        shared.opts.supir_compare = True
    assert len(BEFORE) == 0


def test_before_route_follows_the_page_login(webui):
    from sd_webui_supir.compare import BEFORE

    BEFORE.remember("1", 0, Image.new("RGB", (8, 8)))
    app = fastapi.FastAPI()
    app.auth = [("alice", "pw")]  # as gradio's App has them with --gradio-auth
    app.tokens = {"token-of-alice": "alice"}
    script_callbacks.app_started_callback(None, app)
    api = TestClient(app)
    assert api.get("/supir/v1/before/1/0").status_code == 401
    assert "www-authenticate" not in api.get("/supir/v1/before/1/0").headers  # no browser password dialog
    api.cookies.set("access-token", "token-of-alice")
    assert api.get("/supir/v1/before/1/0").status_code == 200


def test_before_store_drops_the_oldest_beyond_its_limit():
    from sd_webui_supir.compare import BeforeImages

    store = BeforeImages(limit_bytes=3 * 10 * 10 * 3)
    for i in range(5):
        store.remember("job", i, Image.new("RGB", (10, 10), (i, 0, 0)))
    assert [store.get("job", i) is not None for i in range(5)] == [False, False, True, True, True]
    assert store.get("job", 4).getpixel((0, 0)) == (4, 0, 0)
    store.remember("job", 9, Image.new("RGB", (100, 100)))  # larger than the whole limit: not kept
    assert store.get("job", 9) is None and len(store) == 3


def test_page_login_protects_the_api_when_no_api_auth_is_set(webui):
    """--gradio-auth on a --listen server: SUPIR's routes follow the page's login, not left open."""
    app = fastapi.FastAPI()
    app.auth = [("alice", "pw")]
    app.tokens = {"token-of-alice": "alice"}
    script_callbacks.app_started_callback(None, app)
    api = TestClient(app)
    for route in ("/supir/v1/models", "/supir/v1/status", "/supir/v1/args"):
        assert api.get(route).status_code == 401, route
    assert api.post("/supir/v1/upscale", json=REQUEST).status_code == 401
    api.cookies.set("access-token", "token-of-alice")
    body = api.get("/supir/v1/models").json()
    assert body["models_dir"] == str(runner.models_dir())  # a logged-in user sees where the files are


def test_without_any_login_answers_name_no_server_paths(webui, tmp_path):
    from modules import paths

    api = client()
    text = api.get("/supir/v1/models").text
    assert str(runner.models_dir()) not in text and str(paths.data_path) not in text
    assert "<SUPIR models folder>" in text and "SUPIR-v0Q" in text
    shared.opts.supir_models_path = str(tmp_path)  # errors too: the missing-model 404 names no folder
    try:
        detail = api.post("/supir/v1/upscale", json=REQUEST).json()["detail"]
    finally:
        shared.opts.supir_models_path = ""
    assert str(tmp_path) not in detail and "<SUPIR models folder>" in detail


def test_without_any_login_a_linked_checkpoint_is_named_by_its_file_only(webui, monkeypatch):
    """The base checkpoint may link to a file outside the webui's folders: its real path stays private."""
    real = "/srv/private/checkpoints/sdxl_base_1.0.safetensors"
    described = {"model_loaded": True, "base": real, "supir": {"file": "D:\\models\\SUPIR-v0Q.safetensors"}}
    monkeypatch.setattr(runner.CACHE, "describe", lambda: described)
    cache = client().get("/supir/v1/status").json()["cache"]
    assert cache["base"] == "<elsewhere>/sdxl_base_1.0.safetensors"
    assert cache["supir"]["file"] == "<elsewhere>/SUPIR-v0Q.safetensors"
    models = client().get("/supir/v1/models").json()  # URLs in the answers are left as they are
    assert "https://github.com/Fanghua-Yu/SUPIR" in models["how_to_get"]
