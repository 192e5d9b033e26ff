from __future__ import annotations

import pathlib

import pytest
import torch

from supir_engine.checkpoints import LoadOptions, load_supir
from supir_engine.errors import (
    CheckpointFormatError,
    CheckpointNotFoundError,
    MissingWeightsError,
    SupirError,
    UnsafeCheckpointError,
    WrongModelError,
)
from supir_engine.tiny import random_state_dict, save_checkpoint, split_state_dict

EXACT = LoadOptions(dtype=torch.float32, vae_dtype=torch.float32)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_state_dict(seed=7)


def assert_loaded(model, state, dtype=torch.float32):
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value.to(dtype)), key
    assert not any(t.is_meta for t in loaded.values())


FORMATS = {
    "safetensors-fp32": (".safetensors", torch.float32),
    "safetensors-fp16": (".safetensors", torch.float16),
    "ckpt-fp32": (".ckpt", torch.float32),
    "ckpt-fp16": (".ckpt", torch.float16),
}


@pytest.mark.parametrize("sdxl_format", ["safetensors-fp16", "ckpt-fp32"])
@pytest.mark.parametrize("supir_format", list(FORMATS))
def test_split_files_load_bit_exactly(tmp_path, state, sdxl_format, supir_format):
    sdxl, supir = split_state_dict(state)
    (sdxl_ext, sdxl_dtype), (supir_ext, supir_dtype) = FORMATS[sdxl_format], FORMATS[supir_format]
    sdxl = {k: v.to(sdxl_dtype) for k, v in sdxl.items()}
    supir = {k: v.to(supir_dtype) for k, v in supir.items()}
    model, report = load_supir(
        save_checkpoint(sdxl, tmp_path / f"base{sdxl_ext}"),
        save_checkpoint(supir, tmp_path / f"supir{supir_ext}"),
        EXACT,
    )
    assert_loaded(model, {**sdxl, **supir})
    assert report.files[str(tmp_path / f"base{sdxl_ext}")] == ["unet", "vae", "clip_l", "clip_bigg"]
    assert report.files[str(tmp_path / f"supir{supir_ext}")] == ["projections", "control", "denoise_encoder"]


@pytest.mark.parametrize("ext", [".safetensors", ".ckpt"])
def test_one_merged_file_loads_alone(tmp_path, state, ext):
    path = save_checkpoint(state, tmp_path / f"merged{ext}")
    model, _ = load_supir(path, None, EXACT)
    assert_loaded(model, state)
    model, _ = load_supir(None, path, EXACT)
    assert_loaded(model, state)


def test_storage_dtypes_per_component(tmp_path, state):
    sdxl, supir = split_state_dict(state)
    model, report = load_supir(
        save_checkpoint(sdxl, tmp_path / "b.safetensors"),
        save_checkpoint(supir, tmp_path / "s.safetensors"),
        LoadOptions(dtype=torch.float16),
    )
    dtypes = {c.name: c.dtype for c in report.components}
    assert dtypes == {
        "unet": "float16",
        "projections": "float16",
        "control": "float16",
        "clip_l": "float16",
        "clip_bigg": "float16",
        "vae": "bfloat16",
        "denoise_encoder": "bfloat16",
    }
    assert model.first_stage_model.decoder.conv_in.weight.dtype == torch.bfloat16
    assert model.unet.out[2].weight.dtype == torch.float16
    assert report.resident_bytes == sum(t.nbytes for t in model.state_dict().values()) - sum(
        t.nbytes
        for k, t in model.state_dict().items()
        if k.startswith("denoiser.") or k.endswith("position_ids")
    )


def test_fp16_vae_is_refused(tmp_path, state):
    path = save_checkpoint(state, tmp_path / "m.safetensors")
    with pytest.raises(SupirError, match="NaN"):
        load_supir(path, None, LoadOptions(vae_dtype=torch.float16))


def test_supir_file_overrides_sdxl_keys_it_also_carries(tmp_path, state):
    sdxl, supir = split_state_dict(state)
    key = "model.diffusion_model.out.2.bias"
    supir_with_extra = {**supir, key: torch.full_like(sdxl[key], 3.0)}
    model, _ = load_supir(
        save_checkpoint(sdxl, tmp_path / "b.safetensors"),
        save_checkpoint(supir_with_extra, tmp_path / "s.safetensors"),
        EXACT,
    )
    assert torch.equal(model.state_dict()[key], torch.full_like(sdxl[key], 3.0))


def test_tolerates_the_extra_and_variant_keys_of_real_files(tmp_path, state):
    sdxl, supir = split_state_dict(state)
    clip = "conditioner.embedders.0.transformer."
    sdxl = {(clip + k[len(clip + "text_model.") :] if k.startswith(clip) else k): v for k, v in sdxl.items()}
    attn_q = "first_stage_model.decoder.mid.attn_1.q.weight"
    sdxl[attn_q] = sdxl[attn_q].flatten(1)  # diffusers-style Linear shape
    sdxl["model_ema.decay"] = torch.tensor(0.999)
    sdxl["model_ema.diffusion_modelinput_blocks00weight"] = torch.zeros(3)
    sdxl["denoiser.sigmas"] = torch.zeros(1000)
    sdxl[clip + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    sdxl["conditioner.embedders.1.model.attn_mask"] = torch.zeros(77, 77)
    sdxl["cond_stage_model_leftover.lora_up.weight"] = torch.zeros(2, 2)
    supir["model.control_model.mask_LQ"] = torch.zeros(1, 4, 64, 64)
    base = save_checkpoint(sdxl, tmp_path / "b.safetensors")
    model, report = load_supir(base, save_checkpoint(supir, tmp_path / "s.ckpt"), EXACT)
    assert_loaded(model, split_state_dict(state)[1])
    assert torch.equal(model.state_dict()[attn_q].flatten(1), sdxl[attn_q])
    assert report.ignored_keys == 1  # the unknown leftover; the others are known extras
    assert model.denoiser.sigmas[-1].item() == pytest.approx(14.6146, abs=1e-4)


def _sd15_like() -> dict[str, torch.Tensor]:
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(10, 768),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
    }


def test_sd15_checkpoint_is_named_as_such(tmp_path, state):
    _, supir = split_state_dict(state)
    sd15 = save_checkpoint(_sd15_like(), tmp_path / "v1-5-pruned.safetensors")
    with pytest.raises(WrongModelError, match="SD 1.x checkpoint; SUPIR needs an SDXL") as err:
        load_supir(sd15, save_checkpoint(supir, tmp_path / "s.safetensors"))
    assert err.value.path.name == "v1-5-pruned.safetensors"


def test_sdxl_refiner_is_named_as_such(tmp_path):
    refiner = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(384, 4, 3, 3),
        "conditioner.embedders.0.model.token_embedding.weight": torch.zeros(10, 1280),
    }
    with pytest.raises(WrongModelError, match="refiner"):
        load_supir(save_checkpoint(refiner, tmp_path / "refiner.safetensors"), None)


def test_sdxl_given_as_supir_model_says_it_has_no_control_weights(tmp_path, state):
    sdxl, _ = split_state_dict(state)
    path = save_checkpoint(sdxl, tmp_path / "juggernaut.safetensors")
    with pytest.raises(MissingWeightsError, match="has no SUPIR control weights"):
        load_supir(path, path)


def test_missing_supir_file_is_reported_by_component(tmp_path, state):
    sdxl, _ = split_state_dict(state)
    with pytest.raises(
        MissingWeightsError, match="no SUPIR projection modules weights found in b.safetensors"
    ):
        load_supir(save_checkpoint(sdxl, tmp_path / "b.safetensors"), None)


def test_missing_sdxl_file_is_reported_by_component(tmp_path, state):
    _, supir = split_state_dict(state)
    with pytest.raises(MissingWeightsError, match="no SDXL UNet weights found.*SDXL base checkpoint"):
        load_supir(None, save_checkpoint(supir, tmp_path / "s.safetensors"))


def test_incomplete_component_names_what_is_missing(tmp_path, state):
    sdxl, supir = split_state_dict(state)
    del supir["model.control_model.input_hint_block.0.weight"]
    with pytest.raises(MissingWeightsError, match="1 weights are missing .*control model.*input_hint_block"):
        load_supir(
            save_checkpoint(sdxl, tmp_path / "b.safetensors"), save_checkpoint(supir, tmp_path / "s.ckpt")
        )


def test_file_not_found_says_where_to_get_models(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="file not found.*Fanghua-Yu/SUPIR"):
        load_supir(tmp_path / "SUPIR-v0Q.ckpt", None)


def test_unknown_extension_is_refused(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointFormatError, match="expected .safetensors or .ckpt"):
        load_supir(path, None)


@pytest.mark.parametrize("ext", [".safetensors", ".ckpt"])
def test_truncated_file_is_reported(tmp_path, state, ext):
    path = save_checkpoint(split_state_dict(state)[1], tmp_path / f"SUPIR-v0Q{ext}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated or corrupt") as err:
        load_supir(None, path)
    assert err.value.path == path


class _Payload:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_without_running_it(tmp_path, state):
    marker = tmp_path / "pwned"
    path = tmp_path / "SUPIR-v0Q.ckpt"
    torch.save({"state_dict": split_state_dict(state)[1], "callbacks": _Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="needs code execution.*refused"):
        load_supir(None, path)
    assert not marker.exists()


def test_in_memory_sdxl_tensors_are_shared_not_copied(tmp_path, state):
    """A host's loaded SDXL model (here stored in float8, as the webui can) is used without a copy."""
    sdxl, supir = split_state_dict(state)
    host_tensors = {
        k: v.to(torch.float8_e4m3fn) if k.startswith("model.diffusion_model.") else v.clone()
        for k, v in sdxl.items()
    }
    before = {k: v.clone() for k, v in host_tensors.items()}
    model, report = load_supir(host_tensors, save_checkpoint(supir, tmp_path / "s.safetensors"), EXACT)
    loaded = model.state_dict()
    for key, tensor in host_tensors.items():
        assert loaded[key].data_ptr() == tensor.data_ptr(), key
    assert loaded["model.diffusion_model.out.2.weight"].dtype == torch.float8_e4m3fn
    assert report.files["<in-memory model>"] == ["unet", "vae", "clip_l", "clip_bigg"]
    assert all(torch.equal(before[k].float(), host_tensors[k].float()) for k in host_tensors)
