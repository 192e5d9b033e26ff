"""The accordion's tile prompts: the textbox (an argument) and a preview of the tile grid (not one)."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from supir_engine.app_tiles import TILE_PROMPTS_INFO, TILE_PROMPTS_LABEL, tile_grid_text
from supir_engine.regions import grid_for_image, read_tile_prompts
from supir_engine.tile_preview import draw_tile_grid

from .args import SupirArgs


def tile_grid_preview(width: float, height: float, scale: float, text: str) -> tuple[Image.Image, str]:
    """The grid for an input of ``width`` x ``height`` at ``scale`` with the Settings' tiles, drawn on a
    plain canvas, and each tile's caption."""
    from .runner import base_settings

    try:
        settings = base_settings().replace(
            scale=float(scale), tile_prompts=read_tile_prompts(str(text or ""))
        )
        size = (int(width), int(height))
        if min(size) < 1:
            raise ValueError(f"the input size must be positive, got {size[0]}x{size[1]}")
    except ValueError as exc:
        raise gr.Error(f"SUPIR tile grid: {exc}") from exc
    grid = grid_for_image(size, settings)
    canvas = Image.new("RGB", size, (96, 96, 96))
    return draw_tile_grid(canvas, grid), tile_grid_text(grid, settings.tile_prompts)


def tile_prompt_components(c: dict[str, Any], defaults: SupirArgs, elem_id) -> None:
    """The tile prompts textbox (``c["tile_prompts"]``) and its preview, inside the current block."""
    with gr.Accordion("SUPIR tile prompts", open=False, elem_id=elem_id("tiles")):
        c["tile_prompts"] = gr.Textbox(
            value=defaults.tile_prompts,
            label=TILE_PROMPTS_LABEL,
            info=TILE_PROMPTS_INFO + " Tiles come from Settings > SUPIR (sampler tile size).",
            lines=3,
            elem_id=elem_id("tile_prompts"),
        )
        with gr.Row():
            width = gr.Number(value=1024, precision=0, label="Input width", elem_id=elem_id("tiles_width"))
            height = gr.Number(value=1024, precision=0, label="Input height", elem_id=elem_id("tiles_height"))
            show = gr.Button("Show tile grid", elem_id=elem_id("show_tiles"))
        picture = gr.Image(label="Tile grid", type="pil", interactive=False, elem_id=elem_id("tile_preview"))
        text = gr.Markdown(elem_id=elem_id("tile_text"))
    show.click(
        tile_grid_preview, inputs=[width, height, c["scale"], c["tile_prompts"]], outputs=[picture, text]
    )
