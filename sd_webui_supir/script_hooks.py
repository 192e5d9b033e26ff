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

from . import fallbacks, runner, total_progress
from .args import (
    ALL_INFOTEXT_KEYS,
    ArgumentError,
    SupirArgs,
    asks_for_supir,
    from_values,
    result_params,
    to_settings,
)
from .compare import BEFORE
from .options import default_args, default_prompts, opt
from .prompts import caption_from_prompt, caption_prefix
from .skip_img2img import SkipImg2Img, input_image

log = logging.getLogger(__name__)

JOB_ATTRIBUTE = "supir_job"  # on the processing object: one job per generation, gone with it
# Why SUPIR left an image as it was: in its infotext, hence also in the API's "info" (which has no comments).
ERROR_KEY = "SUPIR error"
# The webui's "Size" is the generation size; on an image SUPIR enlarged it says the image's real size, and
# the generation size moves to this key (pasting an infotext restores width and height from it).
GENERATION_SIZE_KEY = "SUPIR generation size"
SKIPPED = "SUPIR was skipped for this image (Skip); it was kept as generated."


@dataclass
class Job:
    args: SupirArgs
    skip: SkipImg2Img | None = None
    problem: str | None = None  # set when SUPIR cannot run at all (missing file, no SDXL base)
    counted: bool = False
    # The console's "Total progress" bar holds one webui job's steps for each SUPIR image when the webui
    # sizes it after SUPIR's jobs were counted; none otherwise. bar_steps: known once the webui has sampled.
    bar_holds_jobs: bool = False
    bar_steps: int | None = None
    params: dict[int, dict[str, Any]] = field(default_factory=dict)  # image index -> infotext values

    def infotext_value(self, key: str):
        """An ``extra_generation_params`` value: the webui calls it with ``index`` for each image."""

        def value(index: int = 0, **_: Any) -> Any:
            return self.params.get(index, {}).get(key)

        return value

    def size_value(self, p):
        """The webui's "Size" for each image: the upscaled size where SUPIR ran, else the generation's."""

        def value(index: int = 0, **_: Any) -> str:
            return self.params.get(index, {}).get("Size") or f"{p.width}x{p.height}"

        return value

    def failed(self, p, index: int, message: str) -> None:
        """The image at ``index`` stays as it was: its infotext says why, and so does the page."""
        self.params[index] = {ERROR_KEY: message}
        p.comment(message)


def job_of(p) -> Job | None:
    return getattr(p, JOB_ATTRIBUTE, None)


def process(p, values: Sequence[Any], is_img2img: bool) -> None:
    """``process`` hook: read the arguments, check SUPIR can run, set up Skip Img2Img and the infotext."""
    fallbacks.label_sd_upscale(p)  # its upscaler ran before this generation
    fallbacks.clear()
    try:
        args = from_values(values, default_args())
    except ArgumentError as exc:
        if asks_for_supir(values):  # SUPIR was wanted: the image stays as it is, and everyone is told why
            message = f"{exc}. The image was left as generated."
            log.warning("SUPIR: %s", message)
            p.comment(f"SUPIR: {message}")
            p.extra_generation_params[ERROR_KEY] = message
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
        for key in (*ALL_INFOTEXT_KEYS, ERROR_KEY, GENERATION_SIZE_KEY):
            p.extra_generation_params[key] = job.infotext_value(key)
        p.extra_generation_params["Size"] = job.size_value(p)
    setattr(p, JOB_ATTRIBUTE, job)


def before_process_batch(p) -> None:
    """First batch: ``p.init()`` has run (Skip Img2Img restores the size), the webui set ``job_count``."""
    fallbacks.clear()  # the Upscaler calls of this batch's Hires. fix come next
    job = job_of(p)
    if job is None:
        return
    if job.skip is not None:
        job.skip.restore_size(p)
    if not job.counted and not job.problem and shared.state.job_count > 0:
        shared.state.job_count += p.n_iter * p.batch_size  # one progress-bar job per SUPIR image
        job.bar_holds_jobs = not total_progress.is_sized()
    job.counted = True


def postprocess_image(p, pp) -> None:
    """Upscale one image; on any failure keep it and say why."""
    fallbacks.label_hires(p)
    job = job_of(p)
    if job is None or job.problem:
        return
    args, position = job.args, p.batch_index
    index = p.iteration * p.batch_size + position
    if shared.state.interrupted or shared.state.skipped:  # Skip pressed while the webui generated this job
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
    if job.bar_steps is None:  # the webui's steps per job, before SUPIR's own replace them
        job.bar_steps = shared.state.sampling_steps if job.bar_holds_jobs else 0
    share = total_progress.ImageShare(job.bar_steps)
    try:
        result = runner.upscale(
            source.convert("RGB"), settings, args.variant, label=shared.state.job, total_bar=share
        )
    except Exception as exc:  # the webui would only log it: show it, and keep the image
        message = runner.user_message(exc)
        if isinstance(exc, CancelledError) and shared.state.skipped and not shared.state.interrupted:
            # Skip ends this image's SUPIR job, as the webui's Skip ends one job; the next image goes on.
            shared.state.skipped = False
            message = SKIPPED
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
    job.params[index] = {
        **result_params(args, result, default_prompts()),
        "Size": f"{result.image.width}x{result.image.height}",
        GENERATION_SIZE_KEY: f"{p.width}x{p.height}",
    }


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


def infotext_pasted(infotext: str, params: dict[str, Any]) -> None:
    """``on_infotext_pasted``: width and height come back as the generation's, not the upscaled image's."""
    size = params.get(GENERATION_SIZE_KEY)
    if not isinstance(size, str) or "x" not in size:
        return
    width, _, height = size.partition("x")
    if width.strip().isdigit() and height.strip().isdigit():
        params["Size-1"], params["Size-2"] = width.strip(), height.strip()
