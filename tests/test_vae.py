"""VAE / denoise encoder against the d1_vae fixture (tiny weights) and the real key manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from supir_engine.models.vae import FirstStage, VAEConfig, infer_vae_config, run_vae_case

FIXTURES = Path(__file__).parent / "fixtures"
PREFIX = "first_stage_model."
ATOL, RTOL = 1e-4, 1e-5


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    tensors = load_file(FIXTURES / "tiny_model.safetensors")
    return {k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)}


def _build(state_dict: dict[str, torch.Tensor]) -> FirstStage:
    config = infer_vae_config({PREFIX + k: v.shape for k, v in state_dict.items()})
    with torch.device("meta"):
        model = FirstStage(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_vae() -> FirstStage:
    return _build({k: v.float() for k, v in _tiny_state_dict().items()})


@pytest.fixture(scope="module")
def d1() -> tuple[dict[str, torch.Tensor], dict]:
    sidecar = json.loads((FIXTURES / "d1_vae.json").read_text())
    return load_file(FIXTURES / "d1_vae.safetensors"), sidecar


def _real_shapes() -> dict[str, list[int]]:
    manifest = json.loads((FIXTURES / "supir_full_keys.json").read_text())
    return {k: v["shape"] for k, v in manifest["keys"].items() if k.startswith(PREFIX)}


def test_meta_model_matches_real_keys() -> None:
    with torch.device("meta"):
        model = FirstStage(VAEConfig())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    real = {k[len(PREFIX) :]: v for k, v in _real_shapes().items()}
    assert sorted(set(ours) - set(real)) == []
    assert sorted(set(real) - set(ours)) == []
    assert {k for k in ours if ours[k] != real[k]} == set()


def test_infer_config_real_and_tiny() -> None:
    assert infer_vae_config(_real_shapes()) == VAEConfig()
    tiny = infer_vae_config({PREFIX + k: v.shape for k, v in _tiny_state_dict().items()})
    assert tiny == VAEConfig(ch=32, ch_mult=(1, 1, 2, 2))


def test_d1_vae_case(tiny_vae: FirstStage, d1: tuple[dict[str, torch.Tensor], dict]) -> None:
    tensors, sidecar = d1
    results = run_vae_case(tiny_vae, tensors, sidecar)
    expected_names = {n for n in tensors if n.startswith(("out_", "intermediate_"))}
    assert set(results) == expected_names
    for name, (expected, actual) in results.items():
        assert actual.shape == expected.shape, name
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")


def test_fp8_storage_matches_fp32(tiny_vae: FirstStage, d1: tuple[dict[str, torch.Tensor], dict]) -> None:
    """Weights kept in float8 compute in the input's dtype, exactly as the upcast copy does."""
    tensors, _ = d1
    fp8 = _build(_tiny_state_dict())
    with torch.inference_mode():
        assert torch.equal(fp8.decode(tensors["latent_in"]), tiny_vae.decode(tensors["latent_in"]))


def test_computes_in_input_dtype(tiny_vae: FirstStage, d1: tuple[dict[str, torch.Tensor], dict]) -> None:
    tensors, _ = d1
    image = tensors["image"].to(torch.bfloat16)
    with torch.inference_mode():
        latent = tiny_vae.encode_control(image)
        anchor = tiny_vae.encode_anchor(image, tensors["rng_000"])
        decoded = tiny_vae.decode(latent)
    assert latent.dtype == anchor.dtype == decoded.dtype == torch.bfloat16
    torch.testing.assert_close(
        latent.float(), tensors["out_denoise_encoder_latent_mode"], atol=0.05, rtol=0.05
    )


def test_unknown_outputs_are_skipped(tiny_vae: FirstStage, d1: tuple[dict[str, torch.Tensor], dict]) -> None:
    tensors, sidecar = d1
    extra = dict(tensors, out_something_tiled=torch.zeros(1))
    assert "out_something_tiled" not in run_vae_case(tiny_vae, extra, sidecar)


def test_attention_score_matrix_is_bounded(tiny_vae: FirstStage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever kernel the backend has, no attention call sees more than the bound of score elements."""
    import torch.nn.functional as F

    from supir_engine.models import vae as vae_module

    latent = torch.randn(1, 4, 16, 12, generator=torch.Generator().manual_seed(0)) * 0.5
    with torch.inference_mode():
        whole = tiny_vae.decode(latent)
    bound = 1000  # 192 tokens: the unchunked score matrix has 36,864 elements
    calls: list[tuple[int, int]] = []
    sdpa = F.scaled_dot_product_attention

    def recording(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
        calls.append((q.shape[-2], k.shape[-2]))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(vae_module, "ATTENTION_CHUNK_ELEMENTS", bound, raising=False)
    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    with torch.inference_mode():
        chunked = tiny_vae.decode(latent)
    assert calls and all(queries * keys <= bound for queries, keys in calls)
    assert sum(queries for queries, _ in calls) == 16 * 12
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-3)  # float32 rounding only
