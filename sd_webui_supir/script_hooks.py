"""What the txt2img / img2img Script does in each webui hook.

SUPIR runs per image in ``postprocess_image``, so batches, batch count, hires fix and images other
extensions made are all covered, and the result replaces the image in the gallery and the saved file.
A failure or an interrupt keeps the image as it was and says why in the generation's comments.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from modules import images, processing, shared

from supir_engine.errors import CancelledError, SupirError

from . import runner
from .args import ALL_INFOTEXT_KEYS, ArgumentError, SupirArgs, from_values, infotext_params, to_settings
from .compare import BEFORE
from .options import default_args, default_prompts, opt
from .prompts import caption_from_prompt, caption_prefix
from .skip_img2img import SkipImg2Img, input_image

log = logging.getLogger(__name__)

JOB_ATTRIBUTE = "supir_job"  # on the processing object: one job per generation, gone with it
# Why SUPIR left an image as it was: in its infotext, hence also in the API's "info" (which has no comments).
ERROR_KEY = "SUPIR error"


@dataclass
class Job:
    args: SupirArgs
    skip: SkipImg2Img | None = None
    problem: str | None = None  # set when SUPIR cannot run at all (missing file, no SDXL base)
    counted: bool = False
    params: dict[int, dict[str, Any]] = field(default_factory=dict)  # image index -> infotext values

    def infotext_value(self, key: str):
        """An ``extra_generation_params`` value: the webui calls it with ``index`` for each image."""

        def value(index: int = 0, **_: Any) -> Any:
            return self.params.get(index, {}).get(key)

        return value

    def failed(self, p, index: int, message: str) -> None:
        """The image at ``index`` stays as it was: its infotext says why, and so does the page."""
        self.params[index] = {ERROR_KEY: message}
        p.comment(message)


def job_of(p) -> Job | None:
    return getattr(p, JOB_ATTRIBUTE, None)


def process(p, values: Sequence[Any], is_img2img: bool) -> None:
    """``process`` hook: read the arguments, check SUPIR can run, set up Skip Img2Img and the infotext."""
    try:
        args = from_values(values, default_args())
    except ArgumentError as exc:
        p.comment(str(exc))
        return
    if not args.enabled:
        return
    job = Job(args, problem=runner.preflight(args.variant))
    if job.problem:
        p.comment(f"SUPIR: {job.problem}")
        p.extra_generation_params[ERROR_KEY] = job.problem
    if is_img2img and args.skip_img2img:
        job.skip = SkipImg2Img(p)
        job.skip.apply(p)
    if not job.problem:
        # Callables, so each image gets its own values (seeds drawn per image) and a failed image none.
        for key in (*ALL_INFOTEXT_KEYS, ERROR_KEY):
            p.extra_generation_params[key] = job.infotext_value(key)
    setattr(p, JOB_ATTRIBUTE, job)


def before_process_batch(p) -> None:
    """First batch: ``p.init()`` has run (Skip Img2Img restores the size), the webui set ``job_count``."""
    job = job_of(p)
    if job is None:
        return
    if job.skip is not None:
        job.skip.restore_size(p)
    if not job.counted and not job.problem and shared.state.job_count > 0:
        shared.state.job_count += p.n_iter * p.batch_size  # one progress-bar job per SUPIR image
    job.counted = True


def postprocess_image(p, pp) -> None:
    """Upscale one image; on any failure keep it and say why."""
    job = job_of(p)
    if job is None or job.problem:
        return
    args, position = job.args, p.batch_index
    index = p.iteration * p.batch_size + position
    if shared.state.interrupted or shared.state.skipped:
        job.failed(p, index, runner.user_message(CancelledError("stopped before SUPIR")))
        return
    source = input_image(p, position) if job.skip is not None else pp.image
    caption = ""
    if args.prompt_source == "Generation prompt":
        caption = caption_from_prompt(p.prompts[position])
    elif args.prompt_source == "Custom caption":
        caption = args.caption
    seed = p.seeds[position] if args.seed_from_image else args.seed
    settings = to_settings(args, runner.base_settings(), caption_prefix(caption), seed)
    if job.skip is None and opt("supir_save_before") and p.save_samples():
        _save_before(p, pp.image, position)
    shared.state.job = f"SUPIR {index + 1}/{p.n_iter * p.batch_size}"
    try:
        result = runner.upscale(source.convert("RGB"), settings, args.variant, label=shared.state.job)
    except Exception as exc:  # the webui would only log it: show it, and keep the image
        message = runner.user_message(exc)
        if not isinstance(exc, SupirError):
            log.exception("SUPIR failed")
        log.warning(message)
        job.failed(p, index, message)
        return
    finally:
        shared.state.nextjob()
    if opt("supir_compare"):
        BEFORE.remember(shared.state.job_timestamp, index, source)
    pp.image = result.image
    for note in result.notes:  # e.g. a VAE decode retried in fp32, the checkpoint left in RAM
        p.comment(f"SUPIR: {note}")
    job.params[index] = infotext_params(args, result.settings, default_prompts())


def _save_before(p, image, position: int) -> None:
    info = processing.create_infotext(
        p, p.all_prompts, p.all_seeds, p.all_subseeds, iteration=p.iteration, position_in_batch=position
    )
    images.save_image(
        image,
        p.outpath_samples,
        "",
        p.seeds[position],
        p.prompts[position],
        shared.opts.samples_format,
        info=info,
        p=p,
        suffix="-before-supir",
    )


def postprocess(p) -> None:
    """Last hook: give ``p`` back its own values."""
    job = job_of(p)
    if job is not None and job.skip is not None:
        job.skip.restore(p)
