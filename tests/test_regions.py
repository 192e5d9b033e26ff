"""Regional (per-tile) prompts: the grid, which tile gets which caption, the pipeline's conditionings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from PIL import Image
from safetensors.torch import load_file, save_file

import supir_engine.pipeline as pipeline_module
from supir_engine.checkpoints import LoadOptions, load_supir
from supir_engine.infotext import from_infotext, infotext_line, to_infotext
from supir_engine.pipeline import SUPIRPipeline
from supir_engine.regions import (
    TILE_PROMPTS_KEY,
    assign_captions,
    grid_for_image,
    grid_for_output,
    prompt_lines,
    read_tile_prompts,
)
from supir_engine.sampling import Conditioning, GuidedConditioning, SamplerSettings, sample_restore_edm
from supir_engine.settings import UpscaleSettings
from supir_engine.tile_preview import draw_tile_grid

# ------------------------------------------------------------------------------------------ the grid


@pytest.mark.parametrize(("hw", "tile"), [((96, 128), (8, 4)), ((136, 200), (10, 7)), ((64, 64), (16, 8))])
def test_grid_matches_the_tiles_the_sampler_runs(hw, tile):
    grid = grid_for_output(hw, tile)
    h, w = hw[0] // 8, hw[1] // 8
    control = torch.zeros(1, 4, h, w)
    text = Conditioning(torch.zeros(1, 3, 2), torch.zeros(1, 2), control)
    seen = []
    sample_restore_edm(
        lambda x, sigma, cond, scale: torch.zeros_like(x),
        torch.zeros(1, 4, h, w),
        [1.0, 0.0],
        GuidedConditioning(text, text),
        SamplerSettings(tile_size=tile[0], tile_stride=tile[1]),
        tile_callback=lambda info: seen.append(info.window),
    )
    assert grid.windows() == seen
    assert grid.rows * grid.cols == grid.count == len(seen)
    assert grid.output_size == (hw[1], hw[0])
    # rows run top to bottom, columns left to right
    assert grid.boxes[0][:2] == (0, 0) and grid.boxes[-1][2:] == (hw[1], hw[0])
    if grid.rows > 1:
        assert grid.boxes[grid.cols][1] > 0 and grid.boxes[grid.cols][0] == 0


def test_untiled_grid_is_one_tile_and_settings_pick_the_output_size():
    settings = UpscaleSettings(scale=2, min_size=64)
    grid = grid_for_image((40, 30), settings)
    assert (grid.rows, grid.cols, grid.tile) == (1, 1, None)
    assert grid.boxes == ((0, 0, 96, 64),)  # 80x60 rounded to 32: 96x64
    tiled = grid_for_image((40, 30), settings.replace(tile_size=8, tile_stride=4))
    assert (tiled.rows, tiled.cols, tiled.tile) == (1, 2, (8, 4))


# ------------------------------------------------------------------------------------------ captions


def _grid(rows: int, cols: int):
    grid = grid_for_output((8 * (4 + 4 * (rows - 1)), 8 * (4 + 4 * (cols - 1))), (4, 4))
    assert (grid.rows, grid.cols) == (rows, cols)
    return grid


def test_lines_fill_tiles_row_major_and_addressed_lines_win():
    grid = _grid(2, 3)
    captions = assign_captions(("sky", "", "tree", "2,3: a red door", "water"), grid)
    assert captions.captions == ("sky", None, "tree", "water", None, "a red door")
    assert captions.regional
    assert captions.notes == ("2 of 6 tile(s) have no tile prompt line and use the global caption",)


def test_extra_lines_are_ignored_with_a_note():
    grid = _grid(1, 2)
    captions = assign_captions(("a", "b", "c", "3,1: d"), grid)
    assert captions.captions == ("a", "b")
    assert "1 tile prompt line(s) ignored: the grid has only 2 tile(s) (1 x 2)" in captions.notes
    assert "tile prompt 3,1 ignored: the grid has 1 row(s) and 2 column(s)" in captions.notes


def test_prompt_lines_from_text_and_lists():
    assert prompt_lines("a\n\nb\n\n") == ("a", "", "b")
    assert prompt_lines(["a", "1,2: b\nc"]) == ("a", "1,2: b", "c")
    assert prompt_lines(None) == ()
    with pytest.raises(ValueError, match="must be text"):
        prompt_lines(["a", 3])


def test_settings_check_tile_prompts():
    assert UpscaleSettings(tile_prompts=["a", "b"]).tile_prompts == ("a", "b")
    with pytest.raises(ValueError, match="count from 1"):
        UpscaleSettings(tile_prompts=("0,1: x",))
    with pytest.raises(ValueError, match="list of strings"):
        UpscaleSettings(tile_prompts="a")


def test_infotext_round_trip_and_hand_typed_lines():
    settings = UpscaleSettings(tile_prompts=("a, b: c", "", '2,1: "quoted"'))
    params = to_infotext(settings)
    assert json.loads(json.loads(params[TILE_PROMPTS_KEY])) == list(settings.tile_prompts)
    assert from_infotext(params).tile_prompts == settings.tile_prompts
    assert TILE_PROMPTS_KEY not in to_infotext(UpscaleSettings())  # written only when used
    assert TILE_PROMPTS_KEY in infotext_line(params)
    assert read_tile_prompts("one\n1,2: two") == ("one", "1,2: two")


def test_preview_draws_numbered_tiles_over_the_output_shape():
    grid = grid_for_output((96, 128), (8, 4))
    base = Image.new("RGB", (64, 48), (128, 128, 128))
    picture = draw_tile_grid(base, grid)
    assert picture.size == (128, 96)
    pixels = np.asarray(picture)
    assert (pixels != 128).any(axis=-1).sum() > 0
    assert tuple(pixels[0, 0]) != (128, 128, 128)  # tile 1's outline in the corner
    small = draw_tile_grid(base, grid, max_side=64)
    assert small.size == (64, 48)


# ------------------------------------------------------------------------------------------ the pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> SUPIRPipeline:
    weights = load_file(str(FIXTURES / "tiny_model.safetensors"))
    weights.update(load_file(str(FIXTURES / "tiny_text_encoders.safetensors")))
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    path = tmp_path_factory.mktemp("models") / "tiny_merged.safetensors"
    save_file(weights, str(path))
    heads = json.loads((FIXTURES / "tiny_model.json").read_text())["config"]["params"]["network_config"]
    options = LoadOptions(
        dtype=torch.float32,
        num_head_channels=heads["params"]["num_head_channels"],
        clip_l_heads=2,
        bigg_heads=2,
    )
    model, _ = load_supir(path, None, options)
    return SUPIRPipeline(model, "cpu")


def _image() -> Image.Image:
    y, x = np.mgrid[0:64, 0:64] / 64
    return Image.fromarray((np.stack([x, y, x * y], axis=-1) * 255).astype(np.uint8))


TILED = UpscaleSettings(scale=2, min_size=64, steps=1, seed=5, s_churn=0.0, tile_size=8, tile_stride=4)


def _captured(pipeline, monkeypatch, settings):
    """(conditioning handed to the sampler, sampler settings, result) of one run, sampling skipped."""
    seen = {}

    def fake_restore(
        denoiser, sampler, initial, guided, sampler_settings, steps, noise, callback=None, start=None
    ):
        seen["guided"], seen["settings"] = guided, sampler_settings
        return initial

    monkeypatch.setattr(pipeline_module, "restore_latent", fake_restore)
    result = pipeline.upscale(_image(), settings)
    return seen["guided"], seen["settings"], result


def test_a_tile_prompt_changes_only_its_tiles_conditioning(pipeline, monkeypatch):
    plain, _, _ = _captured(pipeline, monkeypatch, TILED)
    regional, sampler, result = _captured(
        pipeline, monkeypatch, TILED.replace(tile_prompts=("", "a red car"))
    )
    grid = grid_for_output((128, 128), (8, 4))
    assert (
        isinstance(plain.cond, Conditioning) and regional.per_tile and len(regional.cond) == grid.count == 9
    )
    for j, cond in enumerate(regional.cond):
        same = torch.equal(cond.crossattn, plain.cond.crossattn) and torch.equal(
            cond.vector, plain.cond.vector
        )
        assert same == (j != 1), j
        assert torch.equal(cond.control, plain.cond.control)
    assert torch.equal(regional.uncond.crossattn, plain.uncond.crossattn)
    assert (sampler.tile_size, sampler.tile_stride) == (8, 4)
    assert result.settings.tile_prompts == ("", "a red car")
    assert "7 of 9 tile(s) have no tile prompt line and use the global caption" in result.notes


def test_a_tile_prompt_equal_to_the_caption_changes_nothing(pipeline, monkeypatch):
    settings = TILED.replace(caption="a house")
    plain, _, _ = _captured(pipeline, monkeypatch, settings)
    same, _, _ = _captured(pipeline, monkeypatch, settings.replace(tile_prompts=("a house", "1,3: a house")))
    assert all(c is same.cond[0] for c in same.cond)
    assert torch.equal(same.cond[0].crossattn, plain.cond.crossattn)


def test_pipeline_grid_is_the_run_grid(pipeline, monkeypatch):
    _, sampler, _ = _captured(pipeline, monkeypatch, TILED)
    grid = pipeline.tile_grid(_image().size, TILED)
    assert grid.tile == (sampler.tile_size, sampler.tile_stride) and grid.output_size == (128, 128)
    assert pipeline.tile_grid(_image().size, TILED.replace(tile_size=None, tile_stride=None)).count == 1


def test_regional_run_samples_end_to_end(pipeline):
    regional = pipeline.upscale(_image(), TILED.replace(steps=2, tile_prompts=("a red car",)))
    plain = pipeline.upscale(_image(), TILED.replace(steps=2))
    assert regional.image.size == plain.image.size == (128, 128)
    assert not np.array_equal(np.asarray(regional.image), np.asarray(plain.image))
