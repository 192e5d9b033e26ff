"""Where each result goes: one unique name per input, the real factor in the name, no silent overwrite.

A result is named ``<stem>_SUPIR_x<factor>.<ext>``. Inputs of one batch that share a stem (``a.jpg`` and
``a.png``) get their source extension in the name (``a_jpg_SUPIR_x2.png``). A name that already exists on
disk (or was handed out earlier in the batch) gets a number (``a_SUPIR_x2-1.png``) unless overwriting.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import SupirError

# Extension -> Pillow format of the files we write.
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
# An -o ending in one of these names a file (refused when we cannot write that format), not a folder.
IMAGE_EXTENSIONS = {*OUTPUT_FORMATS, ".bmp", ".gif", ".tif", ".tiff"}
# An -o ending in one of these names one output video (media.VIDEO_SUFFIXES).
VIDEO_EXTENSIONS = {".mp4", ".webm", ".mov", ".mkv", ".m4v"}


def output_format(path: Path) -> str:
    """The Pillow format that ``path``'s extension names."""
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SupirError(
            f"cannot write {path.name}: results are written as {', '.join(OUTPUT_FORMATS)}; "
            "give the output file one of these extensions"
        )
    return fmt


def real_factor(input_size: tuple[int, int], output_size: tuple[int, int]) -> float:
    """The upscale factor as it came out (min size and alignment included): the side ratio by area,
    rounded to two decimals."""
    (w, h), (ow, oh) = input_size, output_size
    return round(math.sqrt((ow * oh) / (w * h)), 2)


def safe_stem(stem: str) -> str:
    return re.sub(r"[^\w.-]+", "_", stem)[:80] or "image"


def stems(sources: Sequence[Path]) -> list[str]:
    """One stem per source, unique within the batch: shared stems get the source extension appended."""
    counts = Counter(safe_stem(p.stem).lower() for p in sources)
    out = []
    for p in sources:
        stem = safe_stem(p.stem)
        if counts[stem.lower()] > 1 and p.suffix:
            stem = f"{stem}_{p.suffix.lstrip('.').lower()}"
        out.append(stem)
    # Same stem and extension in different folders: number them in input order.
    seen: Counter[str] = Counter()
    unique = []
    for stem in out:
        seen[stem.lower()] += 1
        unique.append(stem if seen[stem.lower()] == 1 else f"{stem}_{seen[stem.lower()]}")
    return unique


def numbered(path: Path, taken: set[Path]) -> Path:
    """``path`` when it is free, else the first free ``<stem>-<n><ext>``."""
    for n in itertools.count():
        candidate = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        if candidate not in taken and not candidate.exists():
            return candidate
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Target:
    """The planned output of one input; ``skip`` when it exists and the user asked to skip those."""

    source: Path
    path: Path
    skip: bool = False


def plan_outputs(
    sources: Sequence[Path],
    factors: Sequence[float],
    output: Path | None,
    *,
    default_folder: Path = Path("supir_outputs"),
    overwrite: bool = False,
    skip_existing: bool = False,
    extensions: Sequence[str] | None = None,
) -> list[Target]:
    """Output path per source. ``output`` with an image extension is the one result file (one source
    only); otherwise it is the folder (default ``default_folder``), with PNG results, or per source the
    extension in ``extensions`` (an animation or video keeps its container)."""
    if output is not None and output.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
        if not extensions or extensions[0] == ".png":  # a still image: written by Pillow
            output_format(output)
        if len(sources) != 1:
            raise SupirError(
                f"-o {output} names one file but {len(sources)} images were given; "
                "give a folder instead (e.g. -o results) or one image"
            )
        wanted = [output]
    else:
        folder = output if output is not None else default_folder
        names = zip(stems(sources), factors, extensions or [".png"] * len(sources), strict=True)
        wanted = [folder / f"{stem}_SUPIR_x{factor:g}{ext}" for stem, factor, ext in names]
    targets: list[Target] = []
    taken: set[Path] = set()
    for source, path in zip(sources, wanted, strict=True):
        if path.exists() and skip_existing:
            targets.append(Target(source, path, skip=True))
            continue
        if not overwrite:
            path = numbered(path, taken)
        taken.add(path)
        targets.append(Target(source, path))
    return targets
