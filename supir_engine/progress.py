"""One progress figure over all the stages of a run, with the time left, for the CLI and the web app.

The pipeline reports each stage separately (``stage1``, ``text``, ``sampling`` step by step, ``decode``).
:class:`RunProgress` turns that into one count of work units: a sampler step is one unit and the other
stages are weighted in sampler steps, so that one bar moves through the whole run and its rate gives an
estimate of the time left. The weights are rough; a stage that is skipped (stage 1 cached) leaves the total.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tqdm import tqdm

# Work units of the stages other than sampling, in sampler steps.
STAGE_WEIGHTS = {"preupscale": 4, "stage1": 8, "text": 1, "decode": 6}
STAGE_ORDER = ("preupscale", "stage1", "text", "sampling", "decode")
STAGE_LABELS = {
    "load": "loading the model",
    "preupscale": "pre-upscale",
    "stage1": "stage 1 (denoise encoder)",
    "text": "text conditioning",
    "sampling": "sampling",
    "decode": "decoding",
}


class RunProgress:
    """Units done out of ``total`` for one run of ``steps`` sampler steps, and the time left."""

    def __init__(self, steps: int, clock: Callable[[], float] = time.monotonic):
        self.steps = max(int(steps), 1)
        self.clock = clock
        self.done = 0
        self.stage = ""
        self.detail = ""
        self._start: float | None = None
        self._skipped: set[str] = set()

    @property
    def total(self) -> int:
        return sum(self._weight(s) for s in STAGE_ORDER if s not in self._skipped)

    def _weight(self, stage: str) -> int:
        return self.steps if stage == "sampling" else STAGE_WEIGHTS.get(stage, 0)

    def _offset(self, stage: str) -> int:
        if stage not in STAGE_ORDER:
            return self.done
        earlier = STAGE_ORDER[: STAGE_ORDER.index(stage)]
        return sum(self._weight(s) for s in earlier if s not in self._skipped)

    def update(self, stage: str, step: int, total: int) -> int:
        """Record the pipeline's ``progress(stage, step, total)``; returns the units done."""
        if stage == "sampling" and total > 0:
            self.steps = total
        if stage in STAGE_ORDER and self._start is None:
            self._start = self.clock()
            self._skipped = set(STAGE_ORDER[: STAGE_ORDER.index(stage)])
        fraction = min(max(step / total, 0.0), 1.0) if total > 0 else 0.0
        self.done = self._offset(stage) + round(fraction * self._weight(stage))
        self.stage = stage
        self.detail = f" {step}/{total}" if stage in ("sampling", STAGE_ORDER[0]) else ""
        return self.done

    @property
    def fraction(self) -> float:
        return self.done / self.total

    def seconds_left(self) -> float | None:
        """Elapsed time per unit so far times the units left; None until a unit is done."""
        if self._start is None or self.done <= 0:
            return None
        elapsed = self.clock() - self._start
        return elapsed / self.done * (self.total - self.done)

    def describe(self) -> str:
        text = STAGE_LABELS.get(self.stage, self.stage) + self.detail
        left = self.seconds_left()
        if left is not None and self.done < self.total:
            text += f", about {format_seconds(left)} left"
        return text


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class TqdmHost:
    """A terminal host: one tqdm bar per image over all stages (tqdm shows the time left)."""

    def __init__(self, label: str, steps: int = 1):
        self.label = label
        self.run = RunProgress(steps)
        self._bar: tqdm | None = None
        self._pass = ""

    def begin_pass(self, index: int, count: int) -> None:
        """A progressive run starts pass ``index`` of ``count``: the bar starts again, labelled with it."""
        self._pass = f" (pass {index}/{count})"
        self.run = RunProgress(self.run.steps)
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def acquire_device(self) -> None:
        pass

    def release_device(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def progress(self, stage: str, step: int, total: int) -> None:
        self.run.update(stage, step, total)
        if self._bar is None:
            # smoothing=0: the rate (and so the time left) is the average over the whole run.
            self._bar = tqdm(total=self.run.total, unit="u", leave=False, smoothing=0, dynamic_ncols=True)
        self._bar.total = self.run.total
        self._bar.set_description_str(
            f"{self.label}{self._pass}: {STAGE_LABELS.get(stage, stage)}", refresh=False
        )
        self._bar.n = self.run.done
        self._bar.refresh()

    def should_stop(self) -> bool:
        return False
