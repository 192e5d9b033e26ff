"""The boundary between the engine and whoever runs it (webui, CLI, web app, tests).

The pipeline calls these hooks and never knows who the host is.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Host(Protocol):
    def acquire_device(self) -> None:
        """Make room on the device for SUPIR (e.g. move the host's own model to RAM)."""

    def release_device(self) -> None:
        """SUPIR is done with the device; called whatever happened (success, error, cancel)."""

    def progress(self, stage: str, step: int, total: int) -> None:
        """``stage`` is running; ``step`` of ``total`` done (sampler steps, or 0/1 for other stages)."""

    def should_stop(self) -> bool:
        """True when the user asked to stop; checked at least once per sampler step."""


class NullHost:
    """A host that needs nothing and never stops the run."""

    def acquire_device(self) -> None:
        pass

    def release_device(self) -> None:
        pass

    def progress(self, stage: str, step: int, total: int) -> None:
        pass

    def should_stop(self) -> bool:
        return False
