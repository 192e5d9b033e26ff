"""txt2img and img2img through the Script, with the fake webui's real hook order."""

from __future__ import annotations

import numpy as np
import torch
from modules import images, processing, scripts, sd_models, shared
from PIL import Image

from sd_webui_supir import runner
from supir_engine.device_policy import precision_for


def txt2img(webui, batch_size=2, n_iter=1, prompt="a photo of a <lora:film:0.7> (red cat:1.2)", **args):
    runner_ = scripts.scripts_txt2img
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt=prompt,
        width=32,
        height=32,
        steps=3,
        batch_size=batch_size,
        n_iter=n_iter,
        scripts=runner_,
        script_args=webui.script_args(runner_, **args),
    )
    return p, processing.process_images(p)


def params_of(infotext: str) -> dict[str, str]:
    """``key: value`` pairs of an infotext's last line (quoted values unquoted), as the webui parses them."""
    import json
    import re

    line = infotext.strip().split("\n")[-1]
    pairs = re.findall(r'\s*(\w[\w \-/+]*):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', line)
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


def assert_restored(webui, runs: int) -> None:
    assert webui.sdxl.device.type == "cuda"
    names = [name for name, _ in sd_models.calls]
    assert names == ["send_model_to_cpu", "send_model_to_device"] * runs


def test_txt2img_batch_of_two_is_upscaled_saved_and_described(webui, upscale_calls):
    p, processed = txt2img(webui, seed=-1)
    assert [im.size for im in processed.images] == [(64, 64), (64, 64)]
    assert [s["image"].size for s in images.saved] == [(64, 64), (64, 64)]  # the saved files are the results
    assert_restored(webui, runs=2)
    status = runner.CACHE.describe()  # the checkpoint went back to the GPU: its CPU copies are not kept
    assert status["base"] is None and status["supir"]["tensors"] > 0
    assert not processed.comments
    # captions come from the generation prompt, without the webui's prompt syntax
    assert all(s.positive_text.startswith("a photo of a red cat, Cinematic") for _, s, _ in upscale_calls)
    # each image's infotext carries the seed SUPIR drew for it
    first, second = (params_of(t) for t in processed.infotexts)
    assert first["SUPIR model"] == "SUPIR-v0Q" and first["SUPIR steps"] == "2"
    assert [int(first["SUPIR seed"]), int(second["SUPIR seed"])] == [
        used.seed for _, _, used in upscale_calls
    ]
    assert first["SUPIR seed"] != second["SUPIR seed"]
    assert "SUPIR positive prompt" not in first  # the Settings default is not repeated in every infotext
    assert images.saved[0]["info"] == processed.infotexts[0]
    # "Size" is the image's own size; the generation's is kept under its own key and pastes back as it was
    assert (first["Size"], first["SUPIR generation size"]) == ("64x64", "32x32")
    from modules import script_callbacks

    pasted = {"Size-1": "64", "Size-2": "64", "SUPIR generation size": "32x32"}
    script_callbacks.infotext_pasted_callback(processed.infotexts[0], pasted)
    assert (pasted["Size-1"], pasted["Size-2"]) == ("32", "32")


def test_progress_shows_supir_stages_and_steps(webui):
    txt2img(webui, batch_size=1, n_iter=2)
    history = shared.state.history
    texts = [v for k, v in history if k == "textinfo" and v]
    assert "SUPIR 1/2: sampling step 1/2" in texts and "SUPIR 2/2: sampling step 2/2" in texts
    assert any(v.endswith("stage 1 (denoise encoder)") for v in texts)
    assert ("sampling_steps", 2) in history
    assert shared.state.job_count == 4 and shared.state.job_no == 4  # 2 generations + 2 SUPIR jobs


def test_infotext_pastes_back_into_the_accordion(webui):
    _, processed = txt2img(
        webui,
        batch_size=1,
        model="SUPIR-v0F",
        linear_cfg=False,
        prompt_source="Custom caption",
        caption="an old photo",
        scale=2.0,
    )
    params = params_of(processed.infotexts[0])
    script = scripts.scripts_txt2img.scripts[0]
    by_component = {id(c): c for c in script.controls}
    from sd_webui_supir.args import ARG_NAMES

    pasted = {}
    for component, key in script.infotext_fields:
        name = ARG_NAMES[[id(c) for c in script.controls].index(id(component))]
        value = key(params) if callable(key) else params.get(key)
        if value is not None:
            pasted[name] = value
    assert id(script.controls[0]) in by_component
    assert pasted["enabled"] is True and pasted["linear_cfg"] is False and pasted["linear_control"] is False
    assert pasted["model"] == "SUPIR-v0F" and pasted["caption"] == "an old photo"
    assert pasted["prompt_source"] == "Custom caption" and float(pasted["scale"]) == 2.0
    assert int(pasted["steps"]) == 2 and int(pasted["seed"]) == 7


def test_img2img_skip_upscales_the_input_without_a_generation(webui, upscale_calls):
    shared.opts.save_images_before_face_restoration = True
    shared.opts.img2img_color_correction = True
    try:
        source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
        runner_ = scripts.scripts_img2img
        p = processing.StableDiffusionProcessingImg2Img(
            init_images=[source],
            prompt="a cat",
            width=48,
            height=48,
            steps=20,
            restore_faces=True,
            scripts=runner_,
            script_args=webui.script_args(runner_, skip_img2img=True),
        )
        processed = processing.process_images(p)
    finally:
        shared.opts.save_images_before_face_restoration = False
        shared.opts.img2img_color_correction = False
    assert p.unet_steps == 0 and p.vae_decoded == 0  # no sampler step, no VAE decode
    assert p.encoded_sizes == [(64, 64)]  # the one thing left: a tiny VAE encode
    ((image, settings, _),) = upscale_calls
    assert np.array_equal(np.asarray(image), np.asarray(source))  # SUPIR got the input itself
    assert [im.size for im in processed.images] == [(80, 80)]
    assert [(s["image"].size, s["suffix"]) for s in images.saved] == [((80, 80), "")]  # no throwaway saved
    params = params_of(processed.infotexts[0])
    assert (
        params["Size"] == "80x80"  # the image's real size; the generation's is kept beside it
        and params["SUPIR generation size"] == "48x48"
        and params["SUPIR skip img2img"] == "True"
        and "Face restoration" not in params
    )
    assert (p.width, p.height, p.restore_faces) == (48, 48, True) and "sample" not in vars(p)
    assert_restored(webui, runs=1)


def test_api_alwayson_args_in_documented_order(webui):
    """/sdapi/v1/txt2img: defaults are the components' initial values, given args overwrite from the start."""
    runner_ = scripts.scripts_txt2img
    script = runner_.scripts[0]
    args = runner_.default_args()
    given = [True, "SUPIR-v0Q", 1.5]
    args[script.args_from : script.args_from + len(given)] = given
    args[script.args_from + 8] = 2  # steps, index 8 in the documented order
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt="x", width=32, height=32, steps=1, scripts=runner_, script_args=args, is_api=True
    )
    processed = processing.process_images(p)
    assert [im.size for im in processed.images] == [(48, 48)]
    assert params_of(processed.infotexts[0])["SUPIR scale"] == "1.5"


def test_settings_save_before_and_memory_policy(webui, monkeypatch):
    policies = []
    real = runner.SUPIRPipeline

    def pipeline(model, device, **kwargs):
        policies.append(kwargs.get("memory"))
        return real(model, device, **kwargs)

    monkeypatch.setattr(runner, "SUPIRPipeline", pipeline)
    shared.opts.supir_save_before = True
    shared.opts.supir_memory_policy = "blocks"
    shared.opts.supir_vram_budget = 3.5
    try:
        txt2img(webui, batch_size=1)
    finally:
        shared.opts.supir_save_before = False
        shared.opts.supir_memory_policy = "auto"
        shared.opts.supir_vram_budget = 0.0
    assert [(s["image"].size, s["suffix"]) for s in images.saved] == [
        ((32, 32), "-before-supir"),
        ((64, 64), ""),
    ]
    assert "SUPIR model" not in images.saved[0]["info"] and "SUPIR model" in images.saved[1]["info"]
    assert [(m.policy, m.budget_bytes) for m in policies] == [("blocks", int(3.5 * 2**30))]


def test_cpu_host_keeps_the_shared_model_and_fp8_tensors_are_used_unchanged(webui):
    """A CPU host: the checkpoint stays put; the cache keeps sharing its tensors, float8 included."""
    from modules import script_callbacks

    model = webui.FakeSdModel(
        {
            k: v.to(torch.float8_e4m3fn) if k.startswith("model.diffusion_model.") and v.dim() >= 2 else v
            for k, v in webui.sdxl._tensors.items()
        }
    )
    model.device = torch.device("cpu")
    sd_models.model_data.set_sd_model(model)
    before = {
        k: v.view(torch.uint8).clone() if v.dtype == torch.float8_e4m3fn else v.clone()
        for k, v in model._tensors.items()
    }
    settings = runner.base_settings().replace(steps=2, s_churn=0.0, seed=1)
    image = Image.new("RGB", (32, 32), "gray")
    assert runner.upscale(image, settings, "Q").image.size == (64, 64)
    assert runner.upscale(image, settings, "Q").image.size == (64, 64)
    assert runner.CACHE.last_event.base == "hit"  # nothing re-read or re-assembled
    assert [name for name, _ in sd_models.calls] == ["send_model_to_cpu", "send_model_to_cpu"]
    assert model.device.type == "cpu"
    for k, v in model._tensors.items():
        now = v.view(torch.uint8) if v.dtype == torch.float8_e4m3fn else v
        assert torch.equal(now, before[k]), k
    script_callbacks.model_loaded_callback(model)  # the webui loaded another checkpoint: stop sharing
    assert runner.CACHE.describe()["base"] is None


def test_storage_dtype_setting(webui):
    precision = precision_for("cpu")
    assert runner.load_options(precision).dtype == torch.float16  # auto
    assert runner.load_options(precision).vae_dtype == torch.float32  # the VAE as it computes
    shared.opts.supir_storage_dtype = "fp8"
    try:
        assert runner.load_options(precision).dtype == torch.float8_e4m3fn
        txt2img(webui, batch_size=1)  # SUPIR's own weights stored in fp8, upcast per layer on the CPU
    finally:
        shared.opts.supir_storage_dtype = "auto"
    assert images.saved[-1]["image"].size == (64, 64)


def total_bar_after(generate) -> tuple[int, int]:
    """(steps counted, total) of the console's "Total progress" bar once the generation is over."""
    shared.state.begin(job="txt2img")
    generate()
    shared.total_tqdm.clear()  # as txt2img / img2img / the API do after each generation
    return shared.total_tqdm.cleared[-1]


def test_console_total_progress_counts_supir_steps(webui):
    # 3 webui steps per generation, 2 SUPIR steps per image: the bar ends full, at exactly these totals
    assert total_bar_after(lambda: txt2img(webui, batch_size=2)) == (3 + 2 * 2,) * 2
    assert total_bar_after(lambda: txt2img(webui, batch_size=1, n_iter=2)) == (2 * 3 + 2 * 2,) * 2


def test_console_total_progress_with_hires_fix(webui):
    # Hires. fix sizes the bar before SUPIR's jobs are counted: SUPIR adds its own steps to it
    runner_ = scripts.scripts_txt2img
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt="a cat",
        width=32,
        height=32,
        steps=3,
        enable_hr=True,
        hr_second_pass_steps=4,
        batch_size=2,
        scripts=runner_,
        script_args=webui.script_args(runner_),
    )
    assert total_bar_after(lambda: processing.process_images(p)) == (3 + 4 + 2 * 2,) * 2


def test_console_total_progress_is_left_alone_outside_generations(webui):
    settings = runner.base_settings().replace(steps=2, s_churn=0.0, seed=1)
    runner.upscale(Image.new("RGB", (32, 32), (90, 60, 30)), settings, "Q")  # API route, Extras
    assert shared.total_tqdm._tqdm is None
