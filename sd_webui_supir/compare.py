"""The images as they were before SUPIR, kept for the before/after comparison in the txt2img/img2img gallery.

An image is found again by what the browser knows about it: the generation's ``job_timestamp`` and the
image's position in that generation (gallery index minus ``index_of_first_image``), both in the webui's
``generation_info`` JSON. They are kept in RAM, the oldest dropped first beyond a byte limit; nothing is
written to disk.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from PIL import Image

DEFAULT_LIMIT_BYTES = 256 << 20


def image_bytes(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())


class BeforeImages:
    def __init__(self, limit_bytes: int = DEFAULT_LIMIT_BYTES):
        self.limit_bytes = limit_bytes
        self._images: OrderedDict[tuple[str, int], Image.Image] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def remember(self, job: str, index: int, image: Image.Image) -> None:
        if image_bytes(image) > self.limit_bytes:
            return
        with self._lock:
            self._drop(self._images.pop((job, index), None))
            self._images[(job, index)] = image.copy()
            self._bytes += image_bytes(image)
            while self._bytes > self.limit_bytes:
                self._drop(self._images.popitem(last=False)[1])

    def _drop(self, image: Image.Image | None) -> None:
        if image is not None:
            self._bytes -= image_bytes(image)

    def get(self, job: str, index: int) -> Image.Image | None:
        with self._lock:
            return self._images.get((job, index))

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._images)


BEFORE = BeforeImages()
