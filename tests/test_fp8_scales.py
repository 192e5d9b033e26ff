"""fp8 weight storage with per-tensor scales: accuracy against fp16, what stays fp16, and that the scales
survive loading, the model cache and residency."""

from __future__ import annotations

import math

import pytest
import torch

from supir_engine.checkpoints import LoadOptions, StateDictSource, load_supir
from supir_engine.memory import MemoryConfig, Residency, apply_storage, convert_storage
from supir_engine.memory.storage import FP8_SCALE_SUFFIX, keeps_16bit, set_scale
from supir_engine.model_cache import ModelCache, split_model
from supir_engine.models import build_supir
from supir_engine.sampling import Conditioning, Denoiser
from supir_engine.tiny import TINY_CONFIG, random_state_dict, save_checkpoint, split_state_dict

F8 = torch.float8_e4m3fn


def trained_like_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Tiny-model weights whose per-layer spread resembles a trained SDXL's.

    Each matrix / kernel gets std = gain / sqrt(fan_in), where fan_in is drawn log-uniformly from the
    range of SDXL's layers that hold nearly all its bytes (640 for 640-wide linears up to 11520 for 3x3
    convs over 1280 channels) instead of the tiny layer's own, and the gain log-uniformly from [0.5, 1.5]:
    per-layer stds from about 0.005 to 0.06, many of them at 0.005-0.01 as in SDXL. SUPIR's
    zero-initialised connectors get std 0.001-0.003.
    Vectors: biases std 0.01, norm weights 1 +- 0.05 (as ``random_state_dict`` gives them).
    """
    g = torch.Generator().manual_seed(seed)
    state = random_state_dict(TINY_CONFIG, seed=seed)
    for key, t in state.items():
        if t.dim() < 2 or key.startswith("first_stage_model."):
            continue
        u = torch.rand(2, generator=g).tolist()
        if ".zero_" in key:
            std = 0.001 * 3 ** u[0]
        else:
            fan_in = math.exp(math.log(640) + u[0] * math.log(11520 / 640))
            std = math.exp(math.log(0.5) + u[1] * math.log(3)) / math.sqrt(fan_in)
        state[key] = torch.randn(t.shape, generator=g) * std
    return state


def _model(state: dict[str, torch.Tensor], storage: torch.dtype):
    model, _ = load_supir(StateDictSource(state, share=False), None, LoadOptions(dtype=storage))
    return model


def _unscaled(model):
    """The cast before scales: every fp8 tensor holds its values cast straight to fp8, without a scale."""
    for module in model.modules():
        for name, t in list(module._parameters.items()):
            scale = module._buffers.get(name + FP8_SCALE_SUFFIX)
            if t is not None and scale is not None:
                module._parameters[name] = torch.nn.Parameter((t.float() * scale).to(F8), requires_grad=False)
                set_scale(module, name, None)
    return model


def _inputs(seed: int = 1) -> tuple[torch.Tensor, Conditioning]:
    g = torch.Generator().manual_seed(seed)
    unet = TINY_CONFIG.unet
    x = torch.randn(2, 4, 16, 16, generator=g) * 5.0
    cond = Conditioning(
        torch.randn(2, 77, unet.context_dim, generator=g),
        torch.randn(2, unet.adm_in_channels, generator=g),
        torch.randn(2, 4, 16, 16, generator=g),
    )
    return x, cond


def _denoiser_error(candidate, reference) -> float:
    """Relative error of one denoiser evaluation's eps term (x - D), UNet + control, same inputs."""
    x, cond = _inputs()
    outs = []
    with torch.no_grad():
        for model in (candidate, reference):
            outs.append(x - Denoiser(model.unet, model.control_model, torch.float32)(x, 5.0, cond, 1.0))
    return float((outs[0] - outs[1]).norm() / outs[1].norm())


@pytest.fixture(scope="module")
def state():
    return trained_like_state()


@pytest.fixture(scope="module")
def fp16_model(state):
    return _model(state, torch.float16)


def test_a_denoiser_step_in_fp8_with_scales_stays_close_to_fp16(state, fp16_model):
    scaled = _model(state, F8)
    assert scaled.unet.input_blocks[1][0].in_layers[2].weight.dtype == F8
    scaled_error = _denoiser_error(scaled, fp16_model)
    unscaled_error = _denoiser_error(_unscaled(_model(state, F8)), fp16_model)
    # Measured 0.0114 with scales, 0.0194 with the plain cast (seeds 1, 2: 0.0093 / 0.0168, 0.0076 / 0.0119);
    # the code before scales (connectors and embeddings in fp8 too) gave 0.0159.
    bound = 0.014
    assert scaled_error < bound
    assert unscaled_error > bound and unscaled_error > 1.4 * scaled_error


def test_scaled_fp8_layer_error_does_not_grow_for_small_weights():
    x = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    for std in (0.02, 0.01, 0.005):
        layer = torch.nn.Linear(512, 512, bias=False)
        layer.weight = torch.nn.Parameter(torch.randn(512, 512, generator=gen) * std, requires_grad=False)
        reference = x @ layer.weight.T
        from supir_engine.models.ops import Linear

        fp8 = Linear(512, 512, bias=False)
        fp8.weight = layer.weight
        convert_storage(fp8, "fp8")
        assert fp8.weight.dtype == F8
        error = float((fp8(x) - reference).norm() / reference.norm())
        assert error < 0.03, std  # measured 0.026 at every std; unscaled: 0.033, 0.057, 0.11


def test_fp8_scale_is_a_power_of_two_mapping_the_absmax_into_the_top_binade():
    layer = torch.nn.Linear(64, 64)
    weights = torch.randn(64, 64, generator=torch.Generator().manual_seed(3)) * 0.007
    layer.weight = torch.nn.Parameter(weights, requires_grad=False)
    original = layer.weight.clone()
    convert_storage(layer, "fp8")
    scale = layer.weight_fp8_scale
    assert scale.dtype == torch.float32 and scale.dim() == 0
    assert math.log2(float(scale)).is_integer()
    assert 224 <= float(layer.weight.float().abs().max()) <= 448
    # converting back leaves the dequantised values and drops the scale
    convert_storage(layer, "fp16")
    assert not hasattr(layer, "weight_fp8_scale")
    # e4m3 rounds to within half a step of its 3-bit mantissa (2^-4 relative), then fp16 rounds once more;
    # values that scale into e4m3's subnormal range keep an absolute error instead
    assert torch.allclose(layer.weight.float(), original, rtol=2**-4 + 2**-10, atol=2**-9 / float(scale))


def test_parts_kept_in_16bit_under_fp8(state):
    model = _model(state, F8)
    dtypes = {k: t.dtype for k, t in model.state_dict().items()}
    kept = [
        "model.diffusion_model.project_modules.0.zero_conv.weight",
        "model.diffusion_model.project_modules.0.mlp_shared.0.weight",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.label_emb.0.0.weight",
        "model.control_model.time_embed.2.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "conditioner.embedders.1.model.token_embedding.weight",
        "conditioner.embedders.1.model.positional_embedding",
    ]
    for key in kept:
        assert keeps_16bit(key) and dtypes[key] == torch.float16, key
    for key in (
        "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
        "model.control_model.input_blocks.1.0.in_layers.2.weight",
        "conditioner.embedders.1.model.text_projection",
    ):
        assert dtypes[key] == F8, key
    # apply_storage on a model built in memory makes the same choice as loading
    converted = build_supir(TINY_CONFIG, "meta")
    converted.load_state_dict(state, strict=False, assign=True)
    apply_storage(converted, F8, torch.float32)
    assert {k: t.dtype for k, t in converted.model.state_dict().items()} == {
        k.removeprefix("model."): d for k, d in dtypes.items() if k.startswith("model.")
    }


def test_scales_survive_the_model_cache(tmp_path, state):
    sdxl, supir = split_state_dict(state)
    files = (
        save_checkpoint(sdxl, tmp_path / "sdxl.safetensors"),
        save_checkpoint(supir, tmp_path / "q.safetensors"),
    )
    _, supir_f = split_state_dict(trained_like_state(seed=5))
    f_file = save_checkpoint(supir_f, tmp_path / "f.safetensors")
    options = LoadOptions(dtype=F8)
    cache = ModelCache()
    first = cache.get(*files, options)
    x, cond = _inputs()
    with torch.no_grad():
        expected = Denoiser(first.unet, first.control_model, torch.float32)(x, 5.0, cond, 1.0)
    base, _ = split_model(first)
    assert any(k.endswith(FP8_SCALE_SUFFIX) for k in base)
    cache.get(tmp_path / "sdxl.safetensors", f_file, options)  # base reused from the cache, SUPIR reloaded
    again = cache.get(*files, options)  # and the other way round
    assert (cache.last_event.base, cache.last_event.supir) == ("hit", "loaded")
    with torch.no_grad():
        got = Denoiser(again.unet, again.control_model, torch.float32)(x, 5.0, cond, 1.0)
    assert torch.equal(got, expected)


def test_scales_move_with_their_weights_under_every_residency_policy(state):
    model = _model(state, F8)
    x, cond = _inputs()
    denoise = Denoiser(model.unet, model.control_model, torch.float32)
    with torch.no_grad():
        expected = denoise(x, 5.0, cond, 1.0)
    for config in (
        MemoryConfig("full"),
        MemoryConfig("stages"),
        MemoryConfig("blocks", chunk_bytes=16 * 1024),
    ):
        copied: list[tuple[torch.dtype, tuple]] = []

        def transfer(t: torch.Tensor, copied: list = copied) -> torch.Tensor:
            copied.append((t.dtype, tuple(t.shape)))
            return t.clone()

        residency = Residency("cpu", config.policy, chunk_bytes=config.chunk_bytes, transfer=transfer)
        nets = [model.unet, model.control_model]
        with torch.no_grad(), residency.stage("sample", [] if config.policy == "blocks" else nets, nets):
            got = denoise(x, 5.0, cond, 1.0)
            scales = [b for n, b in model.unet.named_buffers() if n.endswith(FP8_SCALE_SUFFIX)]
        residency.release()
        assert torch.equal(got, expected), config.policy
        assert (torch.float32, ()) in copied, config.policy  # scales copied like any buffer
        if config.policy != "blocks":
            assert scales  # the installed copies still carry scales


def test_host_fp8_tensors_without_scales_keep_their_values(tmp_path, state):
    """A host's SDXL stored in fp8 by the host (no scales) is used as it is: the implicit scale is 1."""
    sdxl, supir = split_state_dict(state)
    host = {
        k: v.to(F8) if k.startswith("model.diffusion_model.") and v.dim() > 1 else v.clone()
        for k, v in sdxl.items()
    }
    model, _ = load_supir(host, save_checkpoint(supir, tmp_path / "s.safetensors"), LoadOptions(dtype=F8))
    conv = model.unet.input_blocks[1][0].in_layers[2]
    assert (
        conv.weight.data_ptr() == host["model.diffusion_model.input_blocks.1.0.in_layers.2.weight"].data_ptr()
    )
    assert not hasattr(conv, "weight_fp8_scale")
    x = torch.randn(1, conv.in_channels, 8, 8)
    expected = torch.nn.functional.conv2d(x, conv.weight.float(), conv.bias.float(), padding=1)
    assert torch.equal(conv(x), expected)
