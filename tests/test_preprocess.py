from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_case
from PIL import Image

from supir_engine.errors import SupirError
from supir_engine.preprocess import (
    ImageError,
    cv_resize,
    prepare_image,
    run_upscale_image_case,
    target_size,
    to_pil,
    to_rgb,
    upscale_image,
)

# Bit-exact against OpenCV 5.0's cv2.resize on every h1 call (also checked offline against cv2 on ~600 random
# sizes: Lanczos up/down, INTER_AREA up, down, mixed, integer and 5/3, 10/3 ratios).
PIXEL_BOUND = 0


@pytest.fixture(scope="module")
def h1():
    return load_case("h1_upscale_image")


def test_fixture_pixels_and_sizes(h1):
    sidecar, _ = h1
    pairs = run_upscale_image_case(*h1)
    calls, rows = sidecar["calls"], sidecar["size_table"]
    assert len(pairs) == 2 * len(calls) + len(rows)
    for call in calls:
        expected, actual = pairs[call["output"]]
        assert actual.shape == expected.shape == (*call["out_hw"], 3)
        assert int((actual - expected).abs().max()) <= PIXEL_BOUND
        assert torch.equal(*pairs[call["output"] + "_hw"])
    for i in range(len(rows)):
        expected, actual = pairs[f"size_table_{i}"]
        assert expected.tolist() == actual.tolist()


def test_min_size_enlargement_with_scale_1_uses_area(h1):
    sidecar, t = h1
    call = next(c for c in sidecar["calls"] if c["upscale"] == 1 and c["min_size"])
    source = t["input_uint8_hwc"].numpy()
    area = upscale_image(source, 1, call["min_size"], call["unit_resolution"])
    lanczos = cv_resize(source, *area.shape[:2], lanczos=True)
    assert np.array_equal(area, t[call["output"]].numpy())
    assert not np.array_equal(area, lanczos)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((512, 768, 2, 1024, 32), (1024, 1536)),
        ((300, 451, 1, 1024, 32), (1024, 1536)),  # min side enlarged, width 1539.4 -> 1536
        ((1080, 1920, 1, 1024, 32), (1088, 1920)),
        ((40, 56, 1, None, 64), (64, 64)),  # no min size
        ((48, 80, 1, None, 32), (64, 64)),  # 1.5 -> 2 and 2.5 -> 2: ties to even
        ((112, 144, 1, None, 32), (128, 128)),  # 3.5 -> 4 and 4.5 -> 4
        ((16, 400, 1, None, 32), (0, 384)),  # 0.5 -> 0 and 12.5 -> 12
        ((100, 200, 1.5, 512, 64), (512, 1024)),
        ((600, 300, 0.5, None, 32), (288, 160)),  # 9.375 -> 9, 4.6875 -> 5
    ],
)
def test_target_size(args, expected):
    assert target_size(*args) == expected


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_target_size_rejects_bad_scale(bad):
    with pytest.raises(ImageError, match="scale"):
        target_size(10, 10, bad, None, 32)


def test_resize_invariants():
    flat = np.full((7, 9, 3), 200, np.uint8)
    for size, lanczos in [((21, 40), True), ((21, 40), False), ((5, 4), False), ((3, 3), True)]:
        assert np.all(cv_resize(flat, *size, lanczos) == 200)
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert np.array_equal(cv_resize(img, 4, 6, lanczos=True), img)  # same size: a copy
    halves = img.reshape(2, 2, 3, 2, 3).astype(int).sum(axis=(1, 3))
    assert np.array_equal(cv_resize(img, 2, 3, lanczos=False), (halves + 2) >> 2)  # 2x2 area: (s + 2) >> 2
    thirds = np.arange(9 * 9, dtype=np.uint8).reshape(9, 9, 1).repeat(3, axis=2)
    means = thirds.reshape(3, 3, 3, 3, 3).astype(float).mean(axis=(1, 3))
    assert np.array_equal(cv_resize(thirds, 3, 3, lanczos=False), np.rint(means))


def test_prepare_image_values_and_layout():
    pixels = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    x, size = prepare_image(Image.fromarray(pixels), 1, min_size=None, unit=32)  # no resize needed
    assert size == (64, 96) and x.shape == (1, 3, 64, 96) and x.dtype == torch.float32
    expected = torch.from_numpy(pixels / 255 * 2 - 1).float().permute(2, 0, 1)
    assert torch.equal(x[0], expected)
    assert np.array_equal(np.asarray(to_pil(x)), pixels)  # to_pil undoes it exactly


def test_prepare_image_resizes_with_defaults():
    x, size = prepare_image(Image.new("RGB", (50, 40), (10, 20, 30)), 2.0, min_size=128)
    assert size == (128, 160) and x.shape == (1, 3, 128, 160)
    assert x.min() >= -1 and x.max() <= 1


def test_to_pil_rounding_and_clipping():
    values = torch.tensor([-2.0, -1.0, 0.0, 1 / 127.5, 1.0, 3.0]).view(1, 1, 6).expand(3, 1, 6)
    image = to_pil(values.unsqueeze(0))
    assert image.mode == "RGB" and image.size == (6, 1)
    assert np.asarray(image)[0, :, 0].tolist() == [0, 0, 128, 128, 255, 255]  # 127.5 rounds to even


def test_to_pil_errors():
    with pytest.raises(ImageError, match="batch of 2"):
        to_pil(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ImageError, match=r"\[3, H, W\]"):
        to_pil(torch.zeros(1, 4, 4, 4))


def _rgb(image: Image.Image) -> np.ndarray:
    out = to_rgb(image)
    assert out.mode == "RGB"
    return np.asarray(out)


def test_rgba_is_composited_on_white():
    rgba = np.array([[[255, 0, 0, 255], [0, 0, 0, 0], [0, 0, 0, 128]]], np.uint8)
    assert _rgb(Image.fromarray(rgba, "RGBA")).tolist() == [[[255, 0, 0], [255, 255, 255], [127, 127, 127]]]
    la = Image.fromarray(np.array([[[50, 255], [50, 0]]], np.uint8), "LA")
    assert _rgb(la).tolist() == [[[50, 50, 50], [255, 255, 255]]]


def test_grey_palette_and_16_bit():
    grey = Image.fromarray(np.array([[0, 77, 255]], np.uint8), "L")
    assert _rgb(grey)[0, :, 0].tolist() == [0, 77, 255] and np.ptp(_rgb(grey), axis=2).max() == 0
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([10, 20, 30, 40, 50, 60])
    assert _rgb(palette).tolist() == [[[10, 20, 30], [40, 50, 60]]]
    palette.info["transparency"] = 1
    assert _rgb(palette).tolist() == [[[10, 20, 30], [255, 255, 255]]]
    wide = Image.fromarray(np.array([[0, 257, 1000, 65535]], np.uint16))
    assert wide.mode.startswith("I;16")
    assert _rgb(wide)[0, :, 1].tolist() == [0, 1, 4, 255]  # scaled, not clipped at 255
    assert _rgb(wide.convert("I"))[0, :, 2].tolist() == [0, 1, 4, 255]
    assert _rgb(Image.new("1", (2, 1), 1)).tolist() == [[[255, 255, 255]] * 2]


def test_unconvertible_mode():
    with pytest.raises(ImageError, match="'La'"):
        to_rgb(Image.new("La", (2, 2)))


def test_empty_and_oversized_images():
    with pytest.raises(ImageError, match="empty") as info:
        prepare_image(Image.new("RGB", (0, 10)), 1)
    assert isinstance(info.value, SupirError) and isinstance(info.value, ValueError)
    with pytest.raises(ImageError, match="empty"):
        prepare_image(Image.new("RGB", (8, 8)), 1, min_size=None, unit=32)  # rounds to 0x0
    with pytest.raises(ImageError, match="8192 px per side"):
        prepare_image(Image.new("RGB", (100, 100)), 100)
    with pytest.raises(ImageError, match="256 px per side"):
        prepare_image(Image.new("RGB", (100, 100)), 4, min_size=None, max_side=256)
    with pytest.raises(ImageError, match=r"0\.1 Mpx"):
        prepare_image(Image.new("RGB", (100, 100)), 4, min_size=None, max_pixels=100_000)
