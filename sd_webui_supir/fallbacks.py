"""What SUPIR as a webui Upscaler did in the current job, so the webui's labels can say when it failed.

On a failure the Upscaler hands the input back and the webui finishes with a Lanczos resize, then labels
the result with the upscaler's name ("Postprocess upscaler: SUPIR-v0F", "Hires upscaler: SUPIR-v0F").
Each call is recorded here, in order, with the webui job it belongs to; the Extras script and the
txt2img / img2img hooks read the record and make the labels say what happened.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules import shared

INFOTEXT_KEY = "SUPIR upscaler error"  # txt2img / img2img infotext: the Upscaler fell back for this image


@dataclass(frozen=True)
class Outcome:
    upscaler: str  # the entry's name, e.g. "SUPIR-v0F"
    error: str | None  # why it failed; None when SUPIR's result was returned
    job: str  # shared.state.job_timestamp when it ran

    def describe(self, role: str = "") -> str:
        """E.g. "Hires upscaler SUPIR-v0F failed (reason); a Lanczos resize was used instead"."""
        subject = f"{role} {self.upscaler}" if role else self.upscaler
        return f"{subject} failed ({self.error}); a Lanczos resize was used instead"


_outcomes: list[Outcome] = []


def _job() -> str:
    return str(getattr(shared.state, "job_timestamp", ""))


def record(upscaler: str, error: str | None) -> Outcome:
    outcome = Outcome(upscaler, error, _job())
    _outcomes.append(outcome)
    return outcome


def clear() -> None:
    _outcomes.clear()


def current() -> list[Outcome]:
    """The calls made since the last ``clear`` in the running job (older jobs' calls are dropped)."""
    _outcomes[:] = [o for o in _outcomes if o.job == _job()]
    return list(_outcomes)


def failure_of(upscaler: str) -> Outcome | None:
    """The last call of ``upscaler`` in the running job, when it failed."""
    calls = [o for o in current() if o.upscaler == upscaler]
    return calls[-1] if calls and calls[-1].error is not None else None


ERRORS_ATTRIBUTE = "supir_upscaler_errors"  # on the processing object: image index -> message


def label_sd_upscale(p) -> None:
    """``process`` of the generation the SD upscale script runs after its upscaler: say if that fell back."""
    name = p.extra_generation_params.get("SD upscale upscaler")
    failed = failure_of(name) if isinstance(name, str) else None
    if failed is not None and INFOTEXT_KEY not in p.extra_generation_params:
        message = failed.describe("SD upscale upscaler")
        p.extra_generation_params[INFOTEXT_KEY] = message
        p.comment(f"SUPIR: {message}")


def label_hires(p) -> None:
    """``postprocess_image``: the Hires. fix upscaler's call for this image fell back: say so in its infotext.

    The second pass upscales the batch's images in order, one Upscaler call each, before this hook runs.
    """
    name = getattr(p, "hr_upscaler", None)
    if not getattr(p, "enable_hr", False) or not isinstance(name, str):
        return
    calls = [o for o in current() if o.upscaler == name]
    if len(calls) == p.batch_size:
        outcome = calls[p.batch_index]
    else:  # not one call per image: any failure in the batch concerns this image too
        outcome = next((o for o in calls if o.error is not None), None)
    if outcome is None or outcome.error is None:
        return
    errors = getattr(p, ERRORS_ATTRIBUTE, None)
    if errors is None:
        errors = {}
        setattr(p, ERRORS_ATTRIBUTE, errors)
        p.extra_generation_params[INFOTEXT_KEY] = lambda index=0, **_: errors.get(index)
    message = outcome.describe("Hires upscaler")
    if message not in errors.values():
        p.comment(f"SUPIR: {message}")
    errors[p.iteration * p.batch_size + p.batch_index] = message
