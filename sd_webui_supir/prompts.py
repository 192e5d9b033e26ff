"""Turning webui prompts and infotext into a plain caption for SUPIR's text encoders.

SUPIR's encoders read plain text: the webui's prompt syntax (``<lora:name:0.8>``, ``(word:1.2)``,
``[from:to:0.5]``, ``BREAK``) would only be noise to them.
"""

from __future__ import annotations

import re

_EXTRA_NETWORKS = re.compile(r"<[^<>]*>")
_WEIGHT = re.compile(r":\s*-?\d+(?:\.\d+)?\s*(?=[)\]])")
_BRACKETS = re.compile(r"[()\[\]{}]")
_BREAK = re.compile(r"\bBREAK\b")
_SPACES = re.compile(r"\s+")
_COMMAS = re.compile(r"\s*,(?:\s*,)+\s*")
_SEED = re.compile(r"(?:^|,\s*)Seed:\s*(-?\d+)")


def caption_from_prompt(prompt: str) -> str:
    """The prompt as plain text: extra networks, attention weights, brackets and BREAK removed."""
    text = _EXTRA_NETWORKS.sub("", prompt or "")
    text = _WEIGHT.sub("", text)
    text = _BRACKETS.sub("", text)
    text = _BREAK.sub(",", text)
    text = _SPACES.sub(" ", text)
    text = _COMMAS.sub(", ", text)
    return text.strip(" ,")


def caption_prefix(caption: str) -> str:
    """The caption as the start of SUPIR's positive text (the engine joins caption and prompt as they are)."""
    caption = caption.strip()
    if not caption:
        return ""
    return caption + (" " if caption.endswith((",", ".", ";")) else ", ")


def prompt_from_parameters(parameters: str | None) -> str:
    """The prompt of a webui infotext (the text before "Negative prompt:" / the parameters line)."""
    if not parameters:
        return ""
    lines = parameters.strip().split("\n")
    prompt_lines = []
    for line in lines[:-1] if len(lines) > 1 else []:
        if line.startswith("Negative prompt:"):
            break
        prompt_lines.append(line)
    return "\n".join(prompt_lines).strip()


def seed_from_parameters(parameters: str | None) -> int | None:
    """The ``Seed:`` of a webui infotext, if any."""
    if not parameters:
        return None
    match = _SEED.search(parameters.strip().split("\n")[-1])
    return int(match.group(1)) if match else None
