"""The extension inside a real Forge webui (lllyasviel/stable-diffusion-webui-forge), driven through its API.

Opt-in: set ``FORGE_DIR`` to a Forge checkout whose dependencies are installed (its ``repositories/``
present) and ``FORGE_PYTHON`` to that environment's python (``tools/forge_rig.sh setup`` lays both out). A
Stable Diffusion checkpoint is taken from ``FORGE_CKPT`` or the first SD 1.5 file in its
``models/Stable-diffusion``; a random-weight SD 1.5 file is enough. Forge runs on the CPU (``--always-cpu``,
``--cpu`` on a recent Neo), on a free loopback port, with a temporary ``--data-dir`` that holds this extension
(linked) and tiny random SUPIR weights; ``--gradio-allowed-path`` names the checkout, whose own files the
page needs when the data folder is outside it. The environment is passed on as it is (offline machines set
``HF_HUB_OFFLINE=1`` themselves; Forge's tokenizers ship inside its ``backend/huggingface``).
``FORGE_EXTRA_ARGS`` adds flags (a Neo tree needs ``--attention-pytorch`` on the CPU). Forge Neo has no
``--ckpt`` and loads ``sd_model_checkpoint`` from the data folder's config.json, else the first file of its
checkpoint folder: the checkpoint is named there, and the tiny SUPIR SDXL base stays in the SUPIR models
folder (Settings > SUPIR takes a file name from there), out of the webui's checkpoint list.

Forge loads its checkpoint at the first generation, not at start-up: the first test runs before that.
All tests share one server; each sets what it depends on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .test_real_webui import (
    ROOT,
    HTTPStatusError,
    Webui,
    decode,
    encode,
    free_port,
    loaded_checkpoint,
    supir_args,
    txt2img,
)

FORGE = Path(os.environ["FORGE_DIR"]).expanduser() if os.environ.get("FORGE_DIR") else None

pytestmark = pytest.mark.skipif(
    FORGE is None or not os.environ.get("FORGE_PYTHON"),
    reason="integration test against a real Forge: set FORGE_DIR to a Forge checkout with its dependencies "
    "installed and FORGE_PYTHON to its python (tools/forge_rig.sh setup; see the README, 'Development')",
)

START_TIMEOUT = float(os.environ.get("FORGE_START_TIMEOUT", "600"))
FORGE_FLAGS = [
    "--skip-prepare-environment",
    "--skip-install",
    "--skip-torch-cuda-test",
    "--skip-version-check",
    "--api",
]
READY = "Startup time:"
SUPIR_BASE = "tiny-sdxl-base.safetensors"


def host_takes(flag: str) -> bool:
    """Whether this Forge defines ``flag``: a recent Neo refuses flags it does not know, and it renamed
    ``--always-cpu`` to ``--cpu`` and dropped ``--ckpt``."""
    sources = [FORGE / "modules" / "cmd_args.py", FORGE / "backend" / "args.py"]
    sources.append(FORGE / "ldm_patched" / "modules" / "args_parser.py")  # reForge
    return any(f'"{flag}"' in path.read_text(errors="replace") for path in sources if path.is_file())


def sd15_checkpoint() -> Path:
    if os.environ.get("FORGE_CKPT"):
        return Path(os.environ["FORGE_CKPT"]).expanduser()
    found = sorted(
        p
        for p in (FORGE / "models" / "Stable-diffusion").glob("*")
        if p.suffix in (".safetensors", ".ckpt") and "xl" not in p.name.lower()
    )
    if not found:
        pytest.fail(f"no SD 1.5 checkpoint in {FORGE / 'models' / 'Stable-diffusion'}: set FORGE_CKPT")
    return found[0]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def missing_requirements() -> list[str]:
    """What install.py would install into Forge's environment (``--skip-install`` keeps it from running)."""
    probe = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import install; "
        "print(' '.join(install.needed(None, Path(sys.argv[2]))))"
    )
    found = subprocess.run(
        [os.environ["FORGE_PYTHON"], "-c", probe, str(ROOT), str(FORGE)], capture_output=True, text=True
    )
    if found.returncode:
        pytest.fail(f"cannot run {os.environ['FORGE_PYTHON']}: {found.stderr.strip()}")
    return found.stdout.split()


def start_forge(
    tmp_path_factory,
    checkpoint: Path,
    supir_files: dict[str, Path],
    config: dict,
    extra_flags: list[str] | None = None,
) -> Iterator[Webui]:
    """Start Forge with this extension and these files in a temporary data folder; yield it, stop it."""
    missing = missing_requirements()
    if missing:
        pytest.fail(
            f"Forge's environment lacks this extension's requirements {missing} (the webui installs them "
            f"through install.py, which an offline start skips): {os.environ['FORGE_PYTHON']} -m pip install "
            + " ".join(missing)
        )
    data = tmp_path_factory.mktemp("forge_data")
    (data / "extensions").mkdir()
    (data / "extensions" / "sd-webui-supir").symlink_to(ROOT, target_is_directory=True)
    # Forge main takes --ckpt; Forge Neo has no such flag and loads the config's sd_model_checkpoint (else
    # the first file of its checkpoint folder), so the file is linked in and named in both places.
    for folder, files in (("SUPIR", supir_files), ("Stable-diffusion", {checkpoint.name: checkpoint})):
        (data / "models" / folder).mkdir(parents=True)
        for name, path in files.items():
            (data / "models" / folder / name).symlink_to(Path(path).resolve())
    (data / "config.json").write_text(json.dumps({"sd_model_checkpoint": checkpoint.name, **config}))

    port = free_port()
    log = data / "forge.log"
    cpu = "--always-cpu" if host_takes("--always-cpu") else "--cpu"
    flags = [*FORGE_FLAGS, cpu, *shlex.split(os.environ.get("FORGE_EXTRA_ARGS", "")), *(extra_flags or [])]
    cmd = [os.environ["FORGE_PYTHON"], "launch.py", *flags, "--port", str(port)]
    if host_takes("--ckpt"):
        cmd += ["--ckpt", str(checkpoint)]
    cmd += ["--data-dir", str(data), "--gradio-allowed-path", str(FORGE)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            cmd,
            cwd=FORGE,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    # A recent Neo finds a config.json without its VERSION_UID and waits for Enter once before it goes on.
    process.stdin.write(b"\n")
    process.stdin.close()
    server = Webui(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = started + START_TIMEOUT
        while READY not in log.read_text(errors="replace"):
            if process.poll() is not None:
                pytest.fail(f"Forge exited during start-up:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"Forge was not ready after {START_TIMEOUT:.0f} s:\n{server.log_tail()}")
            time.sleep(1)
        seconds, rss = time.monotonic() - started, rss_bytes(process.pid) / 2**30
        print(f"Forge ready in {seconds:.1f} s, RSS {rss:.2f} GiB")
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited during start-up
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def forge(tmp_path_factory) -> Iterator[Webui]:
    sys.path.insert(0, str(ROOT))
    from supir_engine.tiny import write_demo_checkpoints

    base, supir = write_demo_checkpoints(tmp_path_factory.mktemp("tiny"))
    # Live previews with a model-free decoder; small SUPIR working size for the CPU.
    config = {"show_progress_type": "Approx cheap", "supir_min_size": 64}
    # the tiny SDXL base sits beside the SUPIR weights, not among the webui's checkpoints
    supir_files = {"SUPIR-v0Q.safetensors": supir, SUPIR_BASE: base}
    yield from start_forge(tmp_path_factory, sd15_checkpoint(), supir_files, config)


def choose_base(forge: Webui, tiny: bool) -> None:
    """Settings > SUPIR > SDXL base through POST /sdapi/v1/options: the tiny file (by its name in the SUPIR
    models folder) or the loaded checkpoint."""
    value = SUPIR_BASE if tiny else "Loaded checkpoint (when SDXL)"
    forge.call("/sdapi/v1/options", {"supir_sdxl_base": value})


@pytest.fixture
def with_base(forge: Webui) -> Webui:
    choose_base(forge, tiny=True)
    assert forge.call("/supir/v1/models")["sdxl_problem"] in (None, "")
    return forge


def lanczos(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize(size, resample=Image.LANCZOS), dtype=np.int16)


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_extension_loads_before_the_first_generation(forge):
    """Scripts, Upscaler entries, routes and Settings, while Forge still holds its FakeInitialModel."""
    scripts = forge.call("/sdapi/v1/scripts")
    assert "supir" in scripts["txt2img"] and "supir" in scripts["img2img"]
    upscalers = [u["name"] for u in forge.call("/sdapi/v1/upscalers")]
    assert "SUPIR-v0Q" in upscalers and "SUPIR-v0F" not in upscalers
    models = forge.call("/supir/v1/models")
    assert [m["name"] for m in models["models"]] == ["SUPIR-v0Q"] and models["missing"] == ["SUPIR-v0F"]
    if os.environ.get("FORGE_HOST"):  # the adapter the extension chose: "Forge", "Forge Neo" or "reForge"
        assert models["host"] == os.environ["FORGE_HOST"], models["host"]
    # SD 1.5 is selected but not loaded yet: no verdict on Forge's placeholder model ("(unknown)")
    assert "(unknown)" not in (models["sdxl_problem"] or ""), models["sdxl_problem"]
    assert [a["name"] for a in forge.call("/supir/v1/args")][0] == "enabled"
    # Settings: Forge's GET /sdapi/v1/options may not list extension keys; POST must take them
    forge.call("/sdapi/v1/options", {"supir_min_size": 64, "supir_upscaler_steps": 2})
    choose_base(forge, tiny=True)
    assert forge.call("/supir/v1/models")["sdxl_problem"] in (None, "")  # the POSTed base is in use


def test_txt2img_with_supir_postprocess(with_base):
    forge = with_base
    before = loaded_checkpoint(forge)
    result = txt2img(forge, supir_args(forge, seed=5), batch_size=2)
    images = [decode(i) for i in result["images"]]
    infotexts = json.loads(result["info"])["infotexts"]
    assert [i.size for i in images] == [(128, 128), (128, 128)], infotexts[0]
    assert all("SUPIR model: SUPIR-v0Q" in t and "SUPIR scale: 2.0" in t for t in infotexts), infotexts[0]
    assert "SUPIR seed: 5" in infotexts[0]
    assert loaded_checkpoint(forge) == before
    # Forge still generates afterwards, on its own model
    assert decode(txt2img(forge, None)["images"][0]).size == (64, 64)


def test_img2img_skip_matches_the_supir_route(with_base):
    forge = with_base
    source = noise_image(48, 40, 3)
    args = supir_args(forge, skip_img2img=True, prompt_source="None", seed=9)
    result = forge.call(
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
    assert via_img2img.size == (96, 80), json.loads(result["info"])["infotexts"][0]
    direct = forge.call(
        "/supir/v1/upscale",
        {"image": encode(source), "args": {"steps": 2, "s_churn": 0.0, "seed": 9, "prompt_source": "None"}},
    )
    assert direct["output_size"] == [96, 80] and "SUPIR seed: 9" in direct["infotext"]
    assert np.array_equal(np.asarray(via_img2img), np.asarray(decode(direct["image"]).convert("RGB")))


def test_supir_route(with_base):
    forge = with_base
    result = forge.call(
        "/supir/v1/upscale",
        {"image": encode(noise_image(32, 24, 4)), "args": {"steps": 2, "seed": 3, "scale": 2}},
    )
    assert result["output_size"] == [64, 48] and decode(result["image"]).size == (64, 48)
    assert "SUPIR model: SUPIR-v0Q" in result["infotext"] and "SUPIR steps: 2" in result["infotext"]


def test_supir_as_extras_upscaler_is_supirs_result(with_base):
    forge = with_base
    source = noise_image(40, 32, 5)
    result = forge.call(
        "/sdapi/v1/extra-single-image",
        {"image": encode(source), "upscaler_1": "SUPIR-v0Q", "upscaling_resize": 2},
    )
    image = decode(result["image"]).convert("RGB")
    assert image.size == (80, 64), result.get("html_info")
    # Forge's fallback when an upscaler returns its input is a Lanczos resize: SUPIR's result is not that
    difference = np.abs(np.asarray(image, dtype=np.int16) - lanczos(source, (80, 64))).mean()
    assert difference > 4, f"the output is the plain resize (mean difference {difference:.2f})"
    assert forge.call("/supir/v1/status")["cache"]["model_loaded"]


def test_failed_supir_upscaler_is_not_passed_off_as_supir(forge):
    """No usable base (SD 1.5 loaded, 'Loaded checkpoint'): Extras must not label a resize as SUPIR's."""
    choose_base(forge, tiny=False)
    source = noise_image(40, 32, 6)
    try:
        result = forge.call(
            "/sdapi/v1/extra-single-image",
            {"image": encode(source), "upscaler_1": "SUPIR-v0Q", "upscaling_resize": 2},
        )
    except HTTPStatusError as refused:  # an error answer is honest
        assert b"SDXL" in refused.body, refused
        return
    finally:
        choose_base(forge, tiny=True)
    image = decode(result["image"]).convert("RGB")
    plain = np.abs(np.asarray(image, dtype=np.int16) - lanczos(source, image.size)).mean() < 1
    info = result.get("html_info") or ""
    says_so = any(word in info for word in ("SUPIR error", "failed", "Lanczos"))
    assert not (plain and "SUPIR-v0Q" in info and not says_so), info


def test_extras_with_supir_in_the_browser(with_base, tmp_path):
    """Extras, single image, the SUPIR accordion opened: the result is 2x, with SUPIR's parameters."""
    from .test_real_webui import webui_page

    source = tmp_path / "small.png"
    noise_image(24, 16, 1).save(source)
    with webui_page(with_base) as page:
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
        loaded = f"{gallery}.length && {gallery}.every(i => i.complete && i.naturalWidth)"
        page.wait_for_function(f"() => {loaded}")
        sizes = page.evaluate(f"() => {gallery}.map(i => [i.naturalWidth, i.naturalHeight])")
    assert "SUPIR model: SUPIR-v0Q" in text and "SUPIR steps: 2" in text
    assert sizes and all(size == [48, 32] for size in sizes)


def test_before_after_button_after_a_generation_in_the_browser(with_base):
    """txt2img from the page with the SUPIR accordion open; the before/after toggle shows on the result."""
    from .test_real_webui import webui_page

    with webui_page(with_base) as page:
        page.fill("#txt2img_prompt textarea", "a red apple")
        for name, value in (("width", "64"), ("height", "64"), ("steps", "1"), ("batch_size", "1")):
            page.fill(f"#txt2img_{name} input[type=number]", value)
            page.press(f"#txt2img_{name} input[type=number]", "Enter")
        page.locator("#script_txt2img_supir_enable .label-wrap").first.click()
        page.locator("#script_txt2img_supir_advanced .label-wrap").first.click()
        page.fill("#script_txt2img_supir_steps input[type=number]", "2")
        page.press("#script_txt2img_supir_steps input[type=number]", "Enter")
        page.click("#txt2img_generate")
        info = "document.querySelector('#generation_info_txt2img textarea')"
        page.wait_for_function(f"() => {info}?.value.includes('SUPIR seed')", timeout=300_000)
        toggle = page.locator("#txt2img_gallery .supir-compare-toggle")
        toggle.wait_for(state="visible", timeout=30_000)
        toggle.click()
        page.locator("#txt2img_gallery .supir-compare").wait_for(state="visible", timeout=30_000)
        page.wait_for_function(
            "() => document.querySelector('#txt2img_gallery .supir-compare img')?.naturalWidth > 0"
        )
        before = page.locator("#txt2img_gallery .supir-compare img")
        assert before.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [64, 64]  # as generated


def test_progress_and_interrupt(with_base):
    forge = with_base
    before = loaded_checkpoint(forge)
    outcome: dict = {}

    def run() -> None:
        outcome["result"] = txt2img(forge, supir_args(forge, steps=200))

    worker = threading.Thread(target=run)
    worker.start()
    seen = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        progress = forge.call("/sdapi/v1/progress?skip_current_image=true")
        state = progress["state"]
        seen.append((state.get("job"), state.get("sampling_step"), progress.get("textinfo")))
        if "SUPIR" in str(state.get("job")) and state.get("sampling_step", 0) >= 2:
            break
        time.sleep(0.5)
    forge.call("/sdapi/v1/interrupt", {})
    worker.join(300)
    assert not worker.is_alive()
    assert any("sampling step" in str(s[2]) for s in seen), seen[-5:]
    assert decode(outcome["result"]["images"][0]).size == (64, 64)  # the generated image, kept
    assert "SUPIR error: " in json.loads(outcome["result"]["info"])["infotexts"][0]
    assert loaded_checkpoint(forge) == before
    assert forge.call("/supir/v1/status")["busy"] is False
    assert decode(txt2img(forge, supir_args(forge))["images"][0]).size == (128, 128)  # SUPIR works again
