"""Tile prompts in the webui: the last argument, the API's list, infotext and paste, the grid preview."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from sd_webui_supir.args import (
    ARG_NAMES,
    DERIVED_FIELDS,
    ArgumentError,
    SupirArgs,
    from_mapping,
    from_values,
    infotext_params,
    to_settings,
)
from supir_engine.regions import TILE_PROMPTS_KEY
from supir_engine.settings import UpscaleSettings


def test_tile_prompts_are_the_last_argument_and_lists_become_lines():
    index = ARG_NAMES.index("tile_prompts")
    assert index == 24
    values = [None] * index + [["sky", "", "2,1: sea"]]
    args = from_values(values)
    assert args.tile_prompts == "sky\n\n2,1: sea"
    assert to_settings(args, UpscaleSettings(), "", 1).tile_prompts == ("sky", "", "2,1: sea")
    assert to_settings(SupirArgs(), UpscaleSettings(), "", 1).tile_prompts == ()


def test_bad_tile_prompts_are_refused():
    with pytest.raises(ArgumentError, match="tile_prompts: tile rows and columns count from 1"):
        from_mapping({"tile_prompts": "0,3: x"})


def test_infotext_writes_them_and_paste_gives_lines_back():
    args = SupirArgs(tile_prompts="a, b\n1,2: c")
    settings = to_settings(args, UpscaleSettings(), "", 1)
    params = infotext_params(args, settings)
    assert params[TILE_PROMPTS_KEY] == '["a, b", "1,2: c"]'
    assert DERIVED_FIELDS["tile_prompts"](params) == "a, b\n1,2: c"
    assert DERIVED_FIELDS["tile_prompts"]({TILE_PROMPTS_KEY: '"[\\"x\\"]"'}) == "x"  # still quoted
    assert DERIVED_FIELDS["tile_prompts"]({}) is None
    assert TILE_PROMPTS_KEY not in infotext_params(
        SupirArgs(), to_settings(SupirArgs(), UpscaleSettings(), "", 1)
    )


def _png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "orange").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_api_takes_a_list_of_tile_prompts(webui):
    fastapi = pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient
    from modules import script_callbacks

    app = fastapi.FastAPI()
    script_callbacks.app_started_callback(None, app)
    api = TestClient(app)
    request = {"image": _png_b64(), "args": {"steps": 2, "s_churn": 0, "seed": 5}, "tile_prompts": ["a cat"]}
    response = api.post("/supir/v1/upscale", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["parameters"]["tile_prompts"] == ["a cat"]
    assert f'{TILE_PROMPTS_KEY}: ["a cat"]' in body["infotext"]  # the API's line leaves values unquoted
    bad = api.post("/supir/v1/upscale", json={**request, "tile_prompts": ["0,1: x"]})
    assert bad.status_code == 422 and "count from 1" in bad.json()["detail"]


def test_accordion_has_the_textbox_last_and_a_preview(webui):
    from modules import scripts

    from sd_webui_supir.tile_ui import tile_grid_preview

    script = scripts.scripts_txt2img.scripts[0]
    assert script.controls[-2].elem_id == "script_txt2img_supir_tile_prompts"  # pre_upscaler comes last
    picture, text = tile_grid_preview(512, 256, 2, "left\nright")
    assert picture.size == (1024, 512)
    assert "- 1 (1,1): left" in text or "Untiled sampling" in text
