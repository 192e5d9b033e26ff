"""The CLI's regional-prompt flags: ``--tile-prompt``, ``--tile-prompts FILE`` and ``--show-tiles``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import SupirError
from .settings import UpscaleSettings

# UpscaleSettings fields with flags of their own (not generated from the field).
OWN_FLAGS = frozenset({"tile_prompts"})


def add_tile_prompt_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tile-prompt",
        action="append",
        metavar="ROW,COL: TEXT",
        help="caption of one sampler tile (1-based row and column of the grid --show-tiles prints); "
        "repeat for more tiles; tiles without one use --caption. Needs tiled sampling (--tile-size)",
    )
    parser.add_argument(
        "--tile-prompts",
        type=Path,
        metavar="FILE",
        dest="tile_prompts_file",
        help="text file with one caption per sampler tile, row-major (an empty line keeps --caption; "
        "'row,col: text' lines address a tile)",
    )
    parser.add_argument(
        "--show-tiles",
        action="store_true",
        help="print each input's sampler tile grid and write a numbered preview next to its output "
        "(<output>.tiles.png), then stop without loading models",
    )


def tile_prompts_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """Entries of ``--tile-prompts FILE``, then every ``--tile-prompt``; SupirError if unreadable."""
    from .regions import is_addressed, prompt_lines

    entries: list[str] = []
    path = getattr(args, "tile_prompts_file", None)
    if path is not None:
        try:
            entries += prompt_lines(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise SupirError(f"cannot read --tile-prompts {path} ({exc}); give a UTF-8 text file") from exc
    for entry in getattr(args, "tile_prompt", None) or []:
        if not is_addressed(entry):
            raise SupirError(
                f"--tile-prompt {entry!r} names no tile: write 'row,col: text', e.g. '1,2: a red door' "
                "(use --tile-prompts FILE for one line per tile)"
            )
        entries.append(entry)
    return tuple(entries)


def show_tiles(jobs: Sequence, settings: UpscaleSettings) -> int:
    """Print the grid of every job's input and save its preview as ``<output>.tiles.png``."""
    from .regions import assign_captions, grid_for_image
    from .tile_preview import draw_tile_grid
    from .upscale_io import load_image

    if settings.tile_size is None:
        print(
            "untiled sampling: one tile. Set --tile-size (and --tile-stride) for regional prompts; "
            "the automatic memory plan may still tile a large output on a small GPU",
            file=sys.stderr,
        )
    for job in jobs:
        image = load_image(job.source)
        grid = grid_for_image(image.size, settings)
        captions = assign_captions(settings.tile_prompts, grid)
        print(f"{job.source}: {grid.describe()}")
        for index, box in enumerate(grid.boxes):
            row, col = grid.position(index)
            caption = captions.captions[index]
            shown = "(caption)" if caption is None else repr(caption)
            print(f"  tile {index + 1} ({row},{col}) x {box[0]}-{box[2]}, y {box[1]}-{box[3]}: {shown}")
        for note in captions.notes:
            print(f"  note: {note}")
        preview = job.path.with_name(job.path.stem + ".tiles.png")
        preview.parent.mkdir(parents=True, exist_ok=True)
        draw_tile_grid(image, grid).save(preview)
        print(f"  preview: {preview}")
    return 0
