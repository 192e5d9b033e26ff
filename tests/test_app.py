"""The standalone web UI / API (supir_engine/app.py) as clients see it.

The server runs in a subprocess (``python -m supir_engine serve --demo``: tiny random models) on a free
loopback port, and is called with the real ``gradio_client``, with whatever gradio versions are installed
(3.41 with its client 0.5, or 4/5/6 with client 1.x/2.x). Small settings (min size 64, 2 steps) keep a call
well under a second.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from supir_engine.cli import main

ROOT = Path(__file__).resolve().parents[1]
MISSING = [name for name in ("gradio", "gradio_client") if importlib.util.find_spec(name) is None]
NEEDS_GRADIO = pytest.mark.skipif(
    bool(MISSING),
    reason=f"{' and '.join(MISSING)} not installed: pip install 'sd-webui-supir[app]' gradio_client",
)
STARTUP_SECONDS = 180  # imports of torch and gradio on a busy 2-core machine
CALL_SECONDS = 120  # bound on every call, so that a stuck server fails the test instead of hanging it

# The main endpoint's inputs after the image, in order (as in the README), with the values used here.
UPSCALE_INPUTS = {
    "model": "Q",
    "storage_dtype": "fp16",
    "memory_policy": "default",
    "scale": 2,
    "min_size": 64,
    "steps": 2,
    "sampler": "restore_edm",
    "cfg_scale": 7.5,
    "linear_cfg": True,
    "cfg_scale_start": 4.0,
    "control_scale": 1.0,
    "linear_control": False,
    "control_scale_start": 0.0,
    "restoration_scale": -1.0,
    "s_churn": 5.0,
    "s_noise": 1.003,
    "seed": 5,
    "color_fix": "wavelet",
    "denoise_stage": True,
    "caption": "",
    "positive_prompt": "a photo",
    "negative_prompt": "blurry",
    "tile_size": 0,
    "tile_stride": 64,
    "vae_encoder_tile": 0,
    "vae_decoder_tile": 0,
    "progressive": False,
    "tile_prompts": "",
    "pre_upscaler": "lanczos",
}


# ------------------------------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"server not up after {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")


def file_arg(path: Path):
    """An upload for the installed client: handle_file() from client 1.0 on, a plain path before."""
    try:
        from gradio_client import handle_file
    except ImportError:
        return str(path)
    return handle_file(str(path))


def result_path(value) -> Path:
    """Image outputs arrive as a path (or, from some clients, a dict with one)."""
    if isinstance(value, dict):
        value = value.get("path") or value.get("name")
    return Path(value)


def client_takes_keywords() -> bool:
    from gradio_client import Client

    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(Client.predict).parameters.values())


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size and holds no pixels (a 0x0 file, or a 30000x30000 one that is tiny)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, output folder, log file) of a demo server; stopped after the module."""
    tmp = tmp_path_factory.mktemp("app")
    port = free_port()
    log = tmp / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "supir_engine", "serve", "--demo", "--port", str(port)]
    command += ["--min-size", "64", "--output-dir", str(tmp / "out")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, proc, log)
        yield url, tmp / "out", log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0], verbose=False)


@pytest.fixture(scope="module")
def small_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "small.png"
    Image.new("RGB", (64, 48), (150, 60, 30)).save(path)
    return path


def call_upscaler(client, image: Path, submit: bool = False, **values):
    """The earlier backend's call, with keywords (as its webui extension did) where the client has them."""
    args = {"upscale": 2, "seed": 3, "steps": 2, "prompt_cfg": 4.0, "s2_str": 0.5, "noise": 1.01}
    args |= {"a_prompt": "sharp photo", "n_prompt": "blurry"} | values
    if client_takes_keywords():
        job = client.submit(input_image=file_arg(image), **args, api_name="/call_upscaler")
    else:
        job = client.submit(file_arg(image), *args.values(), api_name="/call_upscaler")
    return job if submit else job.result(timeout=CALL_SECONDS)


def upscale(client, image: Path, submit: bool = False, **values):
    job = client.submit(file_arg(image), *{**UPSCALE_INPUTS, **values}.values(), api_name="/upscale")
    return job if submit else job.result(timeout=CALL_SECONDS)


# ------------------------------------------------------------------------------------------ command line


def test_serve_refuses_a_public_address_without_the_flag(capsys):
    assert main(["serve", "--demo", "--host", "0.0.0.0"]) == 2
    assert "--listen-anywhere" in capsys.readouterr().err


def test_serve_refuses_a_malformed_login(capsys):
    assert main(["serve", "--demo", "--auth", "nopassword"]) == 2
    assert "user:password" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the API


@NEEDS_GRADIO
def test_call_upscaler_returns_the_image_with_its_parameters(client, server, small_png):
    with Image.open(result_path(call_upscaler(client, small_png))) as image:
        assert image.size == (128, 96)
        assert image.format == "PNG"
        parameters = image.info["parameters"]
    # the earlier backend's names mapped to ours: prompt_cfg, s2_str, noise, upscale, a_prompt, n_prompt
    for expected in (
        "SUPIR CFG scale: 4.0",
        "SUPIR control scale: 0.5",
        "SUPIR s_noise: 1.01",
        "SUPIR scale: 2.0",
    ):
        assert expected in parameters
    assert "SUPIR seed: 3" in parameters and "SUPIR steps: 2" in parameters
    assert "SUPIR positive prompt: sharp photo" in parameters
    assert any(server[1].glob("small_SUPIR_x2_seed3*.png")), "result not saved in --output-dir"


@NEEDS_GRADIO
def test_upscale_endpoint_returns_the_image_and_its_parameters(client, small_png):
    image, parameters = upscale(client, small_png, scale=3, seed=11, sampler="restore_dpmpp_2m")
    with Image.open(result_path(image)) as result:
        assert result.size == (192, 128)  # 64x48 x3 = 192x144, sides rounded to multiples of 32
        assert "SUPIR seed: 11" in result.info["parameters"]
    assert "SUPIR sampler: restore_dpmpp_2m" in parameters and "64x48 -> 192x128" in parameters


def test_tile_prompts_reach_the_run_and_the_grid_endpoint(client, small_png):
    tiles = {"scale": 4, "tile_size": 16, "tile_stride": 8, "tile_prompts": "sky\n1,3: a roof"}
    image, parameters = upscale(client, small_png, **tiles)
    assert 'SUPIR tile prompts: "[\\"sky\\", \\"1,3: a roof\\"]"' in parameters
    preview, text = client.predict(
        file_arg(small_png), *{**UPSCALE_INPUTS, **tiles}.values(), api_name="/tile_grid"
    )
    with Image.open(result_path(preview)) as picture:
        assert picture.size == (256, 192)  # 64x48 x4, the output's shape
    assert (
        "2 x 3 = 6 tiles over 256x192 px" in text and "- 3 (1,3): a roof" in text and "- 1 (1,1): sky" in text
    )


@NEEDS_GRADIO
def test_switching_to_f_reads_only_the_supir_weights(client, server, small_png):
    _, parameters = upscale(client, small_png, model="F", memory_policy="stages", seed=12)
    assert "SUPIR model: tiny_supir_f" in parameters
    assert "(base hit, SUPIR loaded)" in server[2].read_text()
    _, parameters = upscale(client, small_png, model="Q", seed=13)
    assert "SUPIR model: tiny_supir, SUPIR precision: UNet fp32 / text fp32 / VAE fp32\n" in parameters


@NEEDS_GRADIO
def test_two_concurrent_calls_both_complete(client, small_png):
    jobs = [upscale(client, small_png, submit=True, seed=21), call_upscaler(client, small_png, submit=True)]
    image, _ = jobs[0].result(timeout=CALL_SECONDS)
    with (
        Image.open(result_path(image)) as a,
        Image.open(result_path(jobs[1].result(timeout=CALL_SECONDS))) as b,
    ):
        assert a.size == b.size == (128, 96)


def bad_images(folder: Path) -> dict[str, tuple[Path, str]]:
    good = folder / "good.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(good)
    files = {
        "truncated": (good.read_bytes()[:60], "truncated or corrupt"),
        "empty 0x0": (png_header_only(0, 0), "not a readable image"),
        "30000x30000": (png_header_only(30000, 30000), "too large"),
        "9000x9000": (png_header_only(9000, 9000), "exceeds the limit of 8192 px per side"),
    }
    out = {}
    for name, (data, message) in files.items():
        path = folder / f"{name.replace(' ', '_')}.png"
        path.write_bytes(data)
        out[name] = (path, message)
    return out


@NEEDS_GRADIO
def test_bad_images_get_a_clear_error_and_the_server_keeps_serving(client, small_png, tmp_path):
    for name, (path, message) in bad_images(tmp_path).items():
        for call in (upscale, call_upscaler):
            with pytest.raises(Exception, match=message):
                call(client, path)
            print(f"{name} via {call.__name__}: refused with {message!r}")
    with Image.open(result_path(call_upscaler(client, small_png))) as image:
        assert image.size == (128, 96)


@NEEDS_GRADIO
def test_stop_ends_the_run_within_a_sampler_step(client, small_png):
    job = upscale(client, small_png, submit=True, steps=200, seed=31)
    deadline = time.monotonic() + 60
    while not getattr(job.status(), "progress_data", None):  # until sampler steps are reported
        assert time.monotonic() < deadline, "no progress reported"
        time.sleep(0.2)
    client.submit(api_name="/stop").result(timeout=CALL_SECONDS)
    stopped_at = time.monotonic()
    with pytest.raises(Exception, match=r"Stopped: stopped after sampler step \d+ of 200"):
        job.result(timeout=CALL_SECONDS)
    assert time.monotonic() - stopped_at < 20


# ------------------------------------------------------------------------------------------ the page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_missing() -> str | None:
    if MISSING:
        return f"{' and '.join(MISSING)} not installed"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed (pip install playwright)"
    if not CHROMIUM.exists():
        return "Debian's Chromium is not installed (apt-get install chromium chromium-driver)"
    return None


def drive_page(page, url: str, image: Path) -> None:
    """Upload, 2 steps, seed 41, Upscale; returns once the parameters of the result are shown."""
    page.goto(url, wait_until="domcontentloaded")
    page.set_input_files("#supir_input input[type=file]", str(image))
    page.locator("#supir_input img").first.wait_for(state="visible", timeout=30_000)  # upload done
    for field, value in (("#supir_steps input[type=number]", "2"), ("#supir_seed input", "41")):
        page.fill(field, value)
        page.press(field, "Tab")
    page.click("#supir_run")
    info = "document.querySelector('#supir_info textarea')"
    page.wait_for_function(f"() => ({info} || {{}}).value?.includes('SUPIR seed: 41')", timeout=60_000)


@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
def test_page_upscales_an_uploaded_image(server, small_png, tmp_path):
    from playwright.sync_api import sync_playwright

    screenshot = tmp_path / "page.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        try:
            drive_page(page, server[0], small_png)
            result = page.locator("#supir_compare img, #supir_after img").first
            result.wait_for(state="visible", timeout=30_000)
            assert "SUPIR steps: 2" in page.input_value("#supir_info textarea")
            assert result.evaluate("img => img.naturalWidth") > 0
        finally:
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")
            browser.close()


def test_serve_refuses_a_nonpositive_vram_budget(capsys):
    assert main(["serve", "--demo", "--vram-budget", "0"]) == 2
    assert "--vram-budget must be a positive" in capsys.readouterr().err


@NEEDS_GRADIO
def test_memory_policy_and_budget_reach_the_pipeline(tmp_path):
    from supir_engine.app import Engine, RunRequest, ServeOptions
    from supir_engine.tiny import write_demo_checkpoints

    sdxl, supir = write_demo_checkpoints(tmp_path)
    options = ServeOptions(sdxl, {"Q": supir}, dtype="fp8", device="cpu", memory="blocks")
    options.vram_budget_gib = 2.5
    engine = Engine(options)
    pipeline = engine._pipeline(RunRequest("Q", "fp8", "blocks"), None)
    assert pipeline.memory.policy == "blocks" and pipeline.memory.budget_bytes == int(2.5 * 2**30)
    stored = {p.dtype for p in pipeline.model.model.control_model.parameters()}
    assert torch.float8_e4m3fn in stored  # SUPIR's weights really stored in fp8


@NEEDS_GRADIO
def test_upscale_media_endpoint_returns_the_animation(client, tmp_path):
    from supir_engine.animation import read_animation
    from tests.test_media import DURATIONS, write_gif

    gif = write_gif(tmp_path / "anim.gif", size=(32, 32))
    job = client.submit(file_arg(gif), *UPSCALE_INPUTS.values(), api_name="/upscale_media")
    path, summary = job.result(timeout=CALL_SECONDS)
    back = read_animation(result_path(path))
    assert len(back.frames) == 3 and back.durations == DURATIONS and back.frames[0].size == (64, 64)
    assert "3 frames: 3 upscaled, 0 resumed; seed 5" in summary
