"""Merged LoRAs and their backups, on fakes of each host's LoRA structures.

The fakes reproduce what the hosts leave on their models after merging, as their sources do it:
A1111 ``extensions-builtin/Lora/networks.py`` (``network_apply_weights``), Forge / older Neo
``backend/patcher/lora.py`` (``LoraLoader.refresh``), reForge / newer Neo ComfyUI-style
``ModelPatcher.patch_weight_to_device`` / ``unpatch_model`` and ``networks.load_networks``
(``current_lora_hash``).
"""

from __future__ import annotations

import collections
import sys
import types

import pytest
import torch
from torch import nn

from sd_webui_supir import lora

# A1111


class FakeNetwork:
    """networks' ``network.Network``: the fields ``network_apply_weights`` reads."""

    def __init__(self, name: str, te: float, unet: float, filename: str | None = None) -> None:
        self.name = self.mentioned_name = name
        self.te_multiplier, self.unet_multiplier, self.dyn_dim = te, unet, None
        self.network_on_disk = types.SimpleNamespace(filename=filename or f"/loras/{name}.safetensors")


@pytest.fixture
def networks(monkeypatch):
    """The Lora extension's ``networks`` module as the webui has it imported (a top-level module)."""
    module = types.ModuleType("networks")
    module.loaded_networks = []
    monkeypatch.setitem(sys.modules, "networks", module)
    return module


class Wrapped(nn.Module):
    """sd_hijack's wrapper around a text encoder: the original is ``.wrapped``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.wrapped = inner


def tiny_a1111() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Module()
    model.model = nn.Module()
    model.model.diffusion_model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Linear(4, 4), nn.GroupNorm(2, 4))
    open_clip = nn.Module()
    open_clip.model = nn.Module()
    open_clip.model.transformer = nn.Module()
    open_clip.model.transformer.resblocks = nn.ModuleList([nn.Module()])
    open_clip.model.transformer.resblocks[0].attn = nn.MultiheadAttention(4, 2)
    open_clip.model.transformer.resblocks[0].ln_1 = nn.LayerNorm(4)
    model.conditioner = nn.Module()
    model.conditioner.embedders = nn.ModuleList([Wrapped(nn.Linear(3, 4)), Wrapped(open_clip)])
    return model


def a1111_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose forward runs: MultiheadAttention uses its out_proj's tensors without calling it."""
    kinds = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm, nn.MultiheadAttention)
    inside_mha = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    return [m for m in model.modules() if isinstance(m, kinds) and id(m) not in inside_mha]


def backup_of(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.to("cpu", copy=True)


@torch.no_grad()
def a1111_forward(layer: nn.Module, loaded: list[FakeNetwork]) -> None:
    """What ``network_apply_weights`` leaves on a layer when it runs its forward with ``loaded``."""
    wanted = tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in loaded)
    mha = isinstance(layer, nn.MultiheadAttention)
    if getattr(layer, "network_weights_backup", None) is None and wanted:
        if mha:
            layer.network_weights_backup = (backup_of(layer.in_proj_weight), backup_of(layer.out_proj.weight))
        else:
            layer.network_weights_backup = backup_of(layer.weight)
        layer.network_bias_backup = backup_of(layer.out_proj.bias if mha else layer.bias)
    if getattr(layer, "network_current_names", ()) == wanted:
        return
    backup = getattr(layer, "network_weights_backup", None)
    if backup is not None:  # restore, then merge every loaded network
        if mha:
            layer.in_proj_weight.copy_(backup[0])
            layer.out_proj.weight.copy_(backup[1])
        else:
            layer.weight.copy_(backup)
    for _ in loaded:
        for weight in (layer.in_proj_weight, layer.out_proj.weight) if mha else (layer.weight,):
            weight += 0.25
    layer.network_current_names = wanted


def a1111_generate(model: nn.Module, networks, loaded: list[FakeNetwork], only=None) -> None:
    """A generation: the extension sets ``loaded_networks``, then the layers that run merge them."""
    networks.loaded_networks[:] = loaded
    for layer in only if only is not None else a1111_layers(model):
        a1111_forward(layer, networks.loaded_networks)


def test_a1111_lists_merged_loras_as_the_prompt_writes_them(networks):
    model = tiny_a1111()
    a1111_generate(model, networks, [FakeNetwork("detail", 0.8, 0.8), FakeNetwork("style", 0.5, 1.0)])

    assert lora.merged_loras(model) == ["detail:0.8", "style:0.5/1"]


def test_a1111_reports_the_loaded_model_by_default(networks, monkeypatch):
    from modules import sd_models

    model = tiny_a1111()
    a1111_generate(model, networks, [FakeNetwork("detail", 0.6, 0.6)])
    monkeypatch.setattr(sd_models.model_data, "sd_model", model)
    assert lora.merged_loras() == ["detail:0.6"]

    monkeypatch.setattr(sd_models.model_data, "sd_model", None)
    assert lora.merged_loras() == []


def test_a1111_overrides_are_the_backups_under_state_dict_names(networks):
    model = tiny_a1111()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a1111_generate(model, networks, [FakeNetwork("detail", 1.0, 1.0)])
    state = model.state_dict()

    overrides = lora.unmerged_overrides(model, "a1111")

    altered = {k for k in state if not torch.equal(state[k], before[k])}
    assert altered and altered <= set(overrides) <= set(state)
    attn = "conditioner.embedders.1.wrapped.model.transformer.resblocks.0.attn."
    mha = model.conditioner.embedders[1].wrapped.model.transformer.resblocks[0].attn
    assert overrides[attn + "in_proj_weight"].data_ptr() == mha.network_weights_backup[0].data_ptr()
    assert overrides[attn + "out_proj.weight"].data_ptr() == mha.network_weights_backup[1].data_ptr()
    assert overrides[attn + "out_proj.bias"].data_ptr() == mha.network_bias_backup.data_ptr()
    conv = model.model.diffusion_model[0]
    assert overrides["model.diffusion_model.0.weight"].data_ptr() == conv.network_weights_backup.data_ptr()
    assert overrides["model.diffusion_model.0.bias"].data_ptr() == conv.network_bias_backup.data_ptr()
    assert "conditioner.embedders.0.wrapped.weight" in overrides
    for key, tensor in overrides.items():
        assert torch.equal(tensor, before[key]), key


def test_a1111_shared_module_is_named_as_state_dict_names_it(networks):
    model = tiny_a1111()
    model.conditioner.alias = model.conditioner.embedders[0]  # one module, two state_dict names
    a1111_generate(model, networks, [FakeNetwork("detail", 1.0, 1.0)])

    overrides = lora.unmerged_overrides(model, "a1111")

    assert {"conditioner.alias.wrapped.weight", "conditioner.embedders.0.wrapped.weight"} <= set(overrides)
    assert set(overrides) <= set(model.state_dict())


def test_a1111_component_not_merged_counts_as_zero(networks):
    model = tiny_a1111()
    unet_layers = a1111_layers(model.model)
    a1111_generate(model, networks, [FakeNetwork("style", 0.5, 0.8)], only=unet_layers)

    assert lora.merged_loras(model) == ["style:0/0.8"]
    assert all(key.startswith("model.diffusion_model.") for key in lora.unmerged_overrides(model, "a1111"))


def test_a1111_nothing_merged(networks):
    model = tiny_a1111()
    assert lora.merged_loras(model) == []
    assert lora.unmerged_overrides(model, "a1111") == {}

    a1111_generate(model, networks, [FakeNetwork("detail", 1.0, 1.0)])
    a1111_generate(model, networks, [])  # a generation without LoRA restores; the backups stay
    assert model.model.diffusion_model[1].network_weights_backup is not None
    assert lora.merged_loras(model) == []
    assert lora.unmerged_overrides(model, "a1111") == {}


def test_no_networks_module_no_lora_support(monkeypatch):
    monkeypatch.delitem(sys.modules, "networks", raising=False)
    model = tiny_a1111()
    assert lora.merged_loras(model) == []
    assert lora.unmerged_overrides(model, "a1111") == {}
    assert lora.merged_loras(types.SimpleNamespace()) == []


# Forge main / older Neo: LoraLoader


class FakeLoraLoader:
    """``backend/patcher/lora.py`` ``LoraLoader``: backups keyed by parameter name inside its model."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.backup, self.loaded_hash = model, {}, str([])

    @torch.no_grad()
    def refresh(self, lora_patches: dict[tuple, list[str]]) -> None:
        for key, weight in self.backup.items():
            set_parameter(self.model, key, weight)
        self.backup = {}
        for (_, strength, _, online), keys in lora_patches.items():
            for key in keys if not online else ():
                weight = self.model.get_parameter(key)
                self.backup.setdefault(key, weight.to(device="cpu"))  # on the CPU: the Parameter itself
                set_parameter(self.model, key, nn.Parameter(weight + strength, requires_grad=False))
        self.loaded_hash = str(list(lora_patches.keys()))


def set_parameter(model: nn.Module, key: str, weight: torch.Tensor) -> None:
    owner, _, name = key.rpartition(".")
    setattr(model.get_submodule(owner), name, weight)


def forge_models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(1)
    kmodel = nn.Module()  # backend/modules/k_model.py KModel
    kmodel.diffusion_model = nn.Sequential(nn.Linear(4, 4), nn.Conv2d(4, 4, 1))
    text = nn.ModuleDict({"clip_l": nn.Linear(3, 4), "clip_g": nn.Linear(3, 4)})  # JointTextEncoder
    return kmodel, text


def forge_checkpoint(patcher) -> types.SimpleNamespace:
    kmodel, text = forge_models()
    unet = types.SimpleNamespace(model=kmodel)
    clip = types.SimpleNamespace(cond_stage_model=text, patcher=types.SimpleNamespace(model=text))
    for p in (unet, clip.patcher):
        patcher(p)
    forge_objects = types.SimpleNamespace(unet=unet, clip=clip)
    return types.SimpleNamespace(forge_objects=forge_objects, current_lora_hash=str([]))


def with_lora_loader(patcher) -> None:
    patcher.model.lora_loader = FakeLoraLoader(patcher.model)  # ModelPatcher.__init__ puts it on the model
    patcher.lora_loader = patcher.model.lora_loader


UNET_KEYS = ["diffusion_model.0.weight", "diffusion_model.1.bias"]
CLIP_KEYS = ["clip_l.weight", "clip_g.bias"]


def test_forge_lists_merged_loras_and_skips_online_ones(networks):
    sd = forge_checkpoint(with_lora_loader)
    networks.loaded_networks[:] = [FakeNetwork("Detail Alias", 0.8, 0.8, "/loras/detail_v2.safetensors")]
    unet, clip = sd.forge_objects.unet.lora_loader, sd.forge_objects.clip.patcher.lora_loader
    unet.refresh(
        {
            ("/loras/detail_v2.safetensors", 0.8, 1.0, False): UNET_KEYS,
            ("/loras/unet_only.safetensors", 0.7, 1.0, False): UNET_KEYS[:1],
            ("/loras/streamed.safetensors", 1.0, 1.0, True): UNET_KEYS,
        }
    )
    clip.refresh({("/loras/detail_v2.safetensors", 0.5, 1.0, False): CLIP_KEYS})

    assert lora.merged_loras(sd) == ["Detail Alias:0.5/0.8", "unet_only:0/0.7"]


def test_forge_overrides_are_the_loader_backups(networks):
    sd = forge_checkpoint(with_lora_loader)
    fo = sd.forge_objects
    originals = {f"unet.model.{k}": fo.unet.model.get_parameter(k) for k in UNET_KEYS}
    originals |= {f"clip.cond_stage_model.{k}": fo.clip.cond_stage_model.get_parameter(k) for k in CLIP_KEYS}
    fo.unet.lora_loader.refresh({("/loras/a.safetensors", 1.0, 1.0, False): UNET_KEYS})
    fo.clip.patcher.lora_loader.refresh({("/loras/a.safetensors", 1.0, 1.0, False): CLIP_KEYS})

    for source in (fo, sd):
        overrides = lora.unmerged_overrides(source, "forge")
        assert set(overrides) == set(originals)
        for key, tensor in overrides.items():
            assert tensor.data_ptr() == originals[key].data_ptr(), key
            live = lora._attribute(fo, key)
            assert live.shape == tensor.shape and not torch.equal(live, tensor), key


def test_forge_nothing_merged(networks):
    sd = forge_checkpoint(with_lora_loader)
    assert lora.merged_loras(sd) == []
    assert lora.unmerged_overrides(sd.forge_objects, "neo") == {}

    loader = sd.forge_objects.unet.lora_loader
    loader.refresh({("/loras/a.safetensors", 1.0, 1.0, False): UNET_KEYS})
    loader.refresh({})  # a generation without LoRA restores and clears the backups
    assert lora.merged_loras(sd) == []
    assert lora.unmerged_overrides(sd.forge_objects, "forge") == {}

    loader.refresh({("/loras/a.safetensors", 1.0, 1.0, True): UNET_KEYS})  # online: applied in forward
    assert lora.merged_loras(sd) == []
    assert lora.unmerged_overrides(sd.forge_objects, "forge") == {}


def test_forge_without_networks_module_names_by_file(monkeypatch):
    monkeypatch.delitem(sys.modules, "networks", raising=False)
    sd = forge_checkpoint(with_lora_loader)
    sd.forge_objects.unet.lora_loader.refresh({("/loras/detail_v2.safetensors", 1.0, 1.0, False): UNET_KEYS})

    assert lora.merged_loras(sd) == ["detail_v2:0/1"]


# reForge / newer Neo: ComfyUI-style ModelPatcher

Dimension = collections.namedtuple("Dimension", ["weight", "inplace_update"])


def with_comfy_backup(patcher) -> None:
    patcher.backup = {}


@torch.no_grad()
def comfy_patch(patcher, keys: list[str], strength: float, inplace_update: bool = False) -> None:
    """``ModelPatcher.patch_weight_to_device`` for each key, as ``load`` runs it on a model load."""
    for key in keys:
        weight = patcher.model.get_parameter(key)
        if key not in patcher.backup:
            patcher.backup[key] = Dimension(weight.to(device="cpu", copy=inplace_update), inplace_update)
        merged = weight + strength
        if inplace_update:
            weight.copy_(merged)
        else:
            set_parameter(patcher.model, key, nn.Parameter(merged, requires_grad=False))


def comfy_unpatch(patcher) -> None:
    for key, saved in patcher.backup.items():
        set_parameter(patcher.model, key, saved.weight)
    patcher.backup.clear()


def test_reforge_names_from_the_checkpoint_and_backups_from_the_patchers(networks):
    sd = forge_checkpoint(with_comfy_backup)
    fo = sd.forge_objects
    sd.current_lora_hash = str(
        [["/loras/detail.safetensors", 0.8, 0.4], ["/loras/style.safetensors", 1.0, 1.0]]
    )
    originals = {f"unet.model.{k}": fo.unet.model.get_parameter(k) for k in UNET_KEYS}
    comfy_patch(fo.unet, UNET_KEYS, 0.8)
    comfy_patch(fo.clip.patcher, CLIP_KEYS, 0.4, inplace_update=True)

    assert lora.merged_loras(sd) == ["detail:0.4/0.8", "style:1"]
    overrides = lora.unmerged_overrides(sd, "reforge")
    assert set(overrides) == set(originals) | {f"clip.cond_stage_model.{k}" for k in CLIP_KEYS}
    for key in originals:
        assert overrides[key].data_ptr() == originals[key].data_ptr(), key
    for key in CLIP_KEYS:
        saved = fo.clip.patcher.backup[key].weight
        assert overrides[f"clip.cond_stage_model.{key}"].data_ptr() == saved.data_ptr()


def test_reforge_unpatched_text_encoders_count_as_zero_then_nothing(networks):
    sd = forge_checkpoint(with_comfy_backup)
    fo = sd.forge_objects
    sd.current_lora_hash = str([["/loras/detail.safetensors", 0.8, 0.4]])
    comfy_patch(fo.unet, UNET_KEYS, 0.8)
    assert lora.merged_loras(sd) == ["detail:0/0.8"]

    comfy_unpatch(fo.unet)  # the model was unloaded: weights restored, backups cleared
    assert lora.merged_loras(sd) == []
    assert lora.unmerged_overrides(fo, "reforge") == {}


def test_unknown_family_says_which_exist():
    with pytest.raises(ValueError, match="'a1111', 'forge'"):
        lora.unmerged_overrides(tiny_a1111(), "comfy")
