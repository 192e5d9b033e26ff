"""CLIP-G between the transformers layout (Forge family hosts) and open_clip's (SDXL checkpoints);
the CLIP tokenizer from a host's plain merges.txt when open_clip is not installed."""

from __future__ import annotations

import gzip
import importlib.util

import pytest
import torch

from supir_engine.clip_layout import BIGG_PREFIX, bigg_from_hf, hf_from_bigg
from supir_engine.models import tokenizer
from supir_engine.tiny import random_state_dict, split_state_dict


@pytest.fixture(scope="module")
def bigg() -> dict[str, torch.Tensor]:
    sdxl, _ = split_state_dict(random_state_dict(seed=3))
    return {k: v for k, v in sdxl.items() if k.startswith(BIGG_PREFIX)}


def test_round_trip_gives_every_tensor_back_exactly(bigg):
    hf = hf_from_bigg(bigg)
    assert "encoder.layers.0.self_attn.q_proj.weight" in hf and "text_projection.weight" in hf
    projection = hf.pop("text_projection.weight")
    back = bigg_from_hf(
        hf, projection, projection_is_linear=True, logit_scale=bigg[BIGG_PREFIX + "logit_scale"]
    )
    assert set(back) == set(bigg)
    for key, tensor in bigg.items():
        assert torch.equal(back[key], tensor), key


def test_only_the_fused_projections_are_new_tensors(bigg):
    hf = hf_from_bigg(bigg)
    projection = hf.pop("text_projection.weight")
    back = bigg_from_hf(hf, projection.t(), projection_is_linear=False)
    shared = {k for k, v in back.items() if any(v.data_ptr() == h.data_ptr() for h in hf.values())}
    fused = {k for k in back if ".attn.in_proj_" in k}
    assert set(back) - shared == fused | {BIGG_PREFIX + "text_projection", BIGG_PREFIX + "logit_scale"}
    assert torch.equal(back[BIGG_PREFIX + "text_projection"], bigg[BIGG_PREFIX + "text_projection"])


def test_incomplete_attention_is_named(bigg):
    hf = hf_from_bigg(bigg)
    projection = hf.pop("text_projection.weight")
    del hf["encoder.layers.1.self_attn.k_proj.weight"]
    with pytest.raises(KeyError, match="layer 1"):
        bigg_from_hf(hf, projection, True)


def test_tokenizer_reads_a_hosts_merges_txt_without_open_clip(tmp_path, monkeypatch):
    reference = tokenizer.ClipBPE(tokenizer.find_bpe_vocab())
    with gzip.open(tokenizer.find_bpe_vocab(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = tmp_path / "merges.txt"
    merges.write_text("\n".join(["#version: 0.2", *lines[1:]]), encoding="utf-8")

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "open_clip" else real_find_spec(name, *a),
    )
    with pytest.raises(FileNotFoundError, match="SUPIR_CLIP_MERGES"):
        tokenizer.find_bpe_vocab()
    monkeypatch.setattr(tokenizer, "EXTRA_VOCAB_FILES", [merges])
    assert tokenizer.find_bpe_vocab() == merges
    host = tokenizer.ClipBPE(merges)
    text = "a photo of an astronaut riding a horse, 8k, high detail"
    assert host.encode(text) == reference.encode(text)
    assert host.token_ids == reference.token_ids
