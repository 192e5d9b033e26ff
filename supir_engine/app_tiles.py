"""The web app's tile-grid preview: which sampler tile each line of the tile prompts goes to."""

from __future__ import annotations

from typing import Any

from PIL import Image

from .regions import TileGrid, assign_captions, grid_for_image, prompt_lines
from .settings import UpscaleSettings
from .tile_preview import draw_tile_grid

TILE_PROMPTS_LABEL = "Tile prompts (one line per sampler tile, row-major; 'row,col: text' names one tile)"
TILE_PROMPTS_INFO = (
    "Needs tiled sampling. An empty line, or a tile without a line, uses the caption. "
    "Press 'Show tile grid' to see which tile is which."
)


def tile_grid_text(grid: TileGrid, entries: tuple[str, ...]) -> str:
    """The grid and every tile's caption, as Markdown."""
    captions = assign_captions(entries, grid)
    lines = [f"**Tile grid:** {grid.describe()}"]
    if grid.tile is None:
        lines.append("Untiled sampling: set a sampler tile size to give tiles their own prompts.")
    for index, caption in enumerate(captions.captions):
        row, col = grid.position(index)
        lines.append(f"- {index + 1} ({row},{col}): {'(caption)' if caption is None else caption}")
    lines += [f"- note: {note}" for note in captions.notes]
    return "\n".join(lines)


def preview_tiles(
    image: Image.Image, settings: UpscaleSettings, pipeline: Any | None = None
) -> tuple[Image.Image, str]:
    """The numbered grid over ``image`` and its description; with a loaded ``pipeline`` the grid is the
    one its memory plan chooses now, else the settings' own tiles."""
    if pipeline is not None:
        grid = pipeline.tile_grid(image.size, settings)
    else:
        grid = grid_for_image(image.size, settings)
    return draw_tile_grid(image, grid), tile_grid_text(grid, settings.tile_prompts)


def tile_prompt_entries(text: Any) -> tuple[str, ...]:
    """The textbox's (or an API client's string or list) prompt entries."""
    return prompt_lines(text or None)
