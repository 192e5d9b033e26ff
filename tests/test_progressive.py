"""Progressive passes: the plan (pass count, sizes), the chain through the pipeline, interrupt, infotext."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from supir_engine.cli import build_parser, main, settings_from_args
from supir_engine.errors import CancelledError
from supir_engine.infotext import from_infotext, infotext_line, to_infotext
from supir_engine.pipeline import SUPIRPipeline
from supir_engine.progressive import describe_factors, parse_factors, pass_factors, plan_passes
from supir_engine.settings import UpscaleSettings
from supir_engine.tiny import random_state_dict, save_checkpoint, split_state_dict


@pytest.mark.parametrize(
    ("scale", "factors"),
    [(1.5, (1.5,)), (2, (2.0,)), (3, (2.0, 1.5)), (4, (2.0, 2.0)), (5, (2.0, 2.0, 1.25)), (8, (2.0,) * 3)],
)
def test_factor_split(scale, factors):
    assert pass_factors(scale) == pytest.approx(factors)


# 384x512 (h x w), min_size 0, alignment 32: sizes worked out by hand (every one a multiple of 32).
@pytest.mark.parametrize(
    ("scale", "sizes"),
    [
        (1.5, [(576, 768)]),
        (2, [(768, 1024)]),
        (3, [(768, 1024), (1152, 1536)]),
        (4, [(768, 1024), (1536, 2048)]),
    ],
)
def test_pass_count_and_sizes(scale, sizes):
    passes = plan_passes((384, 512), UpscaleSettings(scale=scale, min_size=0, progressive=True))
    assert [p.size for p in passes] == sizes
    assert [p.label for p in passes] == [f"pass {i}/{len(sizes)}" for i in range(1, len(sizes) + 1)]
    assert not any(p.settings.progressive for p in passes)


def test_last_pass_ends_at_the_single_run_size():
    # 200x300 at 8x, min_size 1024: rounding to 32 pulls the aspect ratio of the passes apart; the chain
    # still ends where one run would (1600x2400), and min_size makes the first pass 1024 px high, as a
    # single run at 2x would.
    passes = plan_passes((200, 300), UpscaleSettings(scale=8, min_size=1024, progressive=True))
    assert passes[0].size == (1024, 1536) and passes[-1].size == (1600, 2400)
    # an image already enlarged to min_size by the first pass needs no second one
    assert len(plan_passes((30, 30), UpscaleSettings(scale=4, min_size=1024, progressive=True))) == 1


class RecordingHost:
    def __init__(self, stop_when=None):
        self.events: list[tuple] = []
        self.stop_when = stop_when
        self.acquired = self.released = 0

    def acquire_device(self) -> None:
        self.acquired += 1

    def release_device(self) -> None:
        self.released += 1

    def begin_pass(self, index: int, count: int) -> None:
        self.events.append(("pass", index, count))

    def progress(self, stage: str, step: int, total: int) -> None:
        self.events.append((stage, step, total))

    def should_stop(self) -> bool:
        return self.stop_when is not None and self.stop_when(self.events)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("SUPIR")
    sdxl, supir = split_state_dict(random_state_dict(seed=5))
    save_checkpoint(sdxl, folder / "sd_xl_base_1.0.safetensors")
    save_checkpoint(supir, folder / "SUPIR-v0Q.ckpt")
    return folder


@pytest.fixture(scope="module")
def pipeline(models_dir) -> SUPIRPipeline:
    files = (models_dir / "sd_xl_base_1.0.safetensors", models_dir / "SUPIR-v0Q.ckpt")
    return SUPIRPipeline.from_files(*files, "cpu", precision="fp32")


def image(size=(32, 32)) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


FAST = UpscaleSettings(min_size=0, steps=2, seed=11, s_churn=0.0)


def test_chain_runs_each_pass_on_the_previous_output(pipeline, monkeypatch):
    calls = []
    original = SUPIRPipeline.upscale

    def spy(self, img, settings=None, host=None):
        if not settings.progressive:
            calls.append((img.size, settings.seed, settings.scale))
        return original(self, img, settings, host)

    monkeypatch.setattr(SUPIRPipeline, "upscale", spy)
    host = RecordingHost()
    result = pipeline.upscale(image(), FAST.replace(scale=3, progressive=True, seed=-1), host)
    assert result.image.size == result.output_size == (96, 96) and result.input_size == (32, 32)
    assert [c[0] for c in calls] == [(32, 32), (64, 64)]  # pass 2 starts from pass 1's output
    assert calls[0][1] == calls[1][1] == result.settings.seed >= 0  # one seed, drawn once
    assert result.settings.progressive and result.settings.scale == 3
    assert [e for e in host.events if e[0] == "pass"] == [("pass", 1, 2), ("pass", 2, 2)]
    assert sum(1 for e in host.events if e[:2] == ("decode", 1)) == 2
    assert host.acquired == host.released == 1  # the device is held for the whole chain
    assert result.network_evaluations == 4  # 2 passes x 2 steps
    assert any("progressive: 2 passes (2x, 1.5x)" in note for note in result.notes)


def test_one_pass_is_the_plain_run(pipeline):
    plain = pipeline.upscale(image(), FAST.replace(scale=1.5))
    progressive = pipeline.upscale(image(), FAST.replace(scale=1.5, progressive=True))
    assert np.array_equal(np.asarray(plain.image), np.asarray(progressive.image))
    assert to_infotext(progressive.settings)["SUPIR progressive"] == "1.5x"


def test_interrupt_between_passes(pipeline):
    host = RecordingHost(stop_when=lambda events: ("decode", 1, 1) in events)
    with pytest.raises(CancelledError, match="before pass 2/2"):
        pipeline.upscale(image(), FAST.replace(scale=4, progressive=True), host)
    assert [e for e in host.events if e[0] == "pass"] == [("pass", 1, 2)]
    assert host.acquired == host.released == 1


def test_interrupt_within_a_pass(pipeline):
    def second_pass_sampling(events):
        started = events.index(("pass", 2, 2)) if ("pass", 2, 2) in events else None
        return started is not None and ("sampling", 1, 2) in events[started:]

    host = RecordingHost(stop_when=second_pass_sampling)
    with pytest.raises(CancelledError, match=r"sampler step 1 of 2 \(pass 2/2\)"):
        pipeline.upscale(image(), FAST.replace(scale=4, progressive=True), host)
    assert host.acquired == host.released == 1


def test_infotext_round_trip():
    settings = UpscaleSettings(scale=3, progressive=True, seed=5)
    params = to_infotext(settings)
    assert params["SUPIR progressive"] == '"2x, 1.5x"'
    assert 'SUPIR progressive: "2x, 1.5x"' in infotext_line(params)
    assert from_infotext(params) == settings
    plain = UpscaleSettings(scale=3, seed=5)
    assert "SUPIR progressive" not in to_infotext(plain)
    assert from_infotext(to_infotext(plain), base=settings).progressive is False
    assert parse_factors("2x, 2x, 1.25x") == (2.0, 2.0, 1.25)
    assert describe_factors(pass_factors(5)) == "2x, 2x, 1.25x"


def test_cli_flag_and_run(tmp_path, models_dir):
    args = build_parser().parse_args(["upscale", "x.png", "--progressive"])
    assert settings_from_args(args).progressive is True
    folder = models_dir
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    image((40, 32)).save(src)
    fast = ["--min-size", "32", "--steps", "1", "--dtype", "fp32", "--seed", "7", "--scale", "3"]
    argv = ["upscale", str(src), "-o", str(out), "--models-dir", str(folder), "--progressive", *fast]
    assert main(argv) == 0
    result = Image.open(out)
    # one run of 3x: 96x120 -> 96x128 (sides rounded to 32); the chain ends there too
    assert result.size == (128, 96)
    assert 'SUPIR progressive: "2x, 1.5x"' in result.text["parameters"]


def test_tqdm_host_names_the_pass():
    from supir_engine.progress import TqdmHost

    host = TqdmHost("photo.png", 2)
    host.progress("sampling", 1, 2)
    host.begin_pass(2, 3)
    host.progress("stage1", 0, 1)
    assert host._bar.desc.startswith("photo.png (pass 2/3): stage 1")
    assert host.run.done == 0  # the bar starts again for the pass
    host.release_device()


def test_app_progress_controls_and_settings():
    import inspect

    from supir_engine.app import CONTROL_ORDER, ProgressHost, SupirApp, settings_from_controls

    reports = []
    host = ProgressHost(lambda value, desc=None, **kw: reports.append(desc), threading.Event(), 2)
    host.begin_pass(2, 3)
    host.progress("sampling", 1, 2)
    assert reports[-1].startswith("Pass 2/3: sampling 1/2")
    assert CONTROL_ORDER.index("progressive") == CONTROL_ORDER.index("vae_decoder_tile") + 1  # appended
    names = [n for n in inspect.signature(SupirApp.upscale).parameters if n not in ("self", "image")]
    assert names[: len(CONTROL_ORDER)] == list(CONTROL_ORDER)
    values = dict.fromkeys(CONTROL_ORDER, 0) | {
        "sampler": "restore_edm",
        "color_fix": "wavelet",
        "scale": 3,
        "steps": 2,
        "cfg_scale": 4,
        "s_noise": 1.0,
        "min_size": 64,
        "seed": 1,
        "progressive": True,
    }
    values.update(caption="", positive_prompt="", negative_prompt="")
    assert settings_from_controls(values).progressive is True
    assert settings_from_controls({**values, "progressive": False}).progressive is False
