"""SDXL text conditioning: CLIP-L and OpenCLIP bigG text towers plus the size embeddings.

State-dict layout is that of sgm checkpoints under ``conditioner.``:
``embedders.0.transformer.text_model.*`` (transformers 4.x CLIPTextModel) and ``embedders.1.model.*``
(open_clip text tower). Outputs:

* crossattn [B, 77, clip_w + bigg_w] = [CLIP-L hidden_states[layer] (no final LN) | bigG stream entering the
  last block (no ln_final)];
* vector [B, proj + 6*size_dim] = [bigG pooled | sinusoids of (1024, 1024), (0, 0), (1024, 1024)].
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .blocks import timestep_embedding
from .tokenizer import encode_clip_l, tokenize_bigg, tokenize_clip_l

logger = logging.getLogger(__name__)

__all__ = [
    "Comparison",
    "TextConditioner",
    "TextEncoderConfig",
    "infer_text_config",
    "run_text_case",
    "size_embedding",
    "text_case_texts",
    "text_conditioner_from_state_dict",
    "text_heads_from_sidecar",
    "tokenize_bigg",
    "tokenize_clip_l",
]

CLIP_L_PREFIX = "embedders.0.transformer.text_model."
BIGG_PREFIX = "embedders.1.model."
_COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Sizes of the two text towers; defaults are those of SDXL (CLIP ViT-L/14 and OpenCLIP ViT-bigG/14)."""

    vocab_size: int = 49408
    context_length: int = 77
    clip_l_width: int = 768
    clip_l_layers: int = 12
    clip_l_heads: int = 12
    clip_l_mlp: int = 3072
    clip_l_output_layer: int = 11
    bigg_width: int = 1280
    bigg_layers: int = 32
    bigg_heads: int = 20
    bigg_mlp: int = 5120
    bigg_proj: int = 1280
    size_embed_dim: int = 256
    size_conditions: tuple[int, ...] = (1024, 1024, 0, 0, 1024, 1024)
    layer_norm_eps: float = 1e-5

    @property
    def crossattn_dim(self) -> int:
        return self.clip_l_width + self.bigg_width

    @property
    def vector_dim(self) -> int:
        return self.bigg_proj + len(self.size_conditions) * self.size_embed_dim


def _count_blocks(shapes: Mapping[str, Sequence[int]], block_prefix: str) -> int:
    pattern = re.compile(re.escape(block_prefix) + r"(\d+)\.")
    indices = [int(m.group(1)) for key in shapes if (m := pattern.match(key))]
    if not indices:
        raise KeyError(f"no tensors under {block_prefix}N.")
    return max(indices) + 1


def infer_text_config(
    shapes: Mapping[str, Sequence[int]],
    prefix: str = "conditioner.",
    clip_l_heads: int | None = None,
    bigg_heads: int | None = None,
) -> TextEncoderConfig:
    """Tower sizes from tensor shapes; head counts are not in the shapes (default width // 64)."""
    clip = prefix + CLIP_L_PREFIX
    bigg = prefix + BIGG_PREFIX
    vocab_size, clip_w = shapes[clip + "embeddings.token_embedding.weight"]
    clip_layers = _count_blocks(shapes, clip + "encoder.layers.")
    bigg_layers = _count_blocks(shapes, bigg + "transformer.resblocks.")
    bigg_w, bigg_proj = shapes[bigg + "text_projection"]
    return TextEncoderConfig(
        vocab_size=vocab_size,
        context_length=shapes[clip + "embeddings.position_embedding.weight"][0],
        clip_l_width=clip_w,
        clip_l_layers=clip_layers,
        clip_l_heads=clip_l_heads or max(1, clip_w // 64),
        clip_l_mlp=shapes[clip + "encoder.layers.0.mlp.fc1.weight"][0],
        clip_l_output_layer=clip_layers - 1,
        bigg_width=bigg_w,
        bigg_layers=bigg_layers,
        bigg_heads=bigg_heads or max(1, bigg_w // 64),
        bigg_mlp=shapes[bigg + "transformer.resblocks.0.mlp.c_fc.weight"][0],
        bigg_proj=bigg_proj,
    )


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, width = q.shape
    q, k, v = (t.reshape(b, n, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(1, 2).reshape(b, n, width)


def _lookup(table: torch.Tensor, ids: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Embedding rows gathered where the table is stored, then cast (never casts the whole table)."""
    ids = ids.to(table.device)
    if table.dtype not in _COMPUTE_DTYPES and table.element_size() == 1:
        # Older torch has no float8 indexing kernels: gather the raw bytes instead.
        rows = table.view(torch.uint8)[ids].view(table.dtype)
    else:
        rows = table[ids]
    return rows.to(device=like.device, dtype=like.dtype)


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


# ---------------------------------------------------------------- CLIP-L (transformers CLIPTextModel layout)


class ClipLAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = ops.Linear(width, width)
        self.k_proj = ops.Linear(width, width)
        self.v_proj = ops.Linear(width, width)
        self.out_proj = ops.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _causal_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads)
        return self.out_proj(out)


class ClipLMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = ops.Linear(width, hidden)
        self.fc2 = ops.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(_quick_gelu(self.fc1(x)))


class ClipLLayer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.self_attn = ClipLAttention(cfg.clip_l_width, cfg.clip_l_heads)
        self.layer_norm1 = ops.LayerNorm(cfg.clip_l_width, eps=cfg.layer_norm_eps)
        self.mlp = ClipLMLP(cfg.clip_l_width, cfg.clip_l_mlp)
        self.layer_norm2 = ops.LayerNorm(cfg.clip_l_width, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipLEmbeddings(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.clip_l_width)
        self.position_embedding = nn.Embedding(cfg.context_length, cfg.clip_l_width)
        # Only for checkpoint compatibility (transformers 4.28 saved it; newer checkpoints lack it). Made on
        # the CPU even under a meta device context so that a checkpoint without it leaves a usable tensor.
        ids = torch.arange(cfg.context_length, dtype=torch.long, device="cpu")[None]
        self.register_buffer("position_ids", ids, persistent=True)

    def forward(self, ids: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        positions = self.position_embedding.weight[: ids.shape[1]].to(device=like.device, dtype=like.dtype)
        return _lookup(self.token_embedding.weight, ids, like) + positions


class ClipLEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(ClipLLayer(cfg) for _ in range(cfg.clip_l_layers))


class ClipLTextModel(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.output_layer = cfg.clip_l_output_layer
        self.embeddings = ClipLEmbeddings(cfg)
        self.encoder = ClipLEncoder(cfg)
        # In every checkpoint, but the SDXL "hidden" output never uses it.
        self.final_layer_norm = ops.LayerNorm(cfg.clip_l_width, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """hidden_states[output_layer]: the stream after that many layers, no final LayerNorm."""
        x = self.embeddings(ids, like)
        for layer in self.encoder.layers[: self.output_layer]:
            x = layer(x)
        return x


class ClipLTransformer(nn.Module):
    """Holds ``text_model`` so that keys read ``embedders.0.transformer.text_model.*``."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.text_model = ClipLTextModel(cfg)


class ClipLEmbedder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.transformer = ClipLTransformer(cfg)


# ---------------------------------------------------------------- OpenCLIP bigG (open_clip text-tower layout)


class OpenClipAttention(nn.Module):
    """Causal self-attention with nn.MultiheadAttention's packed in-projection parameters."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = ops.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(x, ops.cast_weight(self, "in_proj_weight", x), ops.cast_to(self.in_proj_bias, x))
        return self.out_proj(_causal_attention(*qkv.chunk(3, dim=-1), self.heads))


class OpenClipMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = ops.Linear(width, hidden)
        self.c_proj = ops.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class OpenClipBlock(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.ln_1 = ops.LayerNorm(cfg.bigg_width, eps=cfg.layer_norm_eps)
        self.attn = OpenClipAttention(cfg.bigg_width, cfg.bigg_heads)
        self.ln_2 = ops.LayerNorm(cfg.bigg_width, eps=cfg.layer_norm_eps)
        self.mlp = OpenClipMLP(cfg.bigg_width, cfg.bigg_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class OpenClipTransformer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(OpenClipBlock(cfg) for _ in range(cfg.bigg_layers))


class OpenClipTextModel(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.bigg_width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.bigg_width))
        self.transformer = OpenClipTransformer(cfg)
        self.ln_final = ops.LayerNorm(cfg.bigg_width, eps=cfg.layer_norm_eps)
        self.text_projection = nn.Parameter(torch.zeros(cfg.bigg_width, cfg.bigg_proj))
        # Unused for text conditioning; kept because checkpoints carry it. CPU for the same reason as
        # position_ids above.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07), device="cpu"))

    def forward(self, ids: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate stream [B, n, w], pooled projection [B, proj])."""
        positions = self.positional_embedding[: ids.shape[1]].to(device=like.device, dtype=like.dtype)
        x = _lookup(self.token_embedding.weight, ids, like) + positions
        blocks = self.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        penultimate = x
        last = blocks[-1](x)
        # Pool at the first end-of-text id (the largest id); LayerNorm is per token, so pool first.
        eot = last[torch.arange(last.shape[0], device=last.device), ids.to(last.device).argmax(dim=-1)]
        pooled = self.ln_final(eot) @ ops.cast_weight(self, "text_projection", eot)
        return penultimate, pooled


class OpenClipEmbedder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.model = OpenClipTextModel(cfg)


# ---------------------------------------------------------------- conditioner


def size_embedding(
    values: Sequence[float], dim: int = 256, device: torch.device | str | None = None
) -> torch.Tensor:
    """[1, len(values) * dim] float32: each number as the timestep sinusoid [cos | sin], concatenated."""
    t = torch.tensor(values, dtype=torch.float32, device=device)
    return timestep_embedding(t, dim).reshape(1, -1)


class TextConditioner(nn.Module):
    """SDXL ``conditioner``: texts -> (crossattn [B, 77, clip_w + bigg_w], vector [B, proj + sizes]).

    Compute runs on ``compute_device`` / in ``compute_dtype`` when set, otherwise on the device of the
    weights and in their dtype (float32 for storage-only dtypes such as float8). Outputs are float32.
    """

    def __init__(self, config: TextEncoderConfig | None = None):
        super().__init__()
        self.config = config or TextEncoderConfig()
        self.embedders = nn.ModuleList([ClipLEmbedder(self.config), OpenClipEmbedder(self.config)])
        self.compute_device: torch.device | None = None
        self.compute_dtype: torch.dtype | None = None

    @property
    def clip_l(self) -> ClipLTextModel:
        return self.embedders[0].transformer.text_model

    @property
    def bigg(self) -> OpenClipTextModel:
        return self.embedders[1].model

    def tokenize_clip_l(self, texts: Sequence[str]) -> torch.Tensor:
        return tokenize_clip_l(texts, self.config.context_length)

    def tokenize_bigg(self, texts: Sequence[str]) -> torch.Tensor:
        return tokenize_bigg(texts, self.config.context_length)

    def _compute_anchor(self) -> torch.Tensor:
        """An empty tensor carrying the compute device and dtype (what ops layers cast weights to)."""
        weight = self.clip_l.embeddings.token_embedding.weight
        if weight.is_meta:
            raise RuntimeError("text encoder weights are on the meta device: load a state dict first")
        device = self.compute_device or weight.device
        dtype = self.compute_dtype or (weight.dtype if weight.dtype in _COMPUTE_DTYPES else torch.float32)
        return torch.empty(0, device=device, dtype=dtype)

    @torch.no_grad()
    def encode(self, clip_l_ids: torch.Tensor, bigg_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning from token ids ([B, 77] each)."""
        like = self._compute_anchor()
        hidden = self.clip_l(clip_l_ids, like)
        penultimate, pooled = self.bigg(bigg_ids, like)
        crossattn = torch.cat([hidden, penultimate], dim=-1).float()
        sizes = size_embedding(self.config.size_conditions, self.config.size_embed_dim, like.device)
        vector = torch.cat([pooled.float(), sizes.expand(pooled.shape[0], -1)], dim=-1)
        return crossattn, vector

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(self.tokenize_clip_l(texts), self.tokenize_bigg(texts))


def text_conditioner_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    prefix: str = "conditioner.",
    clip_l_heads: int | None = None,
    bigg_heads: int | None = None,
    dtype: torch.dtype | None = None,
) -> TextConditioner:
    """Build on the meta device and assign the tensors under ``prefix``; ``dtype`` converts floats.

    Strict, except that ``position_ids`` and ``logit_scale`` (unused; absent from some files) may be missing.
    """
    tensors = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    config = infer_text_config({k: tuple(v.shape) for k, v in tensors.items()}, "", clip_l_heads, bigg_heads)
    with torch.device("meta"):
        conditioner = TextConditioner(config)
    missing_ok = {CLIP_L_PREFIX + "embeddings.position_ids", BIGG_PREFIX + "logit_scale"}
    result = conditioner.load_state_dict(tensors, strict=False, assign=True)
    if set(result.missing_keys) - missing_ok or result.unexpected_keys:
        raise KeyError(f"text encoder state dict mismatch: {result}")
    return conditioner.eval()


# ---------------------------------------------------------------- golden-fixture comparison (i* cases)


@dataclass(frozen=True)
class Comparison:
    """One check: ``max_excess`` = max(|ours - ref| - (atol + rtol * |ref|)), <= 0 when within tolerance.

    For integer tensors (token ids) and plain values both numbers are the count of mismatches.
    """

    name: str
    passed: bool
    max_abs_err: float
    max_excess: float


def _compare(name: str, ours: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> Comparison:
    ours = ours.detach().cpu()
    if ours.shape != ref.shape:
        logger.warning("%s: shape %s != reference %s", name, tuple(ours.shape), tuple(ref.shape))
        return Comparison(name, False, math.inf, math.inf)
    if not ref.is_floating_point():
        mismatches = float((ours != ref).sum())
        return Comparison(name, mismatches == 0, mismatches, mismatches)
    err = (ours.double() - ref.double()).abs()
    excess = float((err - (atol + rtol * ref.double().abs())).max()) if err.numel() else 0.0
    max_err = float(err.max()) if err.numel() else 0.0
    return Comparison(name, excess <= 0.0, max_err, excess)


def _compare_values(name: str, ours: list, ref: list) -> Comparison:
    mismatches = float(sum(a != b for a, b in zip(ours, ref, strict=False)) + abs(len(ours) - len(ref)))
    return Comparison(name, mismatches == 0, mismatches, mismatches)


def text_case_texts(sidecar: Mapping) -> tuple[list[str], list[str]]:
    """(c texts, uc texts) as SUPIRModel.prepare_condition forms them: caption + p_p (no separator); n_p."""
    if "prompts" not in sidecar:
        return list(sidecar["c_texts"]), list(sidecar["uc_texts"])
    prompts = list(sidecar["prompts"])
    c_texts = ["".join([p, sidecar.get("p_p", "")]) for p in prompts]
    return c_texts, [sidecar.get("n_p", "")] * len(prompts)


def text_heads_from_sidecar(sidecar: Mapping) -> tuple[int | None, int | None]:
    """Head counts (CLIP-L, bigG) from a tiny_text_encoders.json-style description, None where absent."""
    clip_cfg = sidecar.get("clip_l", {}).get("config", {})
    bigg_cfg = next(
        (v for k, v in sidecar.items() if k.startswith("openclip") and isinstance(v, Mapping)), {}
    )
    return clip_cfg.get("num_attention_heads"), bigg_cfg.get("heads")


def _side_checks(
    conditioner: TextConditioner,
    side: str,
    texts: list[str],
    sidecar: Mapping,
    tensors: Mapping,
    tol: tuple[float, float],
) -> list[Comparison]:
    clip_ids, bigg_ids = conditioner.tokenize_clip_l(texts), conditioner.tokenize_bigg(texts)
    crossattn, vector = conditioner.encode(clip_ids, bigg_ids)
    cfg = conditioner.config
    ours = {
        f"{side}_clip_l_ids": clip_ids,
        f"{side}_openclip_ids": bigg_ids,
        f"out_{side}_crossattn": crossattn,
        f"out_{side}_vector": vector,
        f"intermediate_{side}_clip_l_hidden{cfg.clip_l_output_layer}": crossattn[..., : cfg.clip_l_width],
        f"intermediate_{side}_openclip_penultimate": crossattn[..., cfg.clip_l_width :],
        f"intermediate_{side}_openclip_eot_index": bigg_ids.argmax(dim=-1),
        f"intermediate_{side}_pooled": vector[:, : cfg.bigg_proj],
    }
    if side == "c":
        ours["intermediate_size_embeddings"] = vector[:, cfg.bigg_proj :]
    checks = [_compare(name, value, tensors[name], *tol) for name, value in ours.items() if name in tensors]
    counts = sidecar.get("clip_l_tokens_incl_bos_eos_before_truncation", {}).get(side)
    if counts is not None:
        ours_counts = [len(encode_clip_l(t)) + 2 for t in texts]
        checks.append(_compare_values(f"{side}_clip_l_token_counts", ours_counts, list(counts)))
    if f"{side}_texts" in sidecar:
        checks.append(_compare_values(f"{side}_texts", texts, list(sidecar[f"{side}_texts"])))
    return checks


def run_text_case(
    conditioner: TextConditioner,
    sidecar: Mapping,
    tensors: Mapping[str, torch.Tensor],
    atol: float = 1e-4,
    rtol: float = 1e-5,
) -> list[Comparison]:
    """Run an i-style text-conditioning fixture; ids compare exactly, float tensors within atol + rtol."""
    c_texts, uc_texts = text_case_texts(sidecar)
    checks = _side_checks(conditioner, "c", c_texts, sidecar, tensors, (atol, rtol))
    checks += _side_checks(conditioner, "uc", uc_texts, sidecar, tensors, (atol, rtol))
    for check in checks:
        logger.debug("%s: passed=%s max_abs_err=%.3g", check.name, check.passed, check.max_abs_err)
    return checks
