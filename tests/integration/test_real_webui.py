"""The extension inside a real stable-diffusion-webui (1.10, or the dev branch), driven through its HTTP API.

Opt-in: set ``SD_WEBUI_DIR`` to a webui checkout whose dependencies are installed (its ``repositories/``
present), and ``SD_WEBUI_PYTHON`` to that environment's python if it is not ``SD_WEBUI_DIR/venv``. A
Stable Diffusion checkpoint is taken from ``SD_WEBUI_CKPT`` or the first file in its
``models/Stable-diffusion``; a random-weight SD 1.5 file is enough. The webui runs on the CPU, on a free
loopback port, with a temporary ``--data-dir`` that holds this extension (linked) and tiny random SUPIR
weights in the real key layout; nothing in the checkout is changed. The environment is passed on as it
is, so an offline machine sets ``HF_HOME`` (the SD 1.5 tokenizer) and ``HF_HUB_OFFLINE=1`` itself.

All tests share one server (it takes a minute to start on 2 CPU cores); each sets what it depends on.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
WEBUI = Path(os.environ["SD_WEBUI_DIR"]).expanduser() if os.environ.get("SD_WEBUI_DIR") else None

pytestmark = pytest.mark.skipif(
    WEBUI is None,
    reason="integration test against a real webui: set SD_WEBUI_DIR to a stable-diffusion-webui checkout "
    "(1.10 or the dev branch) with its dependencies installed (see the README, 'Development')",
)

START_TIMEOUT = float(os.environ.get("SD_WEBUI_START_TIMEOUT", "600"))
WEBUI_FLAGS = [
    "--skip-prepare-environment",
    "--skip-install",
    "--skip-torch-cuda-test",
    "--skip-version-check",
    "--use-cpu",
    "all",
    "--no-half",
    "--precision",
    "full",
    "--no-download-sd-model",
    "--do-not-download-clip",
    "--api",
]
SUPIR_BASE = "tiny-sdxl-base.safetensors"


def webui_python() -> str:
    if os.environ.get("SD_WEBUI_PYTHON"):
        return os.environ["SD_WEBUI_PYTHON"]
    for candidate in (WEBUI / "venv" / "bin" / "python", WEBUI / "venv" / "Scripts" / "python.exe"):
        if candidate.exists():
            return str(candidate)
    pytest.fail("SD_WEBUI_PYTHON is not set and the webui has no venv/ folder: set it to the webui's python")


def sd_checkpoint() -> Path:
    if os.environ.get("SD_WEBUI_CKPT"):
        return Path(os.environ["SD_WEBUI_CKPT"]).expanduser()
    found = sorted(
        p for p in (WEBUI / "models" / "Stable-diffusion").glob("*") if p.suffix in (".safetensors", ".ckpt")
    )
    if not found:
        pytest.fail(f"no checkpoint in {WEBUI / 'models' / 'Stable-diffusion'}: set SD_WEBUI_CKPT")
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HTTPStatusError(AssertionError):
    """A call answered with an error status (an AssertionError, so a test that did not expect it fails)."""

    def __init__(self, path: str, code: int, body: bytes):
        super().__init__(f"{path}: HTTP {code}: {body[:2000]!r}")
        self.code, self.body = code, body


class Webui:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log

    def call(self, path: str, payload: dict | None = None, timeout: float = 600) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise HTTPStatusError(path, exc.code, exc.read()) from exc

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def start_webui(
    tmp_path_factory,
    checkpoint: Path,
    supir_files: dict[str, Path],
    config: dict,
    checkpoints: dict[str, Path] | None = None,
    extra_flags: list[str] | None = None,
):
    """Start the webui with this extension and these files in a temporary data folder; yield it, stop it."""
    data = tmp_path_factory.mktemp("webui_data")
    (data / "extensions").mkdir()
    (data / "extensions" / "sd-webui-supir").symlink_to(ROOT, target_is_directory=True)
    for folder, files in (("SUPIR", supir_files), ("Stable-diffusion", checkpoints or {})):
        (data / "models" / folder).mkdir(parents=True)
        for name, path in files.items():
            (data / "models" / folder / name).symlink_to(Path(path).resolve())
    (data / "config.json").write_text(json.dumps(config))

    port = free_port()
    log = data / "webui.log"
    cmd = [webui_python(), "launch.py", *WEBUI_FLAGS, *(extra_flags or []), "--port", str(port)]
    cmd += ["--ckpt", str(checkpoint), "--data-dir", str(data)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            cmd, cwd=WEBUI, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = Webui(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "Model loaded in" not in log.read_text(errors="replace"):
            if process.poll() is not None:
                pytest.fail(f"the webui exited during start-up:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the webui was not ready after {START_TIMEOUT:.0f} s:\n{server.log_tail()}")
            time.sleep(1)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def webui(tmp_path_factory) -> Webui:
    sys.path.insert(0, str(ROOT))
    from supir_engine.tiny import write_demo_checkpoints

    base, supir = write_demo_checkpoints(tmp_path_factory.mktemp("tiny"))
    # Defaults a CPU test needs: no live previews that would download a decoder, small SUPIR working size.
    config = {"show_progress_type": "Approx cheap", "supir_min_size": 64}
    yield from start_webui(
        tmp_path_factory, sd_checkpoint(), {"SUPIR-v0Q.safetensors": supir}, config, {SUPIR_BASE: base}
    )


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[-1])))


def encode(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def supir_args(webui: Webui, **values) -> list:
    """The ``alwayson_scripts`` list, in the order ``GET /supir/v1/args`` gives."""
    order = webui.call("/supir/v1/args")
    defaults = {item["name"]: item["default"] for item in order}
    defaults.update({"enabled": True, "steps": 2, "s_churn": 0.0, **values})
    return [defaults[item["name"]] for item in order]


def txt2img(webui: Webui, supir: list | None, **payload) -> dict:
    body = {
        "prompt": "a red apple",
        "steps": 1,
        "width": 64,
        "height": 64,
        "seed": 11,
        "sampler_name": "Euler",
    }
    body.update(payload)
    if supir is not None:
        body["alwayson_scripts"] = {"supir": {"args": supir}}
    return webui.call("/sdapi/v1/txt2img", body)


def loaded_checkpoint(webui: Webui) -> str:
    return webui.call("/sdapi/v1/options")["sd_model_checkpoint"]


def choose_base(webui: Webui, tiny: bool) -> None:
    """Settings > SUPIR > SDXL base: the tiny base file, or the loaded checkpoint (SD 1.5 here: unusable)."""
    value = "Loaded checkpoint (when SDXL)"
    if tiny:
        titles = [m["title"] for m in webui.call("/sdapi/v1/sd-models")]
        value = next(t for t in titles if t.startswith(SUPIR_BASE))
    webui.call("/sdapi/v1/options", {"supir_sdxl_base": value})


@pytest.fixture
def with_base(webui: Webui) -> Webui:
    """The webui with a usable SDXL base chosen in Settings, whatever the tests before did."""
    choose_base(webui, tiny=True)
    assert webui.call("/supir/v1/models")["sdxl_problem"] in (None, "")
    return webui


def test_extension_is_loaded_everywhere(webui):
    choose_base(webui, tiny=False)
    scripts = webui.call("/sdapi/v1/scripts")
    assert "supir" in scripts["txt2img"] and "supir" in scripts["img2img"]
    upscalers = [u["name"] for u in webui.call("/sdapi/v1/upscalers")]
    assert "SUPIR-v0Q" in upscalers and "SUPIR-v0F" not in upscalers  # one entry per file found
    models = webui.call("/supir/v1/models")
    assert [m["name"] for m in models["models"]] == ["SUPIR-v0Q"] and models["missing"] == ["SUPIR-v0F"]
    assert "not an SDXL model" in models["sdxl_problem"]  # SD 1.5 loaded, no base file chosen yet
    options = webui.call("/sdapi/v1/options")
    assert options["supir_min_size"] == 64 and "supir_memory_policy" in options  # the Settings section


def test_ui_is_built_with_the_webuis_gradio(webui):
    config = webui.call("/config")
    ids = [c["props"].get("elem_id") or "" for c in config["components"]]
    for tab in ("txt2img", "img2img", "extras"):
        assert any(tab in i and i.endswith("supir_model") for i in ids), [i for i in ids if "supir" in i]
    skip = {
        c["props"]["elem_id"]: c["props"].get("visible")
        for c in config["components"]
        if (c["props"].get("elem_id") or "").endswith("supir_skip_img2img")
    }
    assert sorted(skip.values()) == [False, True]  # shown in img2img only (hidden in txt2img: same args)
    labels = {c["props"].get("label") for c in config["components"]}
    assert (
        "GPU memory policy (auto: fastest that fits the free VRAM; blocks: least VRAM)" in labels
    )  # Settings


def setting_choices(webui: Webui, key: str) -> list[str]:
    """The choices of a Settings dropdown as the page receives them (gradio 3: names; 4: (name, value))."""
    config = webui.call("/config")
    component = next(c for c in config["components"] if c["props"].get("elem_id") == f"setting_{key}")
    return [c[0] if isinstance(c, list) else c for c in component["props"]["choices"]]


def test_supir_is_an_extras_only_postprocessing_operation(webui):
    main_ui = setting_choices(webui, "postprocessing_enable_in_main_ui")
    extras = setting_choices(webui, "postprocessing_operation_order")
    assert "SUPIR" in extras
    if "Simple Upscale" not in main_ui or "Simple Upscale" in extras:
        pytest.skip("this webui offers every Extras script in txt2img/img2img (no extra_only flag)")
    assert "SUPIR" not in main_ui  # txt2img/img2img have SUPIR's own accordion


def test_sd15_without_base_keeps_the_image(webui):
    choose_base(webui, tiny=False)
    before = loaded_checkpoint(webui)
    result = txt2img(webui, supir_args(webui))
    assert decode(result["images"][0]).size == (64, 64)  # not upscaled, not lost
    infotext = json.loads(result["info"])["infotexts"][0]
    assert "SUPIR model" not in infotext and 'SUPIR error: "the loaded checkpoint' in infotext  # says why
    assert loaded_checkpoint(webui) == before


def test_txt2img_batch_is_upscaled_with_infotext(with_base):
    webui = with_base
    before = loaded_checkpoint(webui)
    result = txt2img(webui, supir_args(webui, seed=5), batch_size=2)
    images = [decode(i) for i in result["images"]]
    assert [i.size for i in images] == [(128, 128), (128, 128)]
    infotexts = json.loads(result["info"])["infotexts"]
    assert all("SUPIR model: SUPIR-v0Q" in t and "SUPIR scale: 2.0" in t for t in infotexts)
    assert "SUPIR seed: 5" in infotexts[0]
    assert loaded_checkpoint(webui) == before
    # the SD checkpoint still generates after SUPIR ran (it was put back where it was)
    assert decode(txt2img(webui, None)["images"][0]).size == (64, 64)


def test_skip_img2img_matches_the_supir_route(with_base):
    webui = with_base
    rng = np.random.default_rng(3)
    source = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    args = supir_args(webui, skip_img2img=True, prompt_source="None", seed=9)
    result = webui.call(
        "/sdapi/v1/img2img",
        {
            "init_images": [encode(source)],
            "prompt": "ignored",
            "steps": 2,
            "width": 48,
            "height": 40,
            "seed": 1,
            "denoising_strength": 0.5,
            "alwayson_scripts": {"supir": {"args": args}},
        },
    )
    via_img2img = decode(result["images"][0]).convert("RGB")
    assert via_img2img.size == (96, 80)
    direct = webui.call(
        "/supir/v1/upscale",
        {"image": encode(source), "args": {"steps": 2, "s_churn": 0.0, "seed": 9, "prompt_source": "None"}},
    )
    assert direct["output_size"] == [96, 80] and "SUPIR seed: 9" in direct["infotext"]
    assert np.array_equal(np.asarray(via_img2img), np.asarray(decode(direct["image"]).convert("RGB")))


def test_extras_upscaler(with_base):
    webui = with_base
    source = Image.new("RGB", (40, 32), (200, 120, 40))
    result = webui.call(
        "/sdapi/v1/extra-single-image",
        {"image": encode(source), "upscaler_1": "SUPIR-v0Q", "upscaling_resize": 2},
    )
    assert decode(result["image"]).size == (80, 64)


def test_hires_fix_with_supir_as_its_upscaler(with_base):
    webui = with_base
    before = loaded_checkpoint(webui)
    result = txt2img(
        webui,
        None,
        enable_hr=True,
        hr_upscaler="SUPIR-v0Q",
        hr_scale=2,
        hr_second_pass_steps=1,
        denoising_strength=0.3,
    )
    assert decode(result["images"][0]).size == (128, 128)
    assert "Hires upscaler: SUPIR-v0Q" in json.loads(result["info"])["infotexts"][0]
    assert webui.call("/supir/v1/status")["cache"]["model_loaded"]  # SUPIR did the upscale
    assert loaded_checkpoint(webui) == before  # and the webui's second pass had its model back


def test_bad_request_and_interrupt_keep_things_as_they_were(with_base):
    webui = with_base
    with pytest.raises(HTTPStatusError) as refused:
        webui.call("/supir/v1/upscale", {"image": encode(Image.new("RGB", (32, 32))), "model": "X"})
    assert refused.value.code in (400, 422)
    before = loaded_checkpoint(webui)
    outcome: dict = {}

    def run() -> None:
        outcome["result"] = txt2img(webui, supir_args(webui, steps=200))  # the most the sliders allow

    worker = threading.Thread(target=run)
    worker.start()
    seen = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        progress = webui.call("/sdapi/v1/progress?skip_current_image=true")
        state = progress["state"]
        seen.append((state.get("job"), state.get("sampling_step"), progress.get("textinfo")))
        if "SUPIR" in str(state.get("job")) and state.get("sampling_step", 0) >= 2:
            break
        time.sleep(0.5)
    webui.call("/sdapi/v1/interrupt", {})
    worker.join(300)
    assert not worker.is_alive()
    assert any("sampling step" in str(s[2]) for s in seen), seen[-5:]
    image = decode(outcome["result"]["images"][0])
    assert image.size == (64, 64)  # the generated image, kept as it was
    assert "SUPIR error: " in json.loads(outcome["result"]["info"])["infotexts"][0]
    assert loaded_checkpoint(webui) == before
    assert webui.call("/supir/v1/status")["busy"] is False
    assert decode(txt2img(webui, supir_args(webui))["images"][0]).size == (128, 128)  # and SUPIR still works


BAD_ARGUMENTS = [
    ({"scale": "abc"}, "scale must be a number, got 'abc'"),
    ({"model": "SUPIR-v0X"}, "model must be one of SUPIR-v0Q, SUPIR-v0F, got 'SUPIR-v0X'"),
    ({"scale": 0}, "scale must be between 1 and 8, got 0.0"),
    ({"scale": -1}, "scale must be between 1 and 8, got -1.0"),
    ({"scale": 100}, "scale must be between 1 and 8, got 100.0"),
    ({"steps": 0}, "steps must be between 1 and 200, got 0"),
    ({"sampler": "euler"}, "sampler must be one of restore_edm, restore_dpmpp_2m, got 'euler'"),
    ({"prompt_source": "Florence"}, "prompt_source must be one of Generation prompt, Custom caption, None"),
]


@pytest.mark.parametrize(("bad", "named"), BAD_ARGUMENTS)
def test_bad_api_arguments_keep_the_image_and_say_why(with_base, bad, named):
    webui = with_base
    start = webui.log.stat().st_size
    result = txt2img(webui, supir_args(webui, **bad))
    assert decode(result["images"][0]).size == (64, 64)  # the generated image, not upscaled, not lost
    infotext = json.loads(result["info"])["infotexts"][0]
    assert "SUPIR error: " in infotext and named in infotext, infotext
    assert "SUPIR model:" not in infotext
    assert named in webui.log.read_bytes()[start:].decode(errors="replace")  # and a console line


ABSOLUTE_PATH = re.compile(r"(?:^|[\s\"'(=])(/[\w.+-]+){2,}")


def test_routes_without_login_name_no_server_folders(webui):
    folders = [str(WEBUI.resolve()), str(webui.log.parent.resolve()), str(ROOT)]
    answers = [webui.call("/supir/v1/models"), webui.call("/supir/v1/status")]
    with pytest.raises(HTTPStatusError) as missing:  # an error that names the models folder
        webui.call("/supir/v1/upscale", {"image": encode(Image.new("RGB", (32, 32))), "model": "SUPIR-v0F"})
    assert missing.value.code == 404
    answers.append(missing.value.body.decode())
    text = json.dumps(answers)
    assert "<SUPIR models folder>" in text and "SUPIR-v0F" in text  # the folder is named, not given
    assert not [f for f in folders if f in text] and not ABSOLUTE_PATH.search(text), text


def total_progress(console: str) -> tuple[int, int]:
    """(steps, total) of the last "Total progress" bar the webui printed."""
    found = re.findall(r"Total progress:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)", console)
    assert found, console[-2000:]
    return int(found[-1][0]), int(found[-1][1])


def test_console_total_progress_ends_full(with_base):
    webui = with_base
    start = webui.log.stat().st_size
    result = txt2img(webui, supir_args(webui, steps=2), batch_size=2)  # 1 webui step, 2 x 2 SUPIR steps
    assert [decode(i).size for i in result["images"]] == [(128, 128)] * 2
    console = webui.log.read_bytes()[start:].decode(errors="replace")
    assert total_progress(console) == (1 + 2 * 2, 1 + 2 * 2)


CHROMIUM = Path(os.environ.get("SD_WEBUI_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"]
CHROMIUM_FLAGS += ["--disable-component-update", "--no-first-run", "--disable-quic"]


def browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (set SD_WEBUI_CHROMIUM)"
    return None


@contextlib.contextmanager
def webui_page(webui: Webui):
    """The webui's page in headless Chromium, loaded (skips the test when there is no browser)."""
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(webui.url, wait_until="domcontentloaded")
            page.wait_for_selector("#txt2img_generate", timeout=120_000)
            yield page
        finally:
            browser.close()


def test_gallery_before_after_comparison_in_the_browser(with_base, tmp_path):
    """Generate from the txt2img page with the SUPIR accordion open; compare an upscaled image."""
    webui = with_base
    with webui_page(webui) as page:
        page.fill("#txt2img_prompt textarea", "a red apple")
        for name, value in (("width", "64"), ("height", "64"), ("steps", "1"), ("batch_size", "2")):
            page.fill(f"#txt2img_{name} input[type=number]", value)
            page.press(f"#txt2img_{name} input[type=number]", "Enter")
        page.locator("#script_txt2img_supir_enable .label-wrap").first.click()  # opening it enables SUPIR
        page.locator("#script_txt2img_supir_advanced .label-wrap").first.click()  # steps are in Advanced
        page.fill("#script_txt2img_supir_steps input[type=number]", "2")
        page.press("#script_txt2img_supir_steps input[type=number]", "Enter")
        page.click("#txt2img_generate")
        info = "document.querySelector('#generation_info_txt2img textarea')"
        page.wait_for_function(f"() => {info}?.value.includes('SUPIR seed')", timeout=300_000)
        toggle = page.locator("#txt2img_gallery .supir-compare-toggle")
        thumbnails = page.locator("#txt2img_gallery .thumbnails > .thumbnail-item")
        selector = "#txt2img_gallery .thumbnails > .thumbnail-item"
        page.wait_for_function(f"() => document.querySelectorAll('{selector}').length === 3")  # grid + 2
        page.wait_for_timeout(1000)
        assert not toggle.is_visible()  # the grid is selected: nothing to compare
        thumbnails.nth(2).click()
        toggle.wait_for(state="visible", timeout=30_000)
        toggle.click()
        overlay = page.locator("#txt2img_gallery .supir-compare")
        overlay.wait_for(state="visible", timeout=30_000)
        before = page.locator("#txt2img_gallery .supir-compare img")
        page.wait_for_function(
            "() => document.querySelector('#txt2img_gallery .supir-compare img')?.naturalWidth > 0"
        )
        assert before.get_attribute("src").endswith("/1")  # the second image of the generation
        assert before.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [64, 64]  # as generated
        preview = page.locator("#txt2img_gallery .preview > img")
        assert preview.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [128, 128]  # SUPIR's result
        box = overlay.bounding_box()
        point = (box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)
        page.mouse.move(*point)
        split = overlay.evaluate("o => o.style.getPropertyValue('--supir-split')")
        assert abs(float(split.rstrip("%")) - 30) < 2
        on_top = page.evaluate("([x, y]) => document.elementFromPoint(x, y).className", list(point))
        assert "supir-compare" in on_top  # the overlay is above the gallery's preview
        page.screenshot(path=str(tmp_path / "comparison.png"))
        thumbnails.nth(0).click()  # the grid again: nothing to compare
        overlay.wait_for(state="hidden", timeout=30_000)
        toggle.wait_for(state="hidden", timeout=30_000)
        thumbnails.nth(2).click()
        toggle.wait_for(state="visible", timeout=30_000)
        page.click("#txt2img_generate")  # while a generation runs, the gallery shows other images
        page.locator("#txt2img_interrupt").wait_for(state="visible", timeout=60_000)
        toggle.wait_for(state="hidden", timeout=30_000)
        assert not overlay.is_visible()
        page.locator("#txt2img_interrupt").wait_for(state="hidden", timeout=300_000)


def test_extras_tab_in_the_browser(with_base, tmp_path):
    """Extras, single image: upload, open the SUPIR accordion, Generate: the result is 2x, with parameters."""
    webui = with_base
    source = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(source)
    with webui_page(webui) as page:
        page.click("#tabs button:has-text('Extras')")
        page.set_input_files("#extras_image input[type=file]", str(source))
        page.locator("#extras_image img").first.wait_for(state="visible", timeout=30_000)
        page.locator("#extras_supir .label-wrap").first.click()
        page.locator("#extras_supir_advanced .label-wrap").first.click()
        page.fill("#extras_supir_steps input[type=number]", "2")
        page.press("#extras_supir_steps input[type=number]", "Enter")
        page.click("#extras_generate")
        info = "document.querySelector('#html_info_x_extras')"
        page.wait_for_function(f"() => {info}?.innerText.includes('SUPIR seed')", timeout=300_000)
        text = page.evaluate(f"() => {info}.innerText")
        gallery = "Array.from(document.querySelectorAll('#extras_gallery img'))"
        page.wait_for_function(f"() => {gallery}.every(i => i.complete && i.naturalWidth > 0)")  # loaded
        sizes = page.evaluate(f"() => {gallery}.map(i => [i.naturalWidth, i.naturalHeight])")
    assert "SUPIR model: SUPIR-v0Q" in text and "SUPIR steps: 2" in text
    assert sizes and all(size == [48, 32] for size in sizes)  # 24x16 (no webui upscaler chosen) x 2


def status_text(page, tab: str = "txt2img") -> str:
    return page.evaluate(f"() => document.querySelector('#script_{tab}_supir_status')?.textContent || ''")


def test_status_line_is_current_when_the_page_loads_and_after_settings(webui):
    """The accordion's status line: computed at page load, and again when Settings are applied."""
    choose_base(webui, tiny=False)  # SD 1.5 loaded, no base file: SUPIR cannot run
    with webui_page(webui) as page:
        page.wait_for_function("() => document.querySelector('#script_txt2img_supir_status')?.textContent")
        assert "not an SDXL model" in status_text(page)
    choose_base(webui, tiny=True)  # changed behind the page's back: the next page load shows it
    with webui_page(webui) as page:
        page.wait_for_function(
            "() => !document.querySelector('#script_txt2img_supir_status')?.textContent"
            ".includes('not an SDXL model')",
            timeout=60_000,
        )
        assert "SUPIR-v0Q" in status_text(page) and "SUPIR-v0Q" in status_text(page, "img2img")
        # Settings > SUPIR > SDXL base back to the loaded checkpoint, Apply: the line follows, no reload
        page.click("#tabs button:has-text('Settings')")
        page.locator("#settings .tab-nav button", has_text=re.compile(r"^\s*SUPIR\s*$")).first.click()
        page.locator("#setting_supir_sdxl_base input").first.click()
        page.locator("#setting_supir_sdxl_base ul.options li", has_text="Loaded checkpoint").first.click()
        page.click("#settings_submit")
        page.wait_for_function(
            "() => document.querySelector('#script_txt2img_supir_status')?.textContent"
            ".includes('not an SDXL model')",
            timeout=60_000,
        )
    assert webui.call("/sdapi/v1/options")["supir_sdxl_base"] == "Loaded checkpoint (when SDXL)"
