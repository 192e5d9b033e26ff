"""SUPIR's sampling steps in the webui's console bar "Total progress" (``shared.total_tqdm``).

The webui sizes that bar when it counts its first step, as ``state.job_count`` x ``state.sampling_steps``
of that moment, and only the webui's samplers advance it. SUPIR adds one job per image to ``job_count``
(so the page's progress covers SUPIR), so the bar holds as many steps for each SUPIR image as for one
webui job; or none at all when the webui sized it before SUPIR's jobs were added (Hires. fix does, in
``init``). Each SUPIR image therefore swaps what the bar held for it for its own step count, once, and
then advances the bar by one per sampling step.
"""

from __future__ import annotations

from modules import shared


def _bar():
    return getattr(shared, "total_tqdm", None)


def is_sized() -> bool:
    """Whether the bar of the running generation exists (and so has its total already)."""
    return getattr(_bar(), "_tqdm", None) is not None


class ImageShare:
    """One SUPIR image's part of the bar: ``held`` steps were counted for it before it ran."""

    def __init__(self, held: int) -> None:
        self.held = max(0, int(held))
        self._resized = False

    def next_pass(self) -> None:
        """A progressive run's next pass: its steps are added to the bar when it starts sampling."""
        self.held = 0
        self._resized = False

    def sampling(self, step: int, total: int) -> None:
        """SUPIR's ``progress("sampling", step, total)``: step 0 starts the stage, then one call a step."""
        bar = _bar()
        if bar is None:
            return
        if not self._resized:
            self._resized = True
            inner = getattr(bar, "_tqdm", None)
            if inner is not None and total != self.held:
                bar.updateTotal(inner.total + total - self.held)
        if step > 0:
            bar.update()
