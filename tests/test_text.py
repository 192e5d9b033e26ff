"""Text conditioning (CLIP-L + OpenCLIP bigG + size embeddings) against the i* golden fixtures."""

from __future__ import annotations

import gzip
import inspect
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from supir_engine.models import tokenizer
from supir_engine.models.text import (
    BIGG_PREFIX,
    CLIP_L_PREFIX,
    TextConditioner,
    TextEncoderConfig,
    infer_text_config,
    run_text_case,
    text_conditioner_from_state_dict,
    text_heads_from_sidecar,
)

logger = logging.getLogger(__name__)

FIXTURES = Path(__file__).parent / "fixtures"
PREFIX = "conditioner."


def _text_case_names() -> list[str]:
    index = json.loads((FIXTURES / "index.json").read_text())["fixtures"]
    sidecars = {name: json.loads((FIXTURES / entry["sidecar"]).read_text()) for name, entry in index.items()}
    return sorted(name for name, sidecar in sidecars.items() if sidecar.get("case") == "i_text_conditioning")


TEXT_CASES = _text_case_names()


def _load_case(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((FIXTURES / f"{name}.json").read_text()), load_file(FIXTURES / f"{name}.safetensors")


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    tensors = load_file(FIXTURES / "tiny_text_encoders.safetensors")
    return {k[len(PREFIX) :]: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


@pytest.fixture(scope="module")
def tiny_heads() -> tuple[int | None, int | None]:
    return text_heads_from_sidecar(json.loads((FIXTURES / "tiny_text_encoders.json").read_text()))


@pytest.fixture(scope="module")
def tiny_conditioner(tiny_state: dict[str, torch.Tensor], tiny_heads: tuple) -> TextConditioner:
    shapes = {k: tuple(v.shape) for k, v in tiny_state.items()}
    config = infer_text_config(shapes, prefix="", clip_l_heads=tiny_heads[0], bigg_heads=tiny_heads[1])
    with torch.device("meta"):
        conditioner = TextConditioner(config)
    conditioner.load_state_dict(tiny_state, strict=True, assign=True)
    return conditioner.eval()


def _sample_ids(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    _, tensors = _load_case(TEXT_CASES[0])
    return tensors["c_clip_l_ids"][:batch], tensors["c_openclip_ids"][:batch]


# ---------------------------------------------------------------- golden fixtures


def test_text_cases_found() -> None:
    assert TEXT_CASES, "no i_text_conditioning fixtures"


def test_tiny_config(tiny_conditioner: TextConditioner, tiny_heads: tuple) -> None:
    cfg = tiny_conditioner.config
    assert (cfg.clip_l_width, cfg.clip_l_layers, cfg.clip_l_output_layer, cfg.clip_l_mlp) == (16, 12, 11, 64)
    assert (cfg.bigg_width, cfg.bigg_layers, cfg.bigg_mlp, cfg.bigg_proj) == (16, 3, 64, 32)
    assert (cfg.clip_l_heads, cfg.bigg_heads) == tiny_heads == (2, 2)


@pytest.mark.parametrize("case", TEXT_CASES)
def test_token_ids_exact(case: str) -> None:
    sidecar, tensors = _load_case(case)
    for side in ("c", "uc"):
        texts = sidecar[f"{side}_texts"]
        assert torch.equal(tokenizer.tokenize_clip_l(texts), tensors[f"{side}_clip_l_ids"])
        assert torch.equal(tokenizer.tokenize_bigg(texts), tensors[f"{side}_openclip_ids"])


@pytest.mark.parametrize("case", TEXT_CASES)
def test_text_case(case: str, tiny_conditioner: TextConditioner) -> None:
    sidecar, tensors = _load_case(case)
    checks = run_text_case(tiny_conditioner, sidecar, tensors)
    names = {c.name for c in checks}
    assert {"out_c_crossattn", "out_c_vector", "out_uc_crossattn", "out_uc_vector"} <= names
    assert {"c_clip_l_ids", "c_openclip_ids", "uc_clip_l_ids", "uc_openclip_ids"} <= names
    for check in checks:
        logger.info("%s %s max_abs_err=%.3g", case, check.name, check.max_abs_err)
    assert [c.name for c in checks if not c.passed] == []


def test_forward_from_texts(tiny_conditioner: TextConditioner) -> None:
    sidecar, tensors = _load_case(TEXT_CASES[0])
    crossattn, vector = tiny_conditioner(sidecar["uc_texts"])
    torch.testing.assert_close(crossattn, tensors["out_uc_crossattn"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(vector, tensors["out_uc_vector"], atol=1e-4, rtol=1e-5)


def test_helper_loader_accepts_fp8_and_missing_buffers(tiny_heads: tuple) -> None:
    """float8 storage computes in float32; position_ids / logit_scale may be absent from a checkpoint."""
    raw = load_file(FIXTURES / "tiny_text_encoders.safetensors")
    dropped = {PREFIX + CLIP_L_PREFIX + "embeddings.position_ids", PREFIX + BIGG_PREFIX + "logit_scale"}
    raw = {k: v for k, v in raw.items() if k not in dropped}
    conditioner = text_conditioner_from_state_dict(raw, PREFIX, *tiny_heads)
    sidecar, tensors = _load_case(TEXT_CASES[0])
    assert all(c.passed for c in run_text_case(conditioner, sidecar, tensors))


def test_low_precision_compute(tiny_conditioner: TextConditioner) -> None:
    sidecar, tensors = _load_case(TEXT_CASES[0])
    tiny_conditioner.compute_dtype = torch.bfloat16
    try:
        crossattn, vector = tiny_conditioner(sidecar["c_texts"])
    finally:
        tiny_conditioner.compute_dtype = None
    assert crossattn.dtype == vector.dtype == torch.float32
    torch.testing.assert_close(crossattn, tensors["out_c_crossattn"], atol=0.1, rtol=0.05)
    torch.testing.assert_close(vector, tensors["out_c_vector"], atol=0.1, rtol=0.05)


# ---------------------------------------------------------------- full-size layout


def test_meta_construction_matches_real_keys() -> None:
    manifest = json.loads((FIXTURES / "supir_full_keys.json").read_text())["keys"]
    expected = {k[len(PREFIX) :]: tuple(v["shape"]) for k, v in manifest.items() if k.startswith(PREFIX)}
    with torch.device("meta"):
        conditioner = TextConditioner(TextEncoderConfig())
    state = conditioner.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert state[CLIP_L_PREFIX + "embeddings.position_ids"].dtype == torch.long
    assert all(p.is_meta for n, p in conditioner.named_parameters() if not n.endswith("logit_scale"))
    assert conditioner.config.crossattn_dim == 2048 and conditioner.config.vector_dim == 2816


def test_infer_config_full_model() -> None:
    manifest = json.loads((FIXTURES / "supir_full_keys.json").read_text())["keys"]
    shapes = {k: v["shape"] for k, v in manifest.items()}
    assert infer_text_config(shapes) == TextEncoderConfig()


# ---------------------------------------------------------------- tokenizers


def test_tokenizer_truncation_and_padding() -> None:
    long_text = " ".join(["word"] * 200)
    clip_ids, bigg_ids = tokenizer.tokenize_clip_l(["", long_text]), tokenizer.tokenize_bigg(["", long_text])
    assert clip_ids[0, :3].tolist() == [49406, 49407, 49407] and bigg_ids[0, :3].tolist() == [49406, 49407, 0]
    assert clip_ids[1, -1] == bigg_ids[1, -1] == 49407
    assert (clip_ids[1, 1:-1] != 49407).all() and (bigg_ids[1, 1:-1] != 49407).all()


def test_html_entities() -> None:
    """ftfy unescapes HTML for CLIP-L; open_clip additionally unescapes twice."""
    assert tokenizer.encode_clip_l("Tom &amp; Jerry") == tokenizer.encode_clip_l("tom & jerry")
    assert tokenizer.encode_openclip("Tom &amp;amp; Jerry") == tokenizer.encode_openclip("tom & jerry")
    for case in TEXT_CASES:  # fixtures may store transformers 5's ids (no ftfy): they differ only on entities
        sidecar, tensors = _load_case(case)
        info = tensors.get("info_c_clip_l_ids_transformers5_no_ftfy")
        if info is not None:
            same = (info == tensors["c_clip_l_ids"]).all(dim=1).tolist()
            assert same == ["&amp;" not in text for text in sidecar["c_texts"]]


def test_bigg_tokenizer_matches_open_clip() -> None:
    open_clip = pytest.importorskip("open_clip")
    texts = [case_text for case in TEXT_CASES for case_text in _load_case(case)[0]["c_texts"]]
    texts += ["<end_of_text> hi <|endoftext|> X", "a\u00a0\u3000b\t\nc", "don't STOP'll", "x" * 400, ""]
    assert torch.equal(open_clip.tokenize(texts), tokenizer.tokenize_bigg(texts))


def _hf_clip_tokenizer(directory: Path) -> object:
    """transformers' CLIPTokenizer built from open_clip's BPE file (vocab.json / merges.txt written here)."""
    transformers = pytest.importorskip("transformers")
    bpe = tokenizer.get_bpe()
    vocab = {**bpe.token_ids, "<|startoftext|>": 49406, "<|endoftext|>": 49407}
    with gzip.open(tokenizer.find_bpe_vocab(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    params = inspect.signature(transformers.CLIPTokenizer.__init__).parameters
    names = ("vocab_file", "merges_file") if "vocab_file" in params else ("vocab", "merges")  # 4.x vs 5.x
    files = (str(directory / "vocab.json"), str(directory / "merges.txt"))
    return transformers.CLIPTokenizer(**dict(zip(names, files)))


def test_clip_l_tokenizer_matches_transformers(tmp_path: Path) -> None:
    """Exact against the slow, ftfy-using tokenizer (transformers 4.x, as the original ran); transformers 5
    has no ftfy step and matches special tokens case-sensitively, so only plain texts are compared there."""
    hf = _hf_clip_tokenizer(tmp_path)
    texts = [t for case in TEXT_CASES for side in ("c", "uc") for t in _load_case(case)[0][f"{side}_texts"]]
    texts += ["", "<|endoftext|> a <|ENDOFTEXT|>b", "don't STOP'll x2.5 \u6771\u4eac \U0001f600", "y " * 100]
    if getattr(hf, "fix_text", None) is None:
        texts = [t for t in texts if "&" not in t and "<|" not in t]
    ref = hf(texts, truncation=True, max_length=77, padding="max_length", return_tensors="pt")["input_ids"]
    assert torch.equal(tokenizer.tokenize_clip_l(texts), ref)


def test_bpe_vocab_located() -> None:
    path = tokenizer.find_bpe_vocab()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz" and path.is_file()
    assert len(tokenizer.get_bpe().token_ids) == 49406


# ---------------------------------------------------------------- cross-checks against reference libraries


def _hf_clip_text_model(state: dict[str, torch.Tensor], cfg: TextEncoderConfig) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.CLIPTextConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.clip_l_width,
        intermediate_size=cfg.clip_l_mlp,
        projection_dim=cfg.clip_l_width,
        num_hidden_layers=cfg.clip_l_layers,
        num_attention_heads=cfg.clip_l_heads,
        max_position_embeddings=cfg.context_length,
        hidden_act="quick_gelu",
        layer_norm_eps=cfg.layer_norm_eps,
    )
    model = transformers.CLIPTextModel(hf_cfg).eval()
    wanted = model.state_dict()
    # transformers 4.x keeps the "text_model." level, 5.x drops it; only old versions save position_ids.
    sub = "embedders.0.transformer." if any(k.startswith("text_model.") for k in wanted) else CLIP_L_PREFIX
    hf_state = {k[len(sub) :]: v for k, v in state.items() if k.startswith(sub)}
    model.load_state_dict({k: v for k, v in hf_state.items() if k in wanted}, strict=True)
    return model


def test_clip_l_matches_transformers(tiny_state: dict, tiny_conditioner: TextConditioner) -> None:
    cfg = tiny_conditioner.config
    model = _hf_clip_text_model(tiny_state, cfg)
    clip_ids, bigg_ids = _sample_ids()
    with torch.no_grad():
        ref = model(input_ids=clip_ids, output_hidden_states=True).hidden_states[cfg.clip_l_output_layer]
    crossattn, _ = tiny_conditioner.encode(clip_ids, bigg_ids)
    torch.testing.assert_close(crossattn[..., : cfg.clip_l_width], ref, atol=1e-5, rtol=1e-5)


def _open_clip_text_tower(state: dict[str, torch.Tensor], cfg: TextEncoderConfig) -> torch.nn.Module:
    oc_transformer = pytest.importorskip("open_clip.transformer")
    tower = oc_transformer.TextTransformer(
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.bigg_width,
        heads=cfg.bigg_heads,
        layers=cfg.bigg_layers,
        output_dim=cfg.bigg_proj,
    ).eval()
    wanted = tower.state_dict()
    tower_state = {k[len(BIGG_PREFIX) :]: v for k, v in state.items() if k.startswith(BIGG_PREFIX)}
    tower.load_state_dict({k: v for k, v in tower_state.items() if k in wanted}, strict=True)
    return tower


def test_bigg_matches_open_clip(tiny_state: dict, tiny_conditioner: TextConditioner) -> None:
    cfg = tiny_conditioner.config
    tower = _open_clip_text_tower(tiny_state, cfg)
    captured: list[torch.Tensor] = []

    def grab_input(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(args[0] if args else next(iter(kwargs.values())))

    clip_ids, bigg_ids = _sample_ids()
    handle = tower.transformer.resblocks[-1].register_forward_pre_hook(grab_input, with_kwargs=True)
    try:
        with torch.no_grad():
            out = tower(bigg_ids)
    finally:
        handle.remove()
    pooled = out[0] if isinstance(out, tuple) else out
    penultimate = captured[0]
    if penultimate.shape[0] != bigg_ids.shape[0]:  # sequence-first blocks (open_clip < 2.24)
        penultimate = penultimate.transpose(0, 1)
    crossattn, vector = tiny_conditioner.encode(clip_ids, bigg_ids)
    torch.testing.assert_close(crossattn[..., cfg.clip_l_width :], penultimate, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vector[:, : cfg.bigg_proj], pooled, atol=1e-5, rtol=1e-5)
