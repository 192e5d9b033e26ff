"""Progressive passes: a large factor as a chain of x2 SUPIR runs, each on the previous run's output.

The SUPIR authors report that quality collapses beyond about 4x from 1024 px; restoring in x2 steps keeps
every run in the range the model was trained for. With ``UpscaleSettings.progressive`` on:

* the factor ``scale`` is split into x2 passes, the last pass taking what remains: 3x = 2x, 1.5x; 4x = 2x,
  2x; 5x = 2x, 2x, 1.25x. A factor of 2 or less is one pass, the same run as without ``progressive``;
* each pass is a full run (stage 1 on the previous pass's output, sampling, decode, colour fix);
* the passes before the last enlarge by exactly 2 (sides rounded to ``alignment``) and ignore ``min_size``;
  the last pass ends at the size a single run would give (``min_size`` included), so switching
  ``progressive`` on never changes the output size;
* seed rule: the seed is drawn once (when it is -1) and every pass uses that same seed;
* the host hears ``begin_pass(index, count)`` before each pass when it has that method (progress shows
  "pass 2/3"), and a stop request ends the run before the next pass or within the running one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from PIL import Image

from .errors import CancelledError
from .host import Host, NullHost
from .preprocess import target_size
from .settings import UpscaleSettings

if TYPE_CHECKING:
    from .pipeline import SUPIRPipeline, UpscaleResult

log = logging.getLogger(__name__)

PASS_FACTOR = 2.0
_EPSILON = 1e-9  # 2.0000000001 is a factor of 2, not 2 then 1.0000000001


@dataclass(frozen=True)
class Pass:
    """One pass: its place in the chain, its nominal factor, the size it ends at and how it runs."""

    index: int  # 1-based
    count: int
    factor: float  # nominal factor, as the infotext shows it
    size: tuple[int, int]  # output (height, width)
    settings: UpscaleSettings  # the run of this pass (progressive off)
    fit: tuple[int, int] | None = None  # (height, width) to resize the pass's input to first, if any

    @property
    def label(self) -> str:
        return f"pass {self.index}/{self.count}"


def pass_factors(scale: float) -> tuple[float, ...]:
    """The nominal factors of the passes for ``scale``: x2 while more than 2 remains, then the rest."""
    factors: list[float] = []
    remaining = float(scale)
    while remaining > PASS_FACTOR * (1 + _EPSILON):
        factors.append(PASS_FACTOR)
        remaining /= PASS_FACTOR
    factors.append(remaining)
    return tuple(factors)


def describe_factors(factors: Sequence[float]) -> str:
    """``2x, 1.5x``: how the infotext and the progress name the passes."""
    return ", ".join(f"{round(f, 3):g}x" for f in factors)


def parse_factors(text: str) -> tuple[float, ...]:
    """The factors of :func:`describe_factors`' text; ValueError for anything else."""
    parts = [p.strip().removesuffix("x").strip() for p in str(text).strip().strip('"').split(",")]
    factors = tuple(float(p) for p in parts if p)
    if not factors or any(f <= 0 for f in factors):
        raise ValueError(f"not a list of pass factors such as '2x, 1.5x': {text!r}")
    return factors


def _scale_to(
    src: tuple[int, int], dst: tuple[int, int], unit: int, nominal: float
) -> tuple[float, tuple[int, int] | None]:
    """(factor, input size or None): how one pass takes ``src`` (h, w) to exactly ``dst`` once its sides
    are rounded to ``unit``.

    ``nominal`` when it lands there; else a factor each side accepts (each accepts an open interval, half a
    ``unit`` either way: the middle of their intersection). When the intervals miss each other (rounding to
    ``unit`` pulled the aspect ratios of ``src`` and ``dst`` apart, as it does for small images), the input
    is first resized to ``dst``'s aspect ratio, by a few pixels of its width.
    """
    if target_size(*src, nominal, None, unit) == dst:
        return nominal, None
    low = max((d - unit / 2) / s for s, d in zip(src, dst))
    high = min((d + unit / 2) / s for s, d in zip(src, dst))
    if low < high:
        return (low + high) / 2, None
    fit = (src[0], max(1, round(dst[1] * src[0] / dst[0])))
    return dst[0] / src[0], fit


def plan_passes(input_hw: tuple[int, int], settings: UpscaleSettings) -> list[Pass]:
    """The passes of a progressive run on an image of ``input_hw`` (height, width) pixels.

    Pass k ends at the size a single run of factor 2**k would give (``min_size`` included, so an image
    smaller than that is first enlarged to it, as a single run does); the last pass ends at the single run's
    size. A pass that would not enlarge (``min_size`` already reached that size) is left out.
    """
    h, w = input_hw
    factors = pass_factors(settings.scale)
    unit = settings.alignment
    final = target_size(h, w, settings.scale, settings.min_size, unit)
    single = settings.replace(progressive=False)
    if len(factors) == 1:
        return [Pass(1, 1, factors[0], final, single)]
    goals: list[tuple[float, tuple[int, int]]] = []
    for index, factor in enumerate(factors[:-1], start=1):
        goal = target_size(h, w, PASS_FACTOR**index, settings.min_size, unit)
        if goal[0] * goal[1] < final[0] * final[1] and (not goals or goal != goals[-1][1]):
            goals.append((factor, goal))
    goals.append((factors[-1], final))
    passes: list[Pass] = []
    size = (h, w)
    for index, (factor, goal) in enumerate(goals, start=1):
        if index == 1:  # exactly a single run of factor 2 (or of the whole factor)
            run, fit = single.replace(scale=PASS_FACTOR if len(goals) > 1 else settings.scale), None
        else:
            scale, fit = _scale_to(size, goal, unit, factor)
            run = single.replace(scale=scale, min_size=0)
        passes.append(Pass(index, len(goals), factor, goal, run, fit))
        size = goal
    return passes


class _PassHost:
    """The caller's host inside one pass: the device is held for the whole chain, not per pass."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def acquire_device(self) -> None:
        pass

    def release_device(self) -> None:
        pass

    def progress(self, stage: str, step: int, total: int) -> None:
        self.host.progress(stage, step, total)

    def should_stop(self) -> bool:
        return self.host.should_stop()


def upscale_progressive(
    pipeline: SUPIRPipeline, image: Image.Image, settings: UpscaleSettings, host: Host | None = None
) -> UpscaleResult:
    """Run the passes of ``settings`` (progressive on) on ``image``; the result describes the whole chain.

    Raises CancelledError when the host asks to stop, before a pass or within one.
    """
    from .pipeline import resolve_seed

    settings = settings.replace(progressive=True, seed=resolve_seed(settings.seed))
    host = host or NullHost()
    passes = plan_passes((image.height, image.width), settings)
    if len(passes) > 1:
        log.info("SUPIR progressive: %s", describe_factors([p.factor for p in passes]))
    results = []
    current = image
    host.acquire_device()
    try:
        for step in passes:
            if host.should_stop():
                raise CancelledError(f"stopped before {step.label}")
            begin = getattr(host, "begin_pass", None)
            if callable(begin):
                begin(step.index, step.count)
            if step.fit is not None and (current.height, current.width) != step.fit:
                current = current.resize((step.fit[1], step.fit[0]), Image.LANCZOS)
            try:
                result = pipeline.upscale(current, step.settings, _PassHost(host))
            except CancelledError as exc:
                raise CancelledError(f"{exc} ({step.label})") from exc
            results.append(result)
            current = result.image
    finally:
        host.release_device()
    return _combined(image, settings, passes, results)


def _combined(
    image: Image.Image, settings: UpscaleSettings, passes: list[Pass], results: list
) -> UpscaleResult:
    last = results[-1]
    timings: dict[str, float] = {}
    copied: dict[str, int] = {}
    notes: list[str] = []
    for step, result in zip(passes, results):
        for name, seconds in result.timings.items():
            timings[name] = timings.get(name, 0.0) + seconds
        for name, count in result.bytes_to_device.items():
            copied[name] = copied.get(name, 0) + count
        prefix = f"{step.label}: " if len(passes) > 1 else ""
        notes += [prefix + note for note in result.notes]
    if len(passes) > 1:
        sizes = " -> ".join(f"{r.output_size[0]}x{r.output_size[1]}" for r in results)
        notes.append(
            f"progressive: {len(passes)} passes ({describe_factors([p.factor for p in passes])}), "
            f"{image.width}x{image.height} -> {sizes}"
        )
    return replace(
        last,
        settings=settings,
        input_size=image.size,
        timings=timings,
        network_evaluations=sum(r.network_evaluations for r in results),
        stage1_cached=all(r.stage1_cached for r in results),
        bytes_to_device=copied,
        notes=notes,
    )


# ------------------------------------------------------------------------------------------ infotext

INFOTEXT_KEY = "SUPIR progressive"  # "2x, 1.5x"; written only when progressive is on
_OFF = ("", "none", "false", "off", "0")


def progressive_infotext(settings: UpscaleSettings) -> dict[str, str]:
    """``{INFOTEXT_KEY: "2x, 1.5x"}`` for a progressive run (unquoted), else nothing."""
    if not settings.progressive:
        return {}
    return {INFOTEXT_KEY: describe_factors(pass_factors(settings.scale))}


def progressive_from_infotext(params: Mapping[str, str]) -> bool:
    """Whether pasted infotext parameters describe a progressive run."""
    value = params.get(INFOTEXT_KEY)
    return value is not None and str(value).strip().strip('"').lower() not in _OFF
