"""A terminal host: tqdm progress bar over the sampler steps, stage names as they start."""

from __future__ import annotations

from tqdm import tqdm


class TqdmHost:
    def __init__(self, label: str):
        self.label = label
        self._bar: tqdm | None = None

    def acquire_device(self) -> None:
        pass

    def release_device(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def progress(self, stage: str, step: int, total: int) -> None:
        if stage != "sampling":
            return
        if self._bar is None:
            self._bar = tqdm(total=total, desc=f"{self.label}: sampling", unit="step", leave=False)
        self._bar.n = step
        self._bar.refresh()

    def should_stop(self) -> bool:
        return False
