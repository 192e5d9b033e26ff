"""The app's animation / video handler, called directly with a stand-in engine (no server, no model)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="gradio not installed")

from tests.test_app import UPSCALE_INPUTS  # noqa: E402
from tests.test_media import DURATIONS, video_facts, write_gif, write_video  # noqa: E402


@dataclass
class Result:
    image: Image.Image


class DoublingEngine:
    """Doubles each frame; records the seed and the progress labels it was given."""

    def __init__(self, stop_after: int | None = None):
        self.seeds: list[int] = []
        self.stop_after = stop_after

    def upscale(self, image, settings, request, host):
        from supir_engine.errors import CancelledError

        if self.stop_after is not None and len(self.seeds) == self.stop_after:
            raise CancelledError("stopped by the user")
        self.seeds.append(settings.seed)
        host.progress("sampling", 1, settings.steps)
        return Result(image.convert("RGB").resize((image.width * 2, image.height * 2)))

    def model_name(self, variant):
        return "tiny"


def make_app(engine, folder: Path):
    from supir_engine.app import ResultFolder, SupirApp

    return SupirApp(engine, ResultFolder(folder))


def test_gif_upload_comes_back_with_its_timing(tmp_path):
    from supir_engine.animation import read_animation
    from supir_engine.app_media import media_handler

    engine = DoublingEngine()
    labels = []
    handler = media_handler(make_app(engine, tmp_path / "out"))
    src = write_gif(tmp_path / "anim.gif", size=(32, 32))
    path, summary = handler(
        str(src), **{**UPSCALE_INPUTS, "seed": -1}, progress=lambda *a, desc="": labels.append(desc)
    )
    back = read_animation(Path(path))
    assert Path(path).suffix == ".gif" and len(back.frames) == 3 and back.durations == DURATIONS
    assert back.frames[0].size == (64, 64)
    assert len(set(engine.seeds)) == 1 and "3 frames: 3 upscaled" in summary
    assert any(label.startswith("frame 2/3: ") for label in labels)


def test_stopped_video_resumes_when_uploaded_again(tmp_path):
    import gradio as gr

    from supir_engine.app_media import media_handler

    src = write_video(tmp_path / "clip.mp4")
    copy = tmp_path / "upload2" / "clip.mp4"  # the same file under another temporary upload name
    copy.parent.mkdir()
    copy.write_bytes(src.read_bytes())
    first = DoublingEngine(stop_after=2)
    with pytest.raises(gr.Error, match="Upload the same file again to resume"):
        media_handler(make_app(first, tmp_path / "out"))(str(src), **UPSCALE_INPUTS)
    second = DoublingEngine()
    path, summary = media_handler(make_app(second, tmp_path / "out"))(str(copy), **UPSCALE_INPUTS)
    assert len(second.seeds) == 2 and "4 frames: 2 upscaled, 2 resumed" in summary
    facts = video_facts(Path(path))
    assert facts["frames"] == 4 and facts["size"] == (64, 64) and facts["audio"] == 1


def test_a_still_image_is_sent_to_the_image_upscaler(tmp_path):
    import gradio as gr

    from supir_engine.app_media import media_handler

    still = tmp_path / "still.png"
    Image.new("RGB", (16, 16)).save(still)
    with pytest.raises(gr.Error, match="not an animation"):
        media_handler(make_app(DoublingEngine(), tmp_path / "out"))(str(still), **UPSCALE_INPUTS)
