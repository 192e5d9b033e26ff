from __future__ import annotations

import json

import torch

from supir_engine.cli import main
from supir_engine.tiny import random_state_dict, save_checkpoint, split_state_dict


def test_check_demo_prints_every_component(capsys):
    assert main(["check", "--demo"]) == 0
    out = capsys.readouterr().out
    for name in (
        "SDXL UNet",
        "SUPIR projection modules",
        "GLVControl",
        "SDXL VAE",
        "denoise encoder",
        "CLIP ViT-L/14",
        "ViT-bigG/14",
    ):
        assert name in out
    assert "GiB resident" in out


def test_check_json_reports_dtypes_and_sizes(tmp_path, capsys):
    sdxl, supir = split_state_dict(random_state_dict(seed=3))
    base = save_checkpoint(sdxl, tmp_path / "base.safetensors")
    model = save_checkpoint(supir, tmp_path / "SUPIR-v0F.ckpt")
    assert main(["check", "--sdxl", str(base), "--supir", str(model), "--dtype", "bf16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    dtypes = {c["name"]: c["dtype"] for c in report["components"]}
    assert set(dtypes.values()) == {"bfloat16"}
    assert report["resident_bytes"] == 2 * sum(v.numel() for v in {**sdxl, **supir}.values())
    assert report["files"][str(model)] == ["projections", "control", "denoise_encoder"]


def test_check_fails_with_a_clear_message(tmp_path, capsys):
    sdxl, _ = split_state_dict(random_state_dict(seed=3))
    base = save_checkpoint(
        {k: v.to(torch.float16) for k, v in sdxl.items()}, tmp_path / "juggernaut.safetensors"
    )
    assert main(["check", "--sdxl", str(base)]) == 2
    err = capsys.readouterr().err
    assert "no SUPIR projection modules weights found in juggernaut.safetensors" in err
