"""SUPIR on one existing image: the Extras tab (single, batch, folder) and the /supir/v1/upscale route."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from modules import scripts
from PIL import Image

from supir_engine.alpha import keep_alpha
from supir_engine.errors import SupirError
from supir_engine.pipeline import UpscaleResult

from . import fallbacks, runner
from .args import SupirArgs, from_mapping, result_params, to_settings
from .options import default_args, default_prompts
from .prompts import caption_prefix, prompt_from_parameters, seed_from_parameters

log = logging.getLogger(__name__)


def caption_and_seed(image: Image.Image, args: SupirArgs) -> tuple[str, int]:
    """The caption and seed for an existing image: "generation prompt" and "same seed" read its infotext."""
    parameters = image.info.get("parameters")
    caption = ""
    if args.prompt_source == "Generation prompt":
        caption = prompt_from_parameters(parameters)
    elif args.prompt_source == "Custom caption":
        caption = args.caption
    seed = args.seed
    if args.seed_from_image:
        found = seed_from_parameters(parameters)
        seed = args.seed if found is None else found
    return caption, seed


def upscale_image(
    image: Image.Image, args: SupirArgs, label: str = "SUPIR"
) -> tuple[Image.Image, UpscaleResult]:
    """The upscaled image (alpha kept, resized) and the run's result; raises like ``runner.upscale``."""
    caption, seed = caption_and_seed(image, args)
    settings = to_settings(args, runner.base_settings(), caption_prefix(caption), seed)
    result = runner.upscale(image.convert("RGB"), settings, args.variant, label=label)
    return keep_alpha(image, result.image), result


def process(pp, values: Mapping[str, Any]) -> None:
    """``ScriptPostprocessing.process``: values are ``None`` when the webui's Extras API calls us (off)."""
    if not values.get("enabled"):
        return
    try:
        args = from_mapping({k: v for k, v in values.items() if k != "skip_img2img"}, default_args())
        image, result = upscale_image(pp.image, args, label="SUPIR (extras)")
    except Exception as exc:  # shown in the Extras info panel; the image stays as it was
        message = runner.user_message(exc)
        if not isinstance(exc, SupirError):
            log.exception("SUPIR failed")
        log.warning(message)
        pp.info["SUPIR"] = message
        return
    pp.image = image
    pp.info.update(result_params(args, result, default_prompts()))


# The labels the webui's Upscale / Simple Upscale scripts write once their upscaler has returned.
UPSCALER_LABELS = ("Postprocess upscaler", "Postprocess upscaler 2")


class HonestLabels(dict):
    """``pp.info`` that makes the Upscale scripts' label say so when the SUPIR Upscaler fell back.

    Installed before any Extras script processes (whatever the user's operation order), it sees the
    label at the moment it is written, right after that upscaler's call.
    """

    def __setitem__(self, key: str, value: Any) -> None:
        failed = fallbacks.failure_of(value) if key in UPSCALER_LABELS and isinstance(value, str) else None
        if failed is not None:
            value = failed.describe()
            # the webui caches upscaled images by upscaler name: the fallback must not be reused as SUPIR's
            scripts.scripts_postproc.image_changed()
        super().__setitem__(key, value)


def start_image(pp) -> None:
    """``process_firstpass``: a new image; forget earlier Upscaler calls and watch the labels."""
    fallbacks.clear()
    if not isinstance(pp.info, HonestLabels):
        pp.info = HonestLabels(pp.info)
