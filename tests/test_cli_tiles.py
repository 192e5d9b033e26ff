"""The CLI's regional prompts: --tile-prompt, --tile-prompts FILE, --show-tiles."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from supir_engine.cli import build_parser, main, settings_from_args
from supir_engine.errors import SupirError
from supir_engine.regions import TILE_PROMPTS_KEY, read_tile_prompts
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


# 40x32 -> 64x64 output, latent 8x8; tiles of 4 with stride 2: a 3 x 3 grid.
FAST = [
    "--min-size",
    "32",
    "--steps",
    "2",
    "--dtype",
    "fp32",
    "--seed",
    "7",
    "--tile-size",
    "4",
    "--tile-stride",
    "2",
]


def _settings(*flags):
    return settings_from_args(build_parser().parse_args(["upscale", "x.png", *flags]))


def test_file_lines_then_addressed_flags(tmp_path):
    prompts = tmp_path / "tiles.txt"
    prompts.write_text("sky\n\nsea\n\n", encoding="utf-8")
    settings = _settings(
        "--tile-prompts", str(prompts), "--tile-prompt", "2,1: a boat", "--tile-prompt", "1,2: gull"
    )
    assert settings.tile_prompts == ("sky", "", "sea", "2,1: a boat", "1,2: gull")
    assert _settings().tile_prompts == ()


def test_unaddressed_tile_prompt_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(SupirError, match="names no tile: write 'row,col: text'"):
        _settings("--tile-prompt", "a boat")
    with pytest.raises(SupirError, match="cannot read --tile-prompts"):
        _settings("--tile-prompts", str(tmp_path / "missing.txt"))
    with pytest.raises(SupirError, match="count from 1"):
        _settings("--tile-prompt", "0,1: a boat")


def test_show_tiles_prints_the_grid_and_writes_a_preview(tmp_path, capsys):
    src = write_image(tmp_path / "photo.png")
    out = tmp_path / "out.png"
    flags = ["upscale", str(src), "-o", str(out), "--models-dir", str(tmp_path / "none"), *FAST]
    assert (
        main([*flags, "--tile-prompt", "3,3: corner", "--tile-prompt", "4,1: outside", "--show-tiles"]) == 0
    )
    printed = capsys.readouterr().out
    assert "3 x 3 = 9 tiles over 64x64 px (tile 32 px, stride 16 px)" in printed
    assert "tile 9 (3,3) x 32-64, y 32-64: 'corner'" in printed
    assert "tile 1 (1,1) x 0-32, y 0-32: (caption)" in printed
    assert "tile prompt 4,1 ignored: the grid has 3 row(s) and 3 column(s)" in printed
    assert Image.open(tmp_path / "out.tiles.png").size == (64, 64)
    assert not out.exists()


def test_upscale_writes_tile_prompts_in_the_infotext(tmp_path, models_dir, caplog):
    src = write_image(tmp_path / "photo.png")
    prompts = tmp_path / "tiles.txt"
    prompts.write_text("\n".join(f"tile {i}" for i in range(11)), encoding="utf-8")
    out = tmp_path / "result.png"
    with caplog.at_level(logging.INFO):
        code = main(["upscale", str(src), "-o", str(out), "--models-dir", str(models_dir), *FAST,
                     "--tile-prompts", str(prompts)])  # fmt: skip
    assert code == 0
    assert "2 tile prompt line(s) ignored: the grid has only 9 tile(s) (3 x 3)" in caplog.text
    text = Image.open(out).text["parameters"]
    value = text.split(f"{TILE_PROMPTS_KEY}: ", 1)[1]
    import json

    entries = read_tile_prompts(json.JSONDecoder().raw_decode(value)[0])
    assert entries == tuple(f"tile {i}" for i in range(11))
