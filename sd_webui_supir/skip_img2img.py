"""Skip Img2Img: upscale the img2img input itself, without a useless generation.

The webui always runs its img2img pass. This makes it nearly free and keeps its throwaway image out of
sight, by changing a few values of that one processing object (never global options), remembered here
and put back afterwards:

- ``sample`` is replaced by one that returns the input images as already-decoded samples (the webui's
  own ``DecodedSamples`` path): no sampler step and no VAE decode run;
- ``width`` / ``height`` are tiny while ``p.init()`` VAE-encodes the input (the only work left), then
  restored before the first batch, so the infotext shows the real size;
- face restoration, the inpainting mask and img2img colour correction are off: they would act on the
  throwaway image (and save it with "-before-face-restoration") or recolour the result.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

ENCODE_SIZE = 64  # pixels: the smallest size the webui's VAE encode handles without complaint
CHANGED = ("width", "height", "restore_faces", "image_mask", "color_corrections")


def input_image(p, index: int) -> Image.Image:
    """The img2img input for position ``index`` of the batch (one input serves the whole batch)."""
    images = p.init_images
    return images[index % len(images)]


def _as_sample(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    rgb = image.convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, Image.LANCZOS)
    array = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class SkipImg2Img:
    """The values Skip Img2Img changes on one processing object, and how to put them back."""

    def __init__(self, p) -> None:
        self.saved = {name: getattr(p, name, None) for name in CHANGED}
        self._own_sample = "sample" in vars(p)
        self._saved_sample = vars(p).get("sample")
        self.size_restored = False

    def apply(self, p) -> None:
        """Before ``p.init()`` (the ``process`` hook)."""
        p.width = p.height = ENCODE_SIZE
        p.restore_faces = False
        p.image_mask = None
        p.color_corrections = []  # non-None: init() adds none, and none is applied to the result
        p.sample = self._passthrough(p)

    def restore_size(self, p) -> None:
        """After ``p.init()`` (the first ``before_process_batch``): the infotext shows the real size."""
        if not self.size_restored:
            p.width, p.height = self.saved["width"], self.saved["height"]
            self.size_restored = True

    def restore(self, p) -> None:
        """At the end (``postprocess``): ``p`` is as the user made it."""
        for name, value in self.saved.items():
            setattr(p, name, value)
        if self._own_sample:
            p.sample = self._saved_sample
        else:
            vars(p).pop("sample", None)

    @staticmethod
    def _passthrough(p):
        from modules import processing

        def sample(conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
            first = input_image(p, 0).size
            return processing.DecodedSamples(_as_sample(input_image(p, i), first) for i in range(len(seeds)))

        return sample
