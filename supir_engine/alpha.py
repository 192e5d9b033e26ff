"""Transparency: SUPIR restores RGB only; the source's alpha channel is resized onto the result."""

from __future__ import annotations

from PIL import Image


def alpha_channel(image: Image.Image) -> Image.Image | None:
    """The image's alpha as an "L" image, or None when it has no transparency."""
    if "A" in image.getbands() or image.mode in ("RGBa", "La"):
        return image.convert("RGBA").getchannel("A")
    if image.mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").getchannel("A")
    return None


def keep_alpha(source: Image.Image, result: Image.Image) -> Image.Image:
    """``result`` with the source's alpha resized to its size (Lanczos); ``result`` itself when opaque."""
    alpha = alpha_channel(source)
    if alpha is None:
        return result
    out = result.convert("RGB")
    out.putalpha(alpha.resize(out.size, Image.LANCZOS))
    return out
