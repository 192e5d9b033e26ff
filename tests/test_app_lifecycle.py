"""The web app's messages and lifecycle: bad uploads, Stop, progress, demo note, busy port, clean exits."""

from __future__ import annotations

import base64
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="gradio not installed")

ROOT = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 180


def env_with(tmp: Path) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp / "gradio")}


def ServeOptions(*args, **kwargs):  # noqa: N802 - imported late: gradio may be missing
    from supir_engine.app import ServeOptions as options

    return options(*args, **kwargs)


class FakeEngine:
    loading = False

    def __init__(self, error: Exception | None = None):
        self.error = error
        self.options = ServeOptions(None, {"Q": Path("SUPIR-v0Q.ckpt")}, min_size=64)

    def status(self) -> str:
        return "status"

    def upscale(self, image, settings, request, host):
        raise self.error

    def model_name(self, variant: str) -> str:
        return "SUPIR-v0Q"


def make_app(engine, tmp_path, demo=False):
    from supir_engine.app import ResultFolder, SupirApp

    return SupirApp(engine, ResultFolder(tmp_path), demo=demo)


def page_handler(app):
    from supir_engine.app import _on_page

    return _on_page(lambda upload: app.run(upload, _settings(), _request(), None, None), app._show, app._keep)


def _settings():
    from supir_engine.settings import UpscaleSettings

    return UpscaleSettings(min_size=64, steps=2)


def _request():
    from supir_engine.app import RunRequest

    return RunRequest("Q", "fp16", None)


def test_unreadable_upload_keeps_the_previous_result(tmp_path):
    from supir_engine.app import UnreadableUpload, checked_image

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not an image")
    import gradio as gr

    component = checked_image(type="filepath", image_mode=None)
    try:  # gradio 4 and later hand the component a FileData; 3.41 (the webui's pin) a base64 data URL
        from gradio.data_classes import FileData

        upload = FileData(path=str(broken), orig_name="broken.png")
    except ImportError:
        upload = "data:image/png;base64," + base64.b64encode(broken.read_bytes()).decode()
    value = component.preprocess(upload)
    assert isinstance(value, UnreadableUpload)
    app = make_app(FakeEngine(), tmp_path)
    outputs = page_handler(app)(value)
    *kept, info, status = outputs
    assert all(k == gr.update() for k in kept)
    assert "not a readable image" in info and str(tmp_path) not in info


def test_stop_is_shown_as_stopped_not_as_an_error(tmp_path):
    from PIL import Image

    from supir_engine.errors import CancelledError

    src = tmp_path / "in.png"
    Image.new("RGB", (32, 32)).save(src)
    import gradio as gr

    app = make_app(FakeEngine(CancelledError("stopped after sampler step 1 of 2")), tmp_path)
    *kept, info, _ = page_handler(app)(str(src))
    assert info.startswith("Stopped") and all(k == gr.update() for k in kept)


def test_progress_is_one_bar_over_all_stages():
    from supir_engine.app import ProgressHost

    reports = []
    host = ProgressHost(lambda value, desc=None, **kw: reports.append((value, desc)), threading.Event(), 2)
    calls = [("stage1", 0, 1), ("stage1", 1, 1), ("text", 0, 1), ("text", 1, 1)]
    calls += [("sampling", 0, 2), ("sampling", 1, 2), ("sampling", 2, 2), ("decode", 0, 1), ("decode", 1, 1)]
    for call in calls:
        host.progress(*call)
    values = [v for v, _ in reports]
    assert all(isinstance(v, float) for v in values) and values == sorted(values)
    assert values[-1] == 1.0 and any("left" in d for _, d in reports[1:-1])


def test_demo_page_says_the_output_is_noise(tmp_path):
    app = make_app(FakeEngine(), tmp_path, demo=True)
    blocks = app.build()
    texts = [c.get("props", {}).get("value") for c in blocks.config["components"]]
    assert any(isinstance(t, str) and "RANDOM weights" in t and "noise" in t for t in texts)


def test_busy_port_is_a_clear_error_before_gradio_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        command = [sys.executable, "-m", "supir_engine", "serve", "--demo", "--port", str(port)]
        done = subprocess.run(
            command, cwd=ROOT, env=env_with(tmp_path), capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr and "terminate" not in done.stderr


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_signals_end_the_server_cleanly(tmp_path, stop_signal):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "server.log"
    command = [
        sys.executable,
        "-m",
        "supir_engine",
        "serve",
        "--demo",
        "--port",
        str(port),
        "--min-size",
        "64",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env_with(tmp_path), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and "terminate" not in text
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("supir_")]
