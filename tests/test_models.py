from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, load_case

from supir_engine.models import SUPIR_V0, build_supir, infer_config
from supir_engine.models.config import infer_unet_config
from supir_engine.models.control import GLVControl
from supir_engine.models.unet import SUPIRUNet, UNetConfig
from supir_engine.sampling import Conditioning, Denoiser


def test_real_size_model_has_exactly_the_reference_keys_and_shapes():
    manifest = json.loads((FIXTURES / "supir_full_keys.json").read_text())["keys"]
    expected = {k: tuple(v["shape"]) for k, v in manifest.items()}
    model = build_supir(None, "meta")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}
    assert (
        sum(t.numel() for t in model.parameters())
        == json.loads((FIXTURES / "supir_full_keys.json").read_text())["total_parameters"]
    )


def test_config_inferred_from_real_shapes_is_supir_v0():
    manifest = json.loads((FIXTURES / "supir_full_keys.json").read_text())["keys"]
    shapes = {k: v["shape"] for k, v in manifest.items()}
    assert infer_config(shapes, clip_l_heads=12, bigg_heads=20) == SUPIR_V0


def test_projection_modules_follow_the_reference_layout():
    layout = json.loads((FIXTURES / "supir_full_keys.json").read_text())["project_modules_layout"]
    with torch.device("meta"):
        unet = SUPIRUNet(UNetConfig())
    for spec, module in zip(layout, unet.project_modules, strict=True):
        assert type(module).__name__ == spec["type"]
        if spec["type"] == "ZeroSFT":
            assert module.zero_conv.in_channels == spec["label_nc"]
            assert module.zero_conv.out_channels == spec["norm_nc"]
            assert module.concat_channels == spec["concat_channels"]
        else:
            assert module.attn.heads == spec["heads"]
            assert module.attn.to_q.in_features == spec["query_dim"]
            assert module.attn.to_k.in_features == spec["context_dim"]


def _tiny_networks(weights):
    sidecar = json.loads((FIXTURES / "tiny_model.json").read_text())
    params = sidecar["config"]["params"]["network_config"]["params"]
    cfg = infer_unet_config(
        {k: v.shape for k, v in weights.items()}, num_head_channels=params["num_head_channels"]
    )
    with torch.device("meta"):
        unet, control = SUPIRUNet(cfg), GLVControl(cfg)
    for prefix, net in (("model.diffusion_model.", unet), ("model.control_model.", control)):
        state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        state.pop("mask_LQ", None)
        net.load_state_dict(state, strict=True, assign=True)
    return unet, control


@pytest.mark.parametrize("case", ["a1_denoiser", "a2_denoiser"])
def test_denoiser_matches_reference(case, tiny_weights):
    sidecar, t = load_case(case)
    unet, control = _tiny_networks(tiny_weights)
    denoiser = Denoiser(unet, control, torch.float32)
    cond = Conditioning(t["crossattn"], t["vector"], t["control"])
    with torch.inference_mode():
        out = denoiser(t["x"], t["sigma"].tolist(), cond, sidecar["control_scale"])
        x_in = t["x"] / (t["intermediate_sigma_quantized"] ** 2 + 1).sqrt().view(-1, 1, 1, 1)
        features = control(t["control"], t["intermediate_timestep_index"], x_in, t["crossattn"], t["vector"])
    for i, feature in enumerate(features):
        torch.testing.assert_close(feature, t[f"intermediate_control_feature_{i:02d}"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out, t["out_denoised"], atol=1e-4, rtol=1e-5)
