from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from supir_engine.cli import main
from supir_engine.infotext import from_infotext, to_infotext
from supir_engine.settings import UpscaleSettings, preset
from supir_engine.tiny import random_state_dict, save_checkpoint, split_state_dict


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("SUPIR")
    sdxl, supir = split_state_dict(random_state_dict(seed=5))
    save_checkpoint(sdxl, folder / "sd_xl_base_1.0.safetensors")
    save_checkpoint(supir, folder / "SUPIR-v0Q.ckpt")
    return folder


def write_image(path, size=(40, 32)):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


FAST = ["--min-size", "32", "--steps", "2", "--dtype", "fp32", "--seed", "7"]


def test_upscale_one_image_writes_png_with_parameters(tmp_path, models_dir, capsys):
    src = write_image(tmp_path / "photo.jpg")
    out = tmp_path / "result.png"
    assert main(["upscale", str(src), "-o", str(out), "--models-dir", str(models_dir), *FAST]) == 0
    image = Image.open(out)
    assert image.size == (64, 64)  # 40x32 x2 = 80x64; 80/32 = 2.5 rounds half-to-even to 2 -> 64
    params = dict(item.split(": ", 1) for item in image.text["parameters"].split(", SUPIR ")[1:])
    assert json.loads(image.text["supir"])["seed"] == 7
    assert image.text["parameters"].startswith("SUPIR scale: 2.0")
    assert params["steps"] == "2" and params["model"] == "SUPIR-v0Q"
    err = capsys.readouterr().err
    assert "SUPIR control model" in err and "seed 7" in err and "sampling" in err


def test_folder_input_and_skip_existing(tmp_path, models_dir, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "b.png"):
        write_image(inputs / name)
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    args = ["upscale", str(inputs), "-o", str(out), "--models-dir", str(models_dir), *FAST]
    assert main(args) == 0
    # The real factor: 40x32 -> 64x64 is sqrt(4096 / 1280) = 1.79 by area.
    assert sorted(p.name for p in out.iterdir()) == ["a_SUPIR_x1.79.png", "b_SUPIR_x1.79.png"]
    (out / "b_SUPIR_x1.79.png").unlink()
    capsys.readouterr()
    assert main([*args, "--skip-existing"]) == 0
    err = capsys.readouterr().err
    assert "skipping 1 image(s) already done" in err
    assert "b.png ->" in err and "a.png ->" not in err


def test_missing_models_say_where_to_get_and_put_them(tmp_path, capsys):
    src = write_image(tmp_path / "x.png")
    assert main(["upscale", str(src), "--models-dir", str(tmp_path / "empty"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "no SUPIR-v0Q model found" in err and "github.com/Fanghua-Yu/SUPIR" in err
    assert str(tmp_path / "empty") in err


def test_bad_setting_is_a_clear_error(tmp_path, models_dir, capsys):
    src = write_image(tmp_path / "x.png")
    assert main(["upscale", str(src), "--models-dir", str(models_dir), "--sampler", "euler"]) == 2
    assert "sampler must be one of restore_edm, restore_dpmpp_2m" in capsys.readouterr().err


def test_presets_and_infotext_round_trip():
    fidelity = preset("fidelity", seed=3, tile_size=64, tile_stride=32, caption='a cat, "Tom"')
    assert (fidelity.cfg_scale, fidelity.cfg_scale_start) == (4.0, 1.0)
    assert from_infotext(to_infotext(fidelity)) == fidelity
    constant = UpscaleSettings(cfg_scale_start=None)
    assert from_infotext(to_infotext(constant)).cfg_scale_start is None
    assert UpscaleSettings(caption="a cat, ").positive_text.startswith("a cat, Cinematic")


def test_memory_policy_and_fp8_storage_flags(tmp_path, models_dir, capsys):
    src = write_image(tmp_path / "photo.png")
    common = ["upscale", str(src), "--models-dir", str(models_dir), "--min-size", "32", "--steps", "2"]
    common += ["--seed", "7"]
    plain, streamed = tmp_path / "plain.png", tmp_path / "streamed.png"
    assert main([*common, "-o", str(plain), "--dtype", "fp32"]) == 0
    assert "memory auto -> " in capsys.readouterr().err  # the default policy
    args = [*common, "-o", str(streamed), "--dtype", "fp32", "--memory", "blocks", "--vram-budget", "0.5"]
    assert main(args) == 0
    assert "memory blocks" in capsys.readouterr().err
    # Policies only move weights; on the CPU the result is the same image, bit for bit.
    assert np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(streamed)))

    fp8 = tmp_path / "fp8.png"
    assert main([*common, "-o", str(fp8), "--dtype", "fp8", "--memory", "auto"]) == 0
    assert "memory auto -> " in capsys.readouterr().err
    a = np.asarray(Image.open(plain), dtype=np.float32)
    b = np.asarray(Image.open(fp8), dtype=np.float32)
    assert a.shape == b.shape and not np.array_equal(a, b)  # really stored in fp8 ...
    assert np.abs(a - b).mean() < 1.0  # ... and the same picture within fp8 rounding (measured 0.014)

    assert main([*common, "-o", str(tmp_path / "x.png"), "--vram-budget", "0"]) == 2
    assert "--vram-budget must be a positive" in capsys.readouterr().err
