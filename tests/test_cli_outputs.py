"""The CLI's batch behaviour: output names, formats, checks before the models load, progress, alpha,
``check`` defaults, a fast ``--help``, SDXL files of any name."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from supir_engine import cli
from supir_engine.alpha import keep_alpha
from supir_engine.cli import main
from supir_engine.model_files import find_sdxl
from supir_engine.output_names import plan_outputs
from supir_engine.progress import RunProgress, TqdmHost
from supir_engine.tiny import random_state_dict, save_checkpoint, split_state_dict
from supir_engine.upscale_io import read_user_comment

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--min-size", "32", "--steps", "2", "--dtype", "fp32", "--seed", "7"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("SUPIR")
    sdxl, supir = split_state_dict(random_state_dict(seed=5))
    save_checkpoint(sdxl, folder / "sd_xl_base_1.0.safetensors")
    save_checkpoint(supir, folder / "SUPIR-v0Q.ckpt")
    return folder


def write_image(path: Path, size=(40, 32), mode="RGB") -> Path:
    rng = np.random.default_rng(0)
    channels = len(mode)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8).squeeze(), mode).save(
        path
    )
    return path


def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr(cli, "load_pipeline", refuse)


# ------------------------------------------------------------------------------------------ names (10)


def test_same_stem_inputs_get_distinct_names_with_the_real_factor(tmp_path, models_dir):
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "a.png")
    out = tmp_path / "out"
    args = ["upscale", str(tmp_path / "a.jpg"), str(tmp_path / "a.png"), "-o", str(out)]
    assert main([*args, "--models-dir", str(models_dir), *FAST]) == 0
    factor = round(math.sqrt(64 * 64 / (40 * 32)), 2)  # 40x32 -> 64x64 (min size 32, alignment 32)
    expected = [f"a_jpg_SUPIR_x{factor:g}.png", f"a_png_SUPIR_x{factor:g}.png"]
    assert sorted(p.name for p in out.iterdir()) == expected


def test_rerun_keeps_earlier_results_unless_overwrite(tmp_path, models_dir):
    src = write_image(tmp_path / "p.png")
    out = tmp_path / "result.png"
    common = ["upscale", str(src), "-o", str(out), "--models-dir", str(models_dir), *FAST]
    assert main(common) == 0
    first = out.read_bytes()
    assert main([*common, "--seed", "8"]) == 0
    assert out.read_bytes() == first
    second = tmp_path / "result-1.png"
    assert second.exists() and second.read_bytes() != first
    assert main([*common, "--seed", "8", "--overwrite"]) == 0
    assert out.read_bytes() == second.read_bytes()
    results = sorted(p.name for p in tmp_path.iterdir() if p.stem.startswith("result"))
    assert results == ["result-1.png", "result.png"]


def test_output_file_with_several_inputs_is_an_error(tmp_path, models_dir, capsys, monkeypatch):
    no_model_load(monkeypatch)
    a, b = write_image(tmp_path / "a.png"), write_image(tmp_path / "b.png")
    out = tmp_path / "result.png"
    assert main(["upscale", str(a), str(b), "-o", str(out), "--models-dir", str(models_dir), *FAST]) == 2
    assert "names one file but 2 images were given" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("name", "fmt"), [("out.jpg", "JPEG"), ("out.webp", "WEBP")])
def test_output_extension_picks_the_format_and_keeps_the_infotext(tmp_path, models_dir, name, fmt):
    src = write_image(tmp_path / "p.png")
    out = tmp_path / name
    assert main(["upscale", str(src), "-o", str(out), "--models-dir", str(models_dir), *FAST]) == 0
    with Image.open(out) as image:
        assert image.format == fmt
        comment = read_user_comment(image)
    # The EXIF UserComment as piexif's "unicode" encoding writes it: the character code, UTF-16 big-endian.
    raw = Image.open(out).getexif().get_ifd(0x8769)[0x9286]
    assert raw[:8] == b"UNICODE\0" and raw[8:].decode("utf-16-be") == comment
    params = dict(item.split(": ", 1) for item in comment.split(", SUPIR ")[1:])
    assert comment.startswith("SUPIR scale: 2.0") and params["steps"] == "2" and params["seed"] == "7"


def test_unknown_output_extension_is_refused(tmp_path, models_dir, capsys, monkeypatch):
    no_model_load(monkeypatch)
    src = write_image(tmp_path / "p.png")
    assert main(["upscale", str(src), "-o", str(tmp_path / "x.bmp"), *FAST]) == 2
    assert "give the output file one of these extensions" in capsys.readouterr().err


def test_plan_outputs_numbers_names_taken_on_disk_and_in_the_batch(tmp_path):
    (tmp_path / "c_SUPIR_x2.png").write_bytes(b"")
    sources = [Path("x/a.png"), Path("y/a.png"), Path("c.tif")]
    names = [t.path.name for t in plan_outputs(sources, [2, 2, 2], tmp_path)]
    assert names == ["a_png_SUPIR_x2.png", "a_png_2_SUPIR_x2.png", "c_SUPIR_x2-1.png"]
    skipped = plan_outputs(sources[2:], [2], tmp_path, skip_existing=True)
    assert skipped[0].skip and skipped[0].path.name == "c_SUPIR_x2.png"


# ---------------------------------------------------------------------------------- checks first (11, 12)


def test_unwritable_output_fails_before_the_models_load(tmp_path, models_dir, capsys, monkeypatch):
    no_model_load(monkeypatch)
    src = write_image(tmp_path / "p.png")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    args = ["upscale", str(src), "-o", str(blocker / "out"), "--models-dir", str(models_dir)]
    assert main([*args, *FAST]) == 2
    err = capsys.readouterr().err
    assert "cannot write results to" in err and "Traceback" not in err


def test_unreadable_inputs_are_found_before_the_models_load(tmp_path, models_dir, capsys, monkeypatch):
    no_model_load(monkeypatch)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    assert main(["upscale", str(tmp_path / "broken.png"), "--models-dir", str(models_dir), *FAST]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "none of the inputs can be upscaled" in err


def test_one_bad_input_is_reported_and_the_rest_go_on(tmp_path, models_dir, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_image(inputs / "good.png")
    (inputs / "bad.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    args = ["upscale", str(inputs), str(tmp_path / "missing.png"), "-o", str(out)]
    assert main([*args, "--models-dir", str(models_dir), *FAST]) == 1
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "missing.png" in err and "2 image(s) failed" in err
    assert [p.name.split("_SUPIR")[0] for p in out.iterdir()] == ["good"]


def test_a_failed_write_is_reported_and_the_batch_goes_on(tmp_path, models_dir, capsys, monkeypatch):
    from supir_engine import upscale_io

    real = upscale_io.save_image
    calls = []

    def flaky(image, result, path, model_name=None):
        calls.append(path)
        if len(calls) == 1:
            raise PermissionError(13, "Permission denied", str(path))
        return real(image, result, path, model_name)

    monkeypatch.setattr(upscale_io, "save_image", flaky)
    a, b = write_image(tmp_path / "a.png"), write_image(tmp_path / "b.png")
    out = tmp_path / "out"
    assert main(["upscale", str(a), str(b), "-o", str(out), "--models-dir", str(models_dir), *FAST]) == 1
    err = capsys.readouterr().err
    assert "Permission denied" in err and "Traceback" not in err
    assert [p.name.split("_SUPIR")[0] for p in out.iterdir()] == ["b"]


# ------------------------------------------------------------------------------------------ progress (13)


def test_run_progress_covers_every_stage_with_time_left():
    now = [0.0]
    run = RunProgress(steps=4, clock=lambda: now[0])
    seen = []
    for stage, step, total in [("stage1", 0, 1), ("stage1", 1, 1), ("text", 0, 1), ("text", 1, 1)]:
        now[0] += 1
        seen.append(run.update(stage, step, total))
    for step in range(5):
        now[0] += 1
        seen.append(run.update("sampling", step, 4))
    seen += [run.update("decode", 0, 1), run.update("decode", 1, 1)]
    assert seen == sorted(seen) and seen[0] == 0 and seen[-1] == run.total
    assert seen[1] > 0  # stage 1 moves the bar
    run2 = RunProgress(steps=4, clock=lambda: now[0])
    run2.update("stage1", 0, 1)
    now[0] += 10
    run2.update("stage1", 1, 1)  # 10 s for stage 1's units
    left = run2.seconds_left()
    assert left == pytest.approx(10 / run2.done * (run2.total - run2.done))
    assert "left" in run2.describe()


def test_cached_stage1_leaves_the_total():
    run = RunProgress(steps=4)
    full = run.total
    run.update("text", 0, 1)
    assert run.done == 0 and run.total < full


def test_tqdm_host_uses_one_bar_for_all_stages(monkeypatch):
    from supir_engine import progress

    bars = []

    class Recorder:
        def __init__(self, **kwargs):
            self.total, self.n, self.positions = kwargs["total"], 0, []
            bars.append(self)

        def set_description_str(self, text, refresh=True):
            self.description = text

        def refresh(self):
            self.positions.append(self.n)

        def close(self):
            pass

    monkeypatch.setattr(progress, "tqdm", Recorder)
    host = TqdmHost("x.png", steps=2)
    for call in [("stage1", 0, 1), ("stage1", 1, 1), ("text", 1, 1), ("sampling", 1, 2), ("sampling", 2, 2)]:
        host.progress(*call)
    host.progress("decode", 1, 1)
    host.release_device()
    assert len(bars) == 1
    assert bars[0].positions == sorted(bars[0].positions) and bars[0].positions[-1] == bars[0].total


# ------------------------------------------------------------------------------------------ (15)


def test_rgba_input_keeps_its_alpha(tmp_path, models_dir):
    src = tmp_path / "logo.png"
    rgba = Image.new("RGBA", (40, 32), (200, 10, 10, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 20, 32))  # left half transparent
    rgba.save(src)
    out = tmp_path / "logo_out.png"
    assert main(["upscale", str(src), "-o", str(out), "--models-dir", str(models_dir), *FAST]) == 0
    with Image.open(out) as image:
        assert image.mode == "RGBA"
        alpha = np.asarray(image.getchannel("A"))
    assert alpha[:, :5].max() == 0 and alpha[:, -5:].min() == 255


def test_keep_alpha_handles_palette_transparency():
    source = Image.new("P", (8, 8), 1)
    source.info["transparency"] = 1
    result = keep_alpha(source, Image.new("RGB", (16, 16), (1, 2, 3)))
    assert result.mode == "RGBA" and np.asarray(result.getchannel("A")).max() == 0
    opaque = Image.new("RGB", (16, 16))
    assert keep_alpha(Image.new("RGB", (8, 8)), opaque) is opaque


def test_demo_says_the_output_is_noise(tmp_path, capsys):
    args = ["upscale", "--demo", "-o", str(tmp_path / "demo.png"), "--steps", "1", "--min-size", "32"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "RANDOM weights" in err and "noise" in err


def test_check_without_paths_looks_in_the_models_folder(models_dir, capsys, monkeypatch):
    monkeypatch.setenv("SUPIR_MODELS_DIR", str(models_dir))
    assert main(["check", "--dtype", "fp32"]) == 0
    assert "SUPIR control model" in capsys.readouterr().out


def test_help_is_fast_and_shows_defaults():
    code = (
        "import sys; from supir_engine.cli import build_parser; p = build_parser(); "
        "sub = p._subparsers._group_actions[0].choices; print(sub['upscale'].format_help()); "
        "print('torch loaded' if 'torch' in sys.modules else 'no torch')"
    )
    env_path = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=120,
    ).stdout
    assert out.strip().endswith("no torch")
    assert "(default: auto)" in out and "(default: quality)" in out and "quality preset: 50" in out


def test_sdxl_base_of_any_name_is_found_by_its_header(tmp_path):
    sdxl, supir = split_state_dict(random_state_dict(seed=2))
    save_checkpoint(supir, tmp_path / "SUPIR-v0Q.safetensors")
    sd15 = {k: v for k, v in sdxl.items() if "label_emb" not in k}
    save_checkpoint(sd15, tmp_path / "aaa_sd15.safetensors")
    base = save_checkpoint(sdxl, tmp_path / "realvisxlV40.safetensors")
    assert find_sdxl(tmp_path, exclude=tmp_path / "SUPIR-v0Q.safetensors") == base


def test_front_end_choices_match_the_engine():
    from supir_engine import device_policy
    from supir_engine.choices import MEMORY_POLICIES, PRECISIONS, STORAGE_DTYPE_NAMES
    from supir_engine.memory import POLICIES, STORAGE_DTYPES

    assert tuple(MEMORY_POLICIES) == tuple(POLICIES)
    assert sorted(STORAGE_DTYPE_NAMES) == sorted(STORAGE_DTYPES)
    assert tuple(PRECISIONS) == tuple(device_policy.PRECISIONS)
