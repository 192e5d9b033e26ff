"""Regional prompts: one caption per sampler tile.

The tiled samplers take one conditioning per tile (``GuidedConditioning.cond`` as a list); this module
decides which caption each tile gets. Users write prompts as lines:

* ``row,col: text`` addresses one tile by its 1-based row and column in the grid;
* any other line fills the next tile in row-major order (1,1 then 1,2 ...); an empty line keeps the
  global caption for that tile. An addressed line wins over the line that filled the same tile.

The grid is the one the sampler uses (``tiling.tile_grid`` over the latent), given here in output pixels so
that front-ends can draw it over the image. Tiles without a line use the global caption; lines beyond the
grid are ignored, with a note saying so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .tiling import Window

LATENT_FACTOR = 8  # image pixels per latent pixel
TILE_PROMPTS_KEY = "SUPIR tile prompts"

_ADDRESSED = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*:\s?(.*)$", re.DOTALL)

T = TypeVar("T")
Box = tuple[int, int, int, int]  # (left, top, right, bottom) in output pixels, right/bottom exclusive


@dataclass(frozen=True)
class TileGrid:
    """The sampler's tiles for one output size: ``boxes`` row-major, ``rows`` x ``cols`` of them."""

    rows: int
    cols: int
    boxes: tuple[Box, ...]
    output_size: tuple[int, int]  # (width, height) in pixels
    tile: tuple[int, int] | None = None  # (size, stride) in latent pixels; None: untiled (one tile)

    @property
    def count(self) -> int:
        return len(self.boxes)

    def windows(self) -> list[Window]:
        """The latent windows ``(h0, h1, w0, w1)`` the sampler slices (``tiling.tile_grid``'s order)."""
        f = LATENT_FACTOR
        return [(top // f, bottom // f, left // f, right // f) for left, top, right, bottom in self.boxes]

    def position(self, index: int) -> tuple[int, int]:
        """1-based (row, column) of the tile at ``index`` (0-based, row-major)."""
        return index // self.cols + 1, index % self.cols + 1

    def describe(self) -> str:
        w, h = self.output_size
        if self.tile is None:
            return f"1 tile (untiled sampling) over {w}x{h} px"
        size, stride = self.tile
        return (
            f"{self.rows} x {self.cols} = {self.count} tiles over {w}x{h} px "
            f"(tile {size * LATENT_FACTOR} px, stride {stride * LATENT_FACTOR} px)"
        )


def grid_for_output(output_hw: tuple[int, int], tile: tuple[int, int] | None) -> TileGrid:
    """The grid of an output of ``output_hw`` (height, width) pixels sampled with latent ``tile`` =
    (size, stride), or untiled (None: one tile covering everything)."""
    from .tiling import tile_grid  # torch: only when a grid is asked for

    h, w = output_hw[0] // LATENT_FACTOR, output_hw[1] // LATENT_FACTOR
    f = LATENT_FACTOR
    if tile is None:
        return TileGrid(1, 1, ((0, 0, w * f, h * f),), (w * f, h * f), None)
    windows = tile_grid(h, w, tile[0], tile[1])
    rows = len({h0 for h0, _, _, _ in windows})
    cols = len(windows) // rows
    boxes = tuple((w0 * f, h0 * f, w1 * f, h1 * f) for h0, h1, w0, w1 in windows)
    return TileGrid(rows, cols, boxes, (w * f, h * f), (tile[0], tile[1]))


def grid_for_image(image_size: tuple[int, int], settings, tile: tuple[int, int] | None = None) -> TileGrid:
    """The grid for an input of ``image_size`` (width, height) upscaled with ``settings``.

    ``tile`` is the memory plan's (size, stride) when known (``SUPIRPipeline.tile_grid`` passes it);
    otherwise the settings' own tiles are used, which is what runs unless the automatic memory plan tiles
    a run the settings leave untiled.
    """
    from .preprocess import target_size

    w, h = image_size
    output_hw = target_size(h, w, settings.scale, settings.min_size, settings.alignment)
    if tile is None and settings.tile_size is not None:
        tile = (settings.tile_size, settings.tile_stride or settings.tile_size)
    return grid_for_output(output_hw, tile)


# ------------------------------------------------------------------------------------------ prompt lines


def prompt_lines(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """Prompt lines from a textbox / file text or a list; trailing empty lines are dropped."""
    if text is None:
        return ()
    if isinstance(text, str):
        lines = text.splitlines()
    else:
        lines = []
        for item in text:
            if not isinstance(item, str):
                raise ValueError(f"tile prompts must be text, got {item!r}")
            lines.extend(item.splitlines() or [""])
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(lines)


def is_addressed(entry: str) -> bool:
    """Whether a prompt line addresses a tile (``row,col: text``) rather than filling the next one."""
    return _ADDRESSED.match(entry) is not None


def parse_addressed(entry: str) -> tuple[int, int, str]:
    """``"row,col: text"`` as (row, col, text); ValueError with the expected form otherwise."""
    match = _ADDRESSED.match(entry)
    if match is None:
        raise ValueError(
            f"a tile prompt must look like 'row,col: text' (1-based row and column), got {entry!r}"
        )
    row, col, text = int(match.group(1)), int(match.group(2)), match.group(3).strip()
    if row < 1 or col < 1:
        raise ValueError(f"tile rows and columns count from 1, got {row},{col} in {entry!r}")
    return row, col, text


@dataclass(frozen=True)
class TileCaptions:
    """The caption of every tile (None: the global caption) and notes on lines that did not fit."""

    captions: tuple[str | None, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def regional(self) -> bool:
        return any(c is not None for c in self.captions)


def assign_captions(entries: Sequence[str], grid: TileGrid) -> TileCaptions:
    """Which caption each tile of ``grid`` gets from the prompt ``entries`` (see the module docstring)."""
    captions: list[str | None] = [None] * grid.count
    notes: list[str] = []
    lines = [entry for entry in entries if not is_addressed(entry)]
    for index, entry in enumerate(lines[: grid.count]):
        captions[index] = entry.strip() or None
    positional, ignored_lines = len(lines), max(0, len(lines) - grid.count)
    for entry in entries:  # an addressed tile wins over the line that filled it
        if not is_addressed(entry):
            continue
        row, col, text = parse_addressed(entry)
        if row > grid.rows or col > grid.cols:
            notes.append(
                f"tile prompt {row},{col} ignored: the grid has {grid.rows} row(s) and {grid.cols} column(s)"
            )
            continue
        captions[(row - 1) * grid.cols + (col - 1)] = text or None
    if ignored_lines:
        notes.append(
            f"{ignored_lines} tile prompt line(s) ignored: the grid has only {grid.count} tile(s) "
            f"({grid.rows} x {grid.cols})"
        )
    if 0 < positional < grid.count:
        notes.append(
            f"{grid.count - positional} of {grid.count} tile(s) have no tile prompt line and use the "
            "global caption"
        )
    return TileCaptions(tuple(captions), tuple(notes))


def tile_texts(captions: Sequence[str | None], global_caption: str, positive_prompt: str) -> list[str]:
    """The positive text of every tile: its caption (or the global one) before the positive prompt, joined
    as ``UpscaleSettings.positive_text`` joins them."""
    return ["".join([global_caption if c is None else c, positive_prompt]) for c in captions]


def per_tile_conditionings(
    texts: Sequence[str], global_text: str, global_cond: T, encode: Callable[[str], T]
) -> list[T]:
    """One conditioning per tile text: ``global_cond`` itself for the global text, each other distinct text
    encoded once (tiles with the same text share it)."""
    encoded: dict[str, T] = {global_text: global_cond}
    for text in texts:
        if text not in encoded:
            encoded[text] = encode(text)
    return [encoded[text] for text in texts]


# ------------------------------------------------------------------------------------------ infotext


def format_tile_prompts(entries: Sequence[str]) -> str:
    """The infotext value of the prompt entries: a JSON list (pastes back with ``read_tile_prompts``)."""
    return json.dumps(list(entries), ensure_ascii=False)


def read_tile_prompts(value: str) -> tuple[str, ...]:
    """Prompt entries from an infotext value: the JSON list written by ``format_tile_prompts`` or, typed by
    hand, lines separated by newlines."""
    text = value.strip()
    if text.startswith('"'):  # still quoted as the infotext line writes it
        text = str(json.loads(text)).strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{TILE_PROMPTS_KEY} is not a JSON list of strings ({exc})") from exc
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"{TILE_PROMPTS_KEY} must be a JSON list of strings, got {text[:80]!r}")
        return tuple(items)
    return prompt_lines(text)
