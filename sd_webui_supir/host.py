"""The webui implementation of supir_engine's Host protocol.

Memory goes through the host's own functions, which its adapter (``hosts``) knows: on AUTOMATIC1111
``sd_models.send_model_to_cpu`` (which also handles --medvram / --lowvram) before SUPIR and
``send_model_to_device`` after it; on the Forge families the model manager's ``unload_all_models`` and
``load_models_gpu``. Progress goes to ``shared.state``, which the webui's progress bar and
``/sdapi/v1/progress`` read; Interrupt and Skip set flags there that :meth:`WebuiHost.should_stop` reads.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Callable, Iterator

from modules import shared

from supir_engine.oom import drop_frames

from . import hosts
from .hosts.base import Offload
from .total_progress import ImageShare

log = logging.getLogger(__name__)

STAGE_NAMES = {
    "preupscale": "pre-upscale",
    "stage1": "stage 1 (denoise encoder)",
    "text": "text encoders",
    "sampling": "sampling",
    "decode": "VAE decode",
}


RESTORE_FAILED = (
    "the SD checkpoint was left in RAM: moving it back to the GPU failed ({error}). Before the next "
    "generation, move it back with Settings > Actions > 'Load SD checkpoint to VRAM from RAM' (or restart "
    "the webui)."
)


def loaded_sd_model():
    """The webui's loaded checkpoint, or None; never triggers a load (``shared.sd_model`` would)."""
    return hosts.current().loaded_model()


class WebuiHost:
    """Frees the device for SUPIR and gives it back; re-entrant, so callers may hold a lease around a run.

    ``before_restore`` callbacks run just before the SD checkpoint goes back to its device (the model
    cache uses it to drop references to the CPU copies of the checkpoint's tensors). ``total_bar``: this
    image's part of the console's "Total progress" bar, when the run is one of a generation's jobs.
    """

    def __init__(self, label: str = "SUPIR", total_bar: ImageShare | None = None) -> None:
        self.label = label
        self.total_bar = total_bar
        self.before_restore: list[Callable[[], object]] = []
        self._depth = 0
        self._offload: Offload | None = None
        self.restore_failure: str | None = None  # set when the checkpoint could not go back to the GPU
        self.pass_text = ""  # " pass 2/3" while a progressive run's passes run

    @property
    def will_restore(self) -> bool:
        """True when the SD checkpoint was on an accelerator and goes back there at the end of the lease."""
        return self._offload is not None and self._offload.restore

    def acquire_device(self) -> None:
        self._depth += 1
        if self._depth > 1:
            return
        self._offload = hosts.current().offload()

    def release_device(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth:
            return
        try:
            for callback in self.before_restore:
                try:
                    callback()
                except Exception:
                    log.exception("SUPIR: cleanup before restoring the SD checkpoint failed")
        finally:
            adapter, offload = hosts.current(), self._offload
            self._offload = None
            if offload is not None and (offload.restore or offload.modules):
                try:
                    adapter.restore(offload)
                except Exception as exc:  # e.g. out of memory with the checkpoint half on the GPU
                    self._leave_in_ram(adapter, offload, exc)
            adapter.empty_cache()

    def _leave_in_ram(self, adapter: hosts.WebuiAdapter, offload: Offload, exc: Exception) -> None:
        """A checkpoint half on the GPU breaks the next generation: put all of it in RAM, and say so."""
        error = f"{type(exc).__name__}: {exc}"
        log.debug("SUPIR: restoring the SD checkpoint failed", exc_info=exc)
        drop_frames(exc)
        with contextlib.suppress(Exception):
            adapter.leave_in_ram(offload)
        gc.collect()
        adapter.empty_cache()
        self.restore_failure = RESTORE_FAILED.format(error=error)
        log.warning("SUPIR: %s", self.restore_failure)

    @contextlib.contextmanager
    def lease(self) -> Iterator[WebuiHost]:
        """The device is SUPIR's inside the block; the SD checkpoint is restored however the block ends."""
        self.acquire_device()
        try:
            yield self
        finally:
            self.release_device()

    def begin_pass(self, index: int, count: int) -> None:
        """A progressive run starts pass ``index`` of ``count``: the progress text names it."""
        self.pass_text = f" pass {index}/{count}"
        if index > 1 and self.total_bar is not None:
            self.total_bar.next_pass()

    def progress(self, stage: str, step: int, total: int) -> None:
        state = shared.state
        name = STAGE_NAMES.get(stage, stage)
        label = self.label + self.pass_text
        if stage == "sampling":
            state.sampling_steps = total
            state.sampling_step = step
            state.textinfo = f"{label}: sampling step {step}/{total}"
            if self.total_bar is not None:
                self.total_bar.sampling(step, total)
        else:
            state.textinfo = f"{label}: {name}"

    def image_upscaler(self, name: str):
        """One of the webui's upscalers as the engine's pre-upscaler (see pre_upscale.py), or None."""
        from .pre_upscale import find

        return find(name)

    def should_stop(self) -> bool:
        state = shared.state
        return bool(state.interrupted or state.skipped)
