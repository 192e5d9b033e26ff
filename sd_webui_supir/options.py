"""The "SUPIR" section of the webui's Settings, and reading it with defaults.

The webui registers extension options only while it builds the Settings UI (``on_ui_settings``); an
API-only webui (``--nowebui``) never does, so every read goes through :func:`opt`, which falls back
to the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from supir_engine.settings import DEFAULT_NEGATIVE_PROMPT, DEFAULT_POSITIVE_PROMPT, PRESET_LABELS

from .args import SupirArgs, with_preset

SECTION = ("supir", "SUPIR")
# The webui groups Settings sections by category in its sidebar; SUPIR sits with the other upscalers.
CATEGORY = "postprocessing"
LOADED_CHECKPOINT = "Loaded checkpoint (when SDXL)"
PRESETS = tuple(PRESET_LABELS.values())
MEMORY_POLICIES = ("auto", "full", "stages", "blocks")
STORAGE_DTYPES = ("auto", "fp16", "bf16", "fp8", "fp32")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
LORA_AS_LOADED = "With them (as the webui merged them)"
LORA_WITHOUT = "Without them (the webui's original weights)"
LORA_MODES = (LORA_AS_LOADED, LORA_WITHOUT)

DEFAULTS: dict[str, Any] = {
    "supir_models_path": "",
    "supir_sdxl_base": LOADED_CHECKPOINT,
    "supir_lora": LORA_AS_LOADED,
    "supir_default_preset": "Quality",
    "supir_positive_prompt": DEFAULT_POSITIVE_PROMPT,
    "supir_negative_prompt": DEFAULT_NEGATIVE_PROMPT,
    "supir_memory_policy": "auto",
    "supir_storage_dtype": "auto",
    "supir_precision": "auto",
    "supir_vram_budget": 0.0,
    "supir_min_size": 1024,
    "supir_tile_size": 0,
    "supir_tile_stride": 0,
    "supir_vae_encoder_tile": 0,
    "supir_vae_decoder_tile": 0,
    "supir_keep_in_ram": True,
    "supir_save_before": False,
    "supir_compare": True,
    "supir_upscaler_steps": 0,
    "supir_resume": True,
    "supir_resume_every_steps": 5,
    "supir_resume_limit_gb": 4.0,
}

LABELS: dict[str, str] = {
    "supir_models_path": "Folder of the SUPIR model files (empty: --supir-models-path, else models/SUPIR)",
    "supir_sdxl_base": "SDXL base model SUPIR runs on",
    "supir_lora": "LoRAs merged into the loaded checkpoint (when SUPIR runs on it)",
    "supir_default_preset": "Default parameter preset",
    "supir_positive_prompt": "Default positive prompt (added after the caption)",
    "supir_negative_prompt": "Default negative prompt",
    "supir_memory_policy": "GPU memory policy (auto: fastest that fits the free VRAM; blocks: least VRAM)",
    "supir_storage_dtype": "Weight storage dtype (auto: fp16; fp8 halves SUPIR's VRAM and RAM)",
    "supir_precision": (
        "precision SUPIR computes in (auto: as the webui, --no-half, --no-half-vae, --upcast-sampling, "
        "and what the GPU can do; fp32 if images come out black)"
    ),
    "supir_vram_budget": "VRAM SUPIR may use, in GiB (0: the free memory); for the auto and blocks policies",
    "supir_min_size": "Minimum short side SUPIR works at, in pixels (the original uses 1024)",
    "supir_tile_size": "Sampler tile size in latent pixels (0: automatic)",
    "supir_tile_stride": "Sampler tile stride in latent pixels (0: half the tile)",
    "supir_vae_encoder_tile": "VAE encoder tile in image pixels (0: automatic)",
    "supir_vae_decoder_tile": "VAE decoder tile in latent pixels (0: automatic)",
    "supir_keep_in_ram": "Keep SUPIR's weights in RAM between runs",
    "supir_save_before": "Save a copy of each image before SUPIR (suffix -before-supir)",
    "supir_compare": "Before/after comparison in the txt2img/img2img gallery (recent originals kept in RAM)",
    "supir_upscaler_steps": "Steps when SUPIR is used as an Upscaler (0: those of the default preset)",
    "supir_resume": (
        "Resume interrupted jobs: save the sampler's state as it runs; upscaling the same image with the "
        "same settings again continues where it stopped (folder supir_resume in the webui's data directory)"
    ),
    "supir_resume_every_steps": "Save a resumable job's state every N sampler steps (and when interrupted)",
    "supir_resume_limit_gb": "Size limit of the saved states, in GB (the oldest are deleted beyond it)",
}


def opt(key: str) -> Any:
    """A SUPIR setting: the user's value if the webui has one, else the default."""
    from modules import shared

    return getattr(shared.opts, key, DEFAULTS[key])


def default_args() -> SupirArgs:
    """The accordion's initial values (the API's defaults too): default preset and prompts from Settings."""
    preset = str(opt("supir_default_preset"))
    base = SupirArgs(
        positive_prompt=opt("supir_positive_prompt"), negative_prompt=opt("supir_negative_prompt")
    )
    return with_preset(base, preset if preset in PRESETS else "Quality")


def default_prompts() -> tuple[str, str]:
    return opt("supir_positive_prompt"), opt("supir_negative_prompt")


def models_dir() -> Path:
    """The folder holding SUPIR-v0Q / SUPIR-v0F: the setting, else the command-line flag, else models/SUPIR"""
    from modules import shared

    configured = opt("supir_models_path") or getattr(shared.cmd_opts, "supir_models_path", None)
    return Path(configured or os.path.join(shared.models_path, "SUPIR")).expanduser()


def base_choices() -> list[str]:
    """The loaded checkpoint, then every checkpoint the webui knows (by title)."""
    from modules import sd_models

    return [LOADED_CHECKPOINT, *sorted(sd_models.checkpoints_list)]


def option_infos() -> dict[str, Any]:
    """``{key: shared.OptionInfo}`` for the SUPIR section, components built with the webui's gradio."""
    import gradio as gr
    from modules import shared

    def info(key: str, component=None, args=None):
        return shared.OptionInfo(
            DEFAULTS[key], LABELS[key], component, args, section=SECTION, category_id=CATEGORY
        )

    def number(key: str, minimum: int, maximum: int, step: int):
        return info(key, gr.Slider, {"minimum": minimum, "maximum": maximum, "step": step})

    return {
        "supir_models_path": info("supir_models_path"),
        "supir_sdxl_base": info("supir_sdxl_base", gr.Dropdown, lambda: {"choices": base_choices()}),
        "supir_lora": info("supir_lora", gr.Radio, {"choices": list(LORA_MODES)}),
        "supir_default_preset": info("supir_default_preset", gr.Radio, {"choices": list(PRESETS)}),
        "supir_positive_prompt": info("supir_positive_prompt", gr.Textbox, {"lines": 3}),
        "supir_negative_prompt": info("supir_negative_prompt", gr.Textbox, {"lines": 3}),
        "supir_memory_policy": info("supir_memory_policy", gr.Radio, {"choices": list(MEMORY_POLICIES)}),
        "supir_storage_dtype": info("supir_storage_dtype", gr.Radio, {"choices": list(STORAGE_DTYPES)}),
        "supir_precision": info("supir_precision", gr.Radio, {"choices": list(PRECISIONS)}),
        "supir_vram_budget": info("supir_vram_budget", gr.Slider, {"minimum": 0, "maximum": 80, "step": 0.5}),
        "supir_min_size": number("supir_min_size", 64, 2048, 64),
        "supir_tile_size": number("supir_tile_size", 0, 256, 8),
        "supir_tile_stride": number("supir_tile_stride", 0, 256, 8),
        "supir_vae_encoder_tile": number("supir_vae_encoder_tile", 0, 2048, 64),
        "supir_vae_decoder_tile": number("supir_vae_decoder_tile", 0, 256, 8),
        "supir_keep_in_ram": info("supir_keep_in_ram"),
        "supir_save_before": info("supir_save_before"),
        "supir_compare": info("supir_compare"),
        "supir_upscaler_steps": number("supir_upscaler_steps", 0, 200, 1),
        "supir_resume": info("supir_resume"),
        "supir_resume_every_steps": number("supir_resume_every_steps", 1, 100, 1),
        "supir_resume_limit_gb": info(
            "supir_resume_limit_gb", gr.Slider, {"minimum": 0.5, "maximum": 100, "step": 0.5}
        ),
    }


def register() -> None:
    """``on_ui_settings`` callback: add the SUPIR section."""
    from modules import shared

    for key, info in option_infos().items():
        shared.opts.add_option(key, info)
