"""The Forge families: Forge and Forge Neo (``backend``), reForge and Forge Classic (``ldm_patched``).

The fake webui is switched into each family as their sources define it: ``sd_models.send_model_to_cpu``
and ``send_model_to_device`` are no-op stubs (Forge, reForge) or absent (Neo); the loaded checkpoint keeps
its weights in ``forge_objects`` (UNet in SGM layout, VAE in LDM layout, both text encoders as
transformers ``CLIPTextModel``s); memory belongs to the host's model manager; Forge and Neo load the
checkpoint lazily (``FakeInitialModel`` until the first generation, ``forge_model_reload`` loads it).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from modules import postprocessing, sd_models, shared
from PIL import Image

from sd_webui_supir import extras, hosts, runner
from sd_webui_supir.args import from_mapping
from sd_webui_supir.hosts.base import webui_sdxl_tensors
from sd_webui_supir.options import default_args
from supir_engine.clip_layout import BIGG_PREFIX, hf_from_bigg

from .test_extras_upscaler import extras_args

FAKES = Path(__file__).resolve().parent / "fakeforge"
FAKE_PACKAGES = ("backend", "modules_forge", "ldm_patched")
ARGS = {"enabled": True, "steps": 2, "s_churn": 0.0, "seed": 5}


class Placed(torch.nn.Module):
    """A host module that records where the host put it (this machine has no GPU to move it to)."""

    def __init__(self) -> None:
        super().__init__()
        self.where = "cpu"

    def to(self, device=None, *args, **kwargs):
        self.where = torch.device(device).type
        return self


class Tensors(torch.nn.Module):
    """Parameters at the given names (the host's own tensors, shared); refuses to be read off the CPU."""

    def __init__(self, owner: Placed, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.__dict__["owner"] = owner
        for name, tensor in tensors.items():
            *path, leaf = name.split(".")
            module = self
            for part in path:
                if not hasattr(module, part):
                    module.add_module(part, torch.nn.Module())
                module = getattr(module, part)
            module.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=False))

    def state_dict(self, *args, **kwargs):
        if self.owner.where != "cpu":
            raise AssertionError("the host's tensors were read while its model was on the GPU")
        return super().state_dict(*args, **kwargs)


def part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


class Patcher:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.load_device = torch.device("cuda")
        self.offload_device = torch.device("cpu")


def forge_objects(sdxl: dict[str, torch.Tensor], projection_as_linear: bool = True):
    """forge_objects as Forge builds them (backend/diffusion_engine/sdxl.py), around these tensors."""
    unet_model = Placed()
    unet_model.diffusion_model = Tensors(unet_model, part(sdxl, "model.diffusion_model."))
    vae_model = Placed()
    vae_model.add_module("inner", Tensors(vae_model, part(sdxl, "first_stage_model.")))
    clip_model = Placed()
    clip_model.clip_l = torch.nn.Module()
    clip_model.clip_l.transformer = Tensors(clip_model, part(sdxl, "conditioner.embedders.0.transformer."))
    hf = hf_from_bigg(sdxl)
    projection = hf.pop("text_projection.weight")
    clip_model.clip_g = torch.nn.Module()
    clip_model.clip_g.transformer = Tensors(clip_model, {"text_model." + k: v for k, v in hf.items()})
    if projection_as_linear:  # Forge's IntegratedCLIP: its own Linear (a Module, not a torch Linear), P^T
        linear = torch.nn.Module()
        linear.weight = torch.nn.Parameter(projection, requires_grad=False)
        clip_model.clip_g.transformer.text_projection = linear
    else:  # ldm_patched's SDClipModel: the open_clip matrix, applied as x @ P
        clip_model.clip_g.text_projection = torch.nn.Parameter(projection.t(), requires_grad=False)
    clip_model.clip_g.logit_scale = torch.nn.Parameter(torch.tensor(4.6055), requires_grad=False)

    unet = types.SimpleNamespace(model=unet_model)
    unet.__dict__.update(vars(Patcher(unet_model)))
    vae = types.SimpleNamespace(first_stage_model=vae_model.inner, patcher=Patcher(vae_model))
    vae.first_stage_model.__dict__["owner"] = vae_model
    clip = types.SimpleNamespace(cond_stage_model=clip_model, patcher=Patcher(clip_model))
    return types.SimpleNamespace(unet=unet, clip=clip, vae=vae, clipvision=None)


class FakeInitialModel:
    def __init__(self) -> None:
        self.cond_stage_model = None
        self.chunk_length = 75


class ForgeSdxl:
    """Forge's StableDiffusionXL as the webui code sees it (ForgeDiffusionEngine)."""

    def __init__(self, sdxl: dict[str, torch.Tensor], title: str, projection_as_linear: bool = True) -> None:
        self.forge_objects = forge_objects(sdxl, projection_as_linear)
        self.is_sdxl = True
        self.first_stage_model = self.cond_stage_model = None
        self.sd_checkpoint_info = sd_models.CheckpointInfo(f"/models/Stable-diffusion/{title}", title)
        self.sd_model_hash = "89abcdef"
        self.current_lora_hash = str([])

    def patchers(self) -> list:
        objects = self.forge_objects
        return [objects.unet, objects.clip.patcher, objects.vae.patcher]


class Family:
    def __init__(self, name: str, memory, sdxl: dict[str, torch.Tensor]) -> None:
        self.name, self.memory, self.sdxl = name, memory, sdxl
        self.reloads = 0
        self.model: ForgeSdxl | None = None

    def load(self) -> None:
        """What Forge does when its UI starts and then generates: parameters set, checkpoint loaded."""
        importlib.import_module("modules_forge.main_entry").refresh_model_loading_parameters()
        sd_models.forge_model_reload()

    def generate(self) -> None:
        """What a generation leaves behind: the model's parts loaded on the GPU by the manager."""
        self.memory.load_models_gpu(self.model.patchers())
        self.memory.calls.clear()

    def calls(self) -> list[str]:
        return [name for name, _ in self.memory.calls]


def _drop_fake_packages() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in FAKE_PACKAGES:
            del sys.modules[name]


def _enter(monkeypatch, folder: str) -> None:
    _drop_fake_packages()
    monkeypatch.syspath_prepend(str(FAKES / folder))
    importlib.invalidate_caches()
    monkeypatch.setattr(sd_models, "send_model_to_cpu", lambda m: None)  # Forge's stubs
    monkeypatch.setattr(sd_models, "send_model_to_device", lambda m: None)


@pytest.fixture
def forge(webui, monkeypatch, request):
    """Forge (or Neo, with ``neo`` as the param) before its first generation: FakeInitialModel."""
    a1111_reference(webui)
    _enter(monkeypatch, "forge")
    memory = importlib.import_module("backend.memory_management")
    family = Family("forge", memory, webui_sdxl_tensors(webui.sdxl.state_dict_on_cpu()))
    neo = getattr(request, "param", "forge") == "neo"
    family.variant = "neo" if neo else "forge"
    if neo:
        monkeypatch.setattr(importlib.import_module("backend.args"), "dynamic_args", types.SimpleNamespace())
        monkeypatch.delattr(sd_models, "send_model_to_cpu")  # Neo removed them
        monkeypatch.delattr(sd_models, "send_model_to_device")
    info = sd_models.CheckpointInfo(
        "/models/Stable-diffusion/forge-sdxl.safetensors", "forge-sdxl.safetensors"
    )
    monkeypatch.setitem(sd_models.checkpoints_list, info.title, info)
    monkeypatch.setitem(shared.opts.data, "sd_model_checkpoint", info.title)
    sd_models.model_data.sd_model = FakeInitialModel()
    monkeypatch.setattr(sd_models.model_data, "forge_loading_parameters", {}, raising=False)
    monkeypatch.setattr(sd_models.model_data, "forge_hash", "", raising=False)

    def forge_model_reload():
        key = str(sd_models.model_data.forge_loading_parameters)
        if sd_models.model_data.forge_hash == key:
            return sd_models.model_data.sd_model, False
        family.reloads += 1
        family.model = ForgeSdxl(family.sdxl, info.title)
        sd_models.model_data.sd_model = family.model
        sd_models.model_data.forge_hash = key
        return family.model, True

    monkeypatch.setattr(sd_models, "forge_model_reload", forge_model_reload, raising=False)
    memory.current_loaded_models.clear()
    memory.calls.clear()
    adapter = hosts.activate()
    assert adapter.family == "forge" and adapter.name == ("Forge Neo" if neo else "Forge")
    runner.release()
    yield family
    runner.release()
    hosts.activate("a1111")
    _drop_fake_packages()


@pytest.fixture
def reforge(webui, monkeypatch):
    """reForge: the A1111 model object with forge_objects beside it, loaded at start."""
    a1111_reference(webui)
    _enter(monkeypatch, "reforge")
    memory = importlib.import_module("ldm_patched.modules.model_management")
    family = Family("reforge", memory, webui_sdxl_tensors(webui.sdxl.state_dict_on_cpu()))
    family.model = ForgeSdxl(family.sdxl, "reforge-sdxl.safetensors", projection_as_linear=False)
    sd_models.model_data.sd_model = family.model
    memory.current_loaded_models.clear()
    adapter = hosts.activate()
    assert adapter.family == "reforge"
    runner.release()
    yield family
    runner.release()
    hosts.activate("a1111")
    _drop_fake_packages()


def image() -> Image.Image:
    rng = np.random.default_rng(4)
    return Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))


_REFERENCE: list[np.ndarray] = []


def a1111_reference(webui) -> np.ndarray:
    """The image SUPIR gives on AUTOMATIC1111 with the same SDXL tensors (computed before any switch)."""
    if not _REFERENCE:
        runner.release()
        result, _ = extras.upscale_image(image(), from_mapping(ARGS, default_args()))
        runner.release()
        _REFERENCE.append(np.asarray(result))
    return _REFERENCE[0]


# ------------------------------------------------------------------------------------------ detection


def test_detection_follows_the_host_packages(webui, monkeypatch):
    assert hosts.detect() == "a1111"
    _enter(monkeypatch, "forge")
    assert hosts.detect() == "forge"
    monkeypatch.syspath_prepend(str(FAKES / "reforge"))
    _drop_fake_packages()
    sys.path.remove(str(FAKES / "forge"))
    importlib.invalidate_caches()
    assert hosts.detect() == "reforge"
    _drop_fake_packages()


# ------------------------------------------------------------------------------------------ Forge / Neo


@pytest.mark.parametrize("forge", ["forge", "neo"], indirect=True)
def test_extras_on_forge_loads_the_selected_checkpoint_and_shares_its_tensors(webui, forge):
    reference = a1111_reference(webui)
    status = runner.model_status()
    assert status["sdxl_problem"] is None  # not "the loaded checkpoint (unknown) is not an SDXL model"
    assert "forge-sdxl.safetensors (loaded when SUPIR runs)" in status["sdxl_base_in_use"]

    result, info = extras.upscale_image(image(), from_mapping(ARGS, default_args()))
    assert forge.reloads == 1
    # The same tensors through Forge's layouts (CLIP-G as a transformers CLIPTextModel): the same pixels.
    assert np.array_equal(np.asarray(result), reference)
    model = runner.CACHE.get(runner.resolve_base().source, runner.supir_files()["Q"])
    unet = forge.model.forge_objects.unet.model.diffusion_model
    ours = {p.data_ptr() for p in model.parameters()}
    assert unet.get_parameter("input_blocks.0.0.weight").data_ptr() in ours
    clip_l = forge.model.forge_objects.clip.cond_stage_model.clip_l.transformer
    assert clip_l.text_model.final_layer_norm.weight.data_ptr() in ours
    assert "shared, not copied" in runner.model_status()["sdxl_base_in_use"]


@pytest.mark.parametrize("forge", ["forge", "neo"], indirect=True)
def test_forge_memory_goes_through_its_model_manager(webui, forge):
    forge.load()
    forge.generate()
    unet_model = forge.model.forge_objects.unet.model
    assert unet_model.where == "cuda"
    seen = []
    host = runner.WebuiHost()
    host.before_restore.append(lambda: seen.append(unet_model.where))
    with host.lease():
        assert unet_model.where == "cpu"  # send_model_to_cpu is a no-op there: the manager unloaded it
    assert seen == ["cpu"]
    assert forge.calls()[0] == "unload_all_models" and "load_models_gpu" in forge.calls()
    restored = dict(forge.memory.calls)["load_models_gpu"]
    assert {id(p) for p in restored} == {id(p) for p in forge.model.patchers()}
    assert unet_model.where == "cuda"


def test_forge_model_never_loaded_on_the_gpu_is_left_in_ram(webui, forge):
    forge.load()  # loaded, no generation yet: nothing on the GPU
    with runner.WebuiHost().lease():
        pass
    assert "load_models_gpu" not in forge.calls()
    assert forge.model.forge_objects.unet.model.where == "cpu"


def test_forge_restore_failure_leaves_everything_in_ram_and_says_so(webui, forge, monkeypatch):
    forge.load()
    forge.generate()

    def out_of_memory(models, *args, **kwargs):
        models[0].model.to("cuda")
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(forge.memory, "load_models_gpu", out_of_memory)
    host = runner.WebuiHost()
    with host.lease():
        pass
    assert host.restore_failure and "left in RAM" in host.restore_failure
    assert forge.model.forge_objects.unet.model.where == "cpu"


def test_quantized_forge_unet_asks_for_the_base_file_and_keeps_the_image(webui, forge):
    forge.load()
    unet = forge.model.forge_objects.unet.model.diffusion_model
    packed = torch.nn.Parameter(torch.zeros(8, dtype=torch.uint8), requires_grad=False)
    packed.gguf_cls = "Q4_K"
    unet.get_submodule("input_blocks.0.0").register_parameter("weight", packed)
    status = runner.model_status()
    assert "GGUF" in status["sdxl_problem"] and "SDXL base model SUPIR runs on" in status["sdxl_problem"]
    source = image()
    pp = types.SimpleNamespace(image=source, info={})
    extras.process(pp, ARGS)
    assert pp.image is source and "GGUF" in pp.info["SUPIR"]


def test_forge_extras_tab_end_to_end(webui, forge):
    images, html_info, _ = postprocessing.run_postprocessing(0, image(), None, "", "", True, *extras_args())
    assert images[0].size == (64, 64) and "SUPIR model: SUPIR-v0Q" in html_info
    assert forge.reloads == 1 and forge.calls()[0] == "unload_all_models"


# ------------------------------------------------------------------------------------------ reForge


def test_reforge_shares_forge_objects_with_the_ldm_patched_clip_projection(webui, reforge):
    reference = a1111_reference(webui)
    reforge.generate()
    result, _ = extras.upscale_image(image(), from_mapping(ARGS, default_args()))
    assert np.array_equal(np.asarray(result), reference)
    assert reforge.calls()[0] == "unload_all_models" and "load_models_gpu" in reforge.calls()
    assert reforge.model.forge_objects.unet.model.where == "cuda"


def test_hf_layout_round_trip_is_exact(webui):
    sdxl = webui_sdxl_tensors(webui.sdxl.state_dict_on_cpu())
    objects = forge_objects(sdxl)
    from sd_webui_supir.hosts.forge import clip_g_tensors

    back = clip_g_tensors(objects.clip.cond_stage_model.clip_g)
    for key, tensor in sdxl.items():
        if key.startswith(BIGG_PREFIX) and not key.endswith("logit_scale"):
            assert torch.equal(back[key], tensor), key


# ------------------------------------------------------------------------------------------ LoRA


def _merged(monkeypatch, names, overrides):
    from sd_webui_supir import lora

    monkeypatch.setattr(lora, "merged_loras", lambda model=None: list(names))
    seen = []

    def unmerged(model, family):
        seen.append(family)
        return overrides

    monkeypatch.setattr(lora, "unmerged_overrides", unmerged)
    return seen


@pytest.mark.parametrize("forge", ["forge", "neo"], indirect=True)
def test_forge_loras_are_named_and_can_be_left_out(webui, forge, monkeypatch):
    from sd_webui_supir.args import result_params
    from sd_webui_supir.options import LORA_AS_LOADED, LORA_WITHOUT

    forge.load()
    unet = forge.model.forge_objects.unet.model.diffusion_model
    live = unet.get_parameter("input_blocks.0.0.weight")
    backup = live.detach().clone() + 1.0  # what the weight was before the LoRA was merged in
    seen = _merged(
        monkeypatch, ["detail:0.8"], {"unet.model.diffusion_model.input_blocks.0.0.weight": backup}
    )
    args = from_mapping(ARGS, default_args())

    monkeypatch.setitem(shared.opts.data, "supir_lora", LORA_AS_LOADED)
    merged_image, result = extras.upscale_image(image(), args)
    assert result_params(args, result)["SUPIR base LoRA"] == "detail:0.8" and seen == []
    assert result_params(args, result)["SUPIR base"] == "forge-sdxl.safetensors"

    monkeypatch.setitem(shared.opts.data, "supir_lora", LORA_WITHOUT)
    clean_image, result = extras.upscale_image(image(), args)
    assert result_params(args, result)["SUPIR base LoRA"] == "detail:0.8 (left out)"
    assert seen == [forge.variant]
    model = runner.CACHE.get(runner.resolve_base().source, runner.supir_files()["Q"])
    pointers = {p.data_ptr() for p in model.parameters()}
    assert backup.data_ptr() in pointers and live.data_ptr() not in pointers
    assert not np.array_equal(np.asarray(merged_image), np.asarray(clean_image))


def test_a1111_loras_left_out_use_the_webuis_backups(webui, monkeypatch):
    from sd_webui_supir.args import result_params
    from sd_webui_supir.options import LORA_WITHOUT

    key = "model.diffusion_model.input_blocks.0.0.weight"
    backup = webui.sdxl.state_dict_on_cpu()[key].clone()
    seen = _merged(monkeypatch, ["style:0.5/1"], {key: backup})
    monkeypatch.setitem(shared.opts.data, "supir_lora", LORA_WITHOUT)
    runner.release()
    args = from_mapping(ARGS, default_args())
    _, result = extras.upscale_image(image(), args)
    assert result_params(args, result)["SUPIR base LoRA"] == "style:0.5/1 (left out)" and seen == ["a1111"]
    webui.sdxl.to("cpu")
    model = runner.CACHE.get(runner.resolve_base().source, runner.supir_files()["Q"])
    assert backup.data_ptr() in {p.data_ptr() for p in model.parameters()}
    runner.release()


# ------------------------------------------------------------------------------------------ every entry point


@pytest.mark.parametrize("forge", ["forge", "neo"], indirect=True)
def test_forge_txt2img_batch_is_upscaled_with_the_host_model_given_back(webui, forge):
    from .test_generation import params_of, txt2img

    forge.load()
    forge.generate()
    _, processed = txt2img(webui, batch_size=2)
    assert [im.size for im in processed.images] == [(64, 64), (64, 64)]
    params = params_of(processed.infotexts[0])
    assert params["SUPIR model"] == "SUPIR-v0Q" and params["SUPIR base"] == "forge-sdxl.safetensors"
    assert forge.calls().count("unload_all_models") == 2 and forge.calls().count("load_models_gpu") == 2
    assert forge.model.forge_objects.unet.model.where == "cuda"


def test_forge_img2img_skip_and_upscaler_and_api_route(webui, forge):
    import base64
    import io

    from modules import processing, scripts

    from .test_api_routes import REQUEST, client

    forge.load()
    forge.generate()
    source = image()
    runner_ = scripts.scripts_img2img
    p = processing.StableDiffusionProcessingImg2Img(
        init_images=[source],
        prompt="a cat",
        width=32,
        height=32,
        steps=20,
        scripts=runner_,
        script_args=webui.script_args(runner_, skip_img2img=True),
    )
    processed = processing.process_images(p)
    assert p.unet_steps == 0 and [im.size for im in processed.images] == [(64, 64)]

    upscaler = {u.name: u for u in shared.sd_upscalers}["SUPIR-v0F"]
    assert upscaler.scaler.upscale(source, 2, upscaler.data_path).size == (64, 64)
    assert "SUPIR upscaler" not in (shared.state.textinfo or "") or "failed" not in shared.state.textinfo

    response = client().post("/supir/v1/upscale", json=REQUEST)
    assert response.status_code == 200, response.text
    out = Image.open(io.BytesIO(base64.b64decode(response.json()["image"])))
    assert out.size == (64, 64) and "SUPIR base: forge-sdxl.safetensors" in out.info["parameters"]
    models = client().get("/supir/v1/models").json()
    assert models["host"] == "Forge" and models["sdxl_problem"] is None
    assert (
        forge.calls().count("unload_all_models") == 3 and forge.model.forge_objects.unet.model.where == "cuda"
    )
