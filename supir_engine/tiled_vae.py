"""Exact tiled VAE: encode and decode large images with activation memory bounded by the tile size.

The plain encoder/decoder needs several full-resolution activations at once (128-256 channels at
the image size: 6 GiB to decode 2048 px in bf16, 14 GiB in the original under autocast). Here
each network is rewritten as a flat program of ops on named buffers (conv, GroupNorm(+SiLU),
nearest upsample, residual add, attention) and run tile by tile.

Exactness (no seams, no colour shift)
-------------------------------------
* GroupNorm is the only non-local op besides attention, so the program is cut into *phases* at
  every GroupNorm and at the attention core. Each phase runs over all tiles before the next
  starts. While a phase produces a buffer that a later GroupNorm normalises, it accumulates
  per-group mean / centred sum of squares over each tile's *core* (the tiles' cores partition the
  image), merged with Chan's parallel formula: the statistics are those of the whole image, not
  the original tilevae's pooled-over-padded-tiles approximation.
* A tile's core region is traced backwards through the phase's ops to get the region every
  buffer is needed on (each 3x3 conv widens it by one pixel, ldm's stride-2 downsampling and the
  nearest upsampling map it exactly). Inputs are cropped from the stored full maps with that halo
  and zero padding applies only where the region leaves the image (what the plain convs do), so
  every core value equals the plain forward's value up to float rounding.
* Attention (mid block, 1/8 resolution) runs globally: the phase before it stores q, k and v;
  k and v stay on the compute device and every tile's queries attend to all tokens, in query
  chunks bounded by ``models.vae.ATTENTION_CHUNK_ELEMENTS``. Per-tile attention (as in the original) would
  change the result; global attention is exact and cheap, because k and v are at 1/8 resolution:
  2 * 512 * (H/8) * (W/8) values, 128 MiB in bf16 for a 2048 px image.

Memory / compute trade-off
--------------------------
A buffer that crosses a phase boundary is kept as a full map on the *storage device* (CPU by
default; only tile crops travel to the compute device). On the compute device a phase holds one
tile's crops and intermediates, plus k/v (the one term that grows with the image) and the small
statistics. The storage device holds at most about three full maps at once (block input, block
middle, block output); ``storage_bytes`` gives that peak, and the planner keeps the maps on the compute
device instead when its budget has room (``MemoryPlan.vae_storage``). With ``recompute=True`` the
middle map of every ResnetBlock (the output of conv1) is not stored: a statistics-only pass computes its
GroupNorm statistics, and the next phase recomputes it per tile from the block input with a two-pixel
halo. That saves one full map of
storage (and its transfers) for one extra 3x3 conv per block (+30-40 % FLOPs). Otherwise tiles
overlap only by one- or two-pixel halos, so the tiled forward costs barely more FLOPs than the
plain one; the price is the traffic to and from the storage device (every stored map is written
once and read once or twice).

Measured with fake CUDA (real VAE, bf16, decode 2048 px, decoder tile 64 latent): activation peak
0.32 GiB on the device (plain decode 6.0 GiB), 4 GiB of CPU storage (3 GiB with ``recompute``),
~35 GiB moved between host and device, same FLOPs as the plain decode.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from supir_engine.golden import Check, psnr
from supir_engine.models.ops import cast_to
from supir_engine.models.vae import (
    Decoder,
    Encoder,
    FirstStage,
    LatentEncoding,
    chunked_attention,
    split_moments,
)

logger = logging.getLogger(__name__)

DEFAULT_STORAGE_DEVICE = "cpu"
# GroupNorm of a low-precision tile is computed in float32 this many channels at a time.
FLOAT_CHUNK_CHANNELS = 32

Span = tuple[int, int]  # half-open [start, end) along one axis
Box = tuple[Span, Span]  # (rows, columns)
Size = tuple[int, int, int]  # channels, height, width
_SYNC_KINDS = ("norm", "attn")


# --------------------------------------------------------------------------------------------
# Programs: the networks as flat lists of ops on single-assignment buffers


@dataclass(frozen=True, eq=False)
class _Op:
    kind: str  # "conv" | "norm" | "up" | "add" | "attn"
    srcs: tuple[str, ...]
    dst: str
    module: nn.Module | None = None
    silu: bool = False  # norm: apply SiLU after the affine
    pad: Span = (0, 0)  # conv: zero padding before / after, along each axis


@dataclass
class _Program:
    input: str
    ops: list[_Op] = field(default_factory=list)

    @property
    def output(self) -> str:
        return self.ops[-1].dst


class _Builder:
    def __init__(self) -> None:
        self.program = _Program(input="input")
        self._count = 0

    def _emit(self, kind: str, srcs: Sequence[str], **kwargs: Any) -> str:
        self._count += 1
        dst = f"{kind}{self._count}"
        self.program.ops.append(_Op(kind, tuple(srcs), dst, **kwargs))
        return dst

    def conv(self, x: str, conv: nn.Conv2d, pad: Span | None = None) -> str:
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
            raise ValueError(f"unsupported convolution {conv}")
        if conv.padding[0] != conv.padding[1]:
            raise ValueError(f"asymmetric padding not supported: {conv}")
        return self._emit("conv", [x], module=conv, pad=pad or (conv.padding[0], conv.padding[0]))

    def norm(self, x: str, norm: nn.GroupNorm, silu: bool) -> str:
        return self._emit("norm", [x], module=norm, silu=silu)

    def add(self, a: str, b: str) -> str:
        return self._emit("add", [a, b])

    def up(self, x: str) -> str:
        return self._emit("up", [x])

    def resnet(self, x: str, block: nn.Module) -> str:
        h = self.conv(self.norm(x, block.norm1, silu=True), block.conv1)
        h = self.conv(self.norm(h, block.norm2, silu=True), block.conv2)
        shortcut = x if block.nin_shortcut is None else self.conv(x, block.nin_shortcut)
        return self.add(shortcut, h)

    def attention(self, x: str, attn: nn.Module) -> str:
        t = self.norm(x, attn.norm, silu=False)
        out = self._emit("attn", [self.conv(t, attn.q), self.conv(t, attn.k), self.conv(t, attn.v)])
        return self.add(x, self.conv(out, attn.proj_out))

    def mid(self, x: str, mid: nn.Module) -> str:
        return self.resnet(self.attention(self.resnet(x, mid.block_1), mid.attn_1), mid.block_2)

    def output_head(self, x: str, net: nn.Module) -> str:
        return self.conv(self.norm(x, net.norm_out, silu=True), net.conv_out)


def _encoder_program(encoder: Encoder, quant_conv: nn.Conv2d) -> _Program:
    b = _Builder()
    x = b.conv(b.program.input, encoder.conv_in)
    for level in encoder.down:
        for block in level.block:
            x = b.resnet(x, block)
        if level.downsample is not None:  # ldm pads (0, 1) before the stride-2 conv
            x = b.conv(x, level.downsample.conv, pad=(0, 1))
    b.conv(b.output_head(b.mid(x, encoder.mid), encoder), quant_conv)
    return b.program


def _decoder_program(decoder: Decoder, post_quant_conv: nn.Conv2d) -> _Program:
    b = _Builder()
    x = b.mid(b.conv(b.conv(b.program.input, post_quant_conv), decoder.conv_in), decoder.mid)
    for level in reversed(decoder.up):
        for block in level.block:
            x = b.resnet(x, block)
        if level.upsample is not None:
            x = b.conv(b.up(x), level.upsample.conv)
    b.output_head(x, decoder)
    return b.program


# --------------------------------------------------------------------------------------------
# Geometry: output size of an op, and the input region an output region needs


def _src_span(op: _Op, index: int, span: Span, src_len: int, axis: int) -> Span:
    """Region of source ``index`` that output ``span`` reads (may leave the source: zero padding)."""
    a, b = span
    if op.kind == "conv":
        k, s = op.module.kernel_size[axis], op.module.stride[axis]
        return s * a - op.pad[0], s * (b - 1) - op.pad[0] + k
    if op.kind == "up":
        return a // 2, (b + 1) // 2
    if op.kind == "attn" and index > 0:  # keys and values: every token
        return 0, src_len
    return span


def _dst_len(op: _Op, src_len: int, axis: int) -> int:
    if op.kind == "conv":
        k, s = op.module.kernel_size[axis], op.module.stride[axis]
        return (src_len + op.pad[0] + op.pad[1] - k) // s + 1
    if op.kind == "up":
        return 2 * src_len
    return src_len


def _infer_sizes(program: _Program, input_size: Size) -> dict[str, Size]:
    sizes = {program.input: input_size}
    for op in program.ops:
        c, h, w = sizes[op.srcs[-1]]
        if op.kind == "conv":
            c = op.module.out_channels
        sizes[op.dst] = (c, _dst_len(op, h, 0), _dst_len(op, w, 1))
    return sizes


def _clip(span: Span, length: int) -> Span:
    return max(span[0], 0), min(span[1], length)


def _union(a: Box, b: Box) -> Box:
    return tuple((min(p[0], q[0]), max(p[1], q[1])) for p, q in zip(a, b))  # type: ignore[return-value]


def _splits(length: int, parts: int) -> list[Span]:
    parts = max(1, min(parts, length))
    return [(i * length // parts, (i + 1) * length // parts) for i in range(parts)]


def _tiles(height: int, width: int, grid: tuple[int, int]) -> Iterator[Box]:
    for rows in _splits(height, grid[0]):
        for cols in _splits(width, grid[1]):
            yield rows, cols


def _needs(
    ops: Sequence[_Op], targets: Sequence[str], core: Box, sizes: Mapping[str, Size]
) -> dict[str, Box]:
    """Region of every buffer that computing ``targets`` on ``core`` needs (clipped to the buffer)."""
    need = dict.fromkeys(targets, core)
    for op in reversed(ops):
        box = need.get(op.dst)
        if box is None:
            continue
        for index, src in enumerate(op.srcs):
            lengths = sizes[src][1:]
            req = tuple(
                _clip(_src_span(op, index, span, n, axis), n)
                for axis, (span, n) in enumerate(zip(box, lengths))
            )
            need[src] = _union(need[src], req) if src in need else req
    return need


# --------------------------------------------------------------------------------------------
# Plan: phases (cut at GroupNorms and attention), optionally fused with recomputation, as runs


@dataclass
class _Run:
    ops: list[_Op]
    targets: tuple[str, ...]  # buffers computed on every tile core
    store: bool  # write the targets to full maps (else: statistics only)
    drop: tuple[str, ...] = ()  # full maps no longer needed after this run


def _phases(ops: Sequence[_Op]) -> list[list[_Op]]:
    phases: list[list[_Op]] = [[]]
    for op in ops:
        if op.kind in _SYNC_KINDS and phases[-1]:
            phases.append([])
        phases[-1].append(op)
    return phases


def _last_reads(program: _Program, phases: Sequence[Sequence[_Op]]) -> dict[str, int]:
    last = {program.output: len(phases)}
    for i, phase in enumerate(phases):
        for op in phase:
            for src in op.srcs:
                last[src] = max(last.get(src, -1), i)
    return last


def _segments(
    phases: Sequence[Sequence[_Op]], outputs: Sequence[list[str]], last: Mapping[str, int], recompute: bool
) -> list[list[int]]:
    """Group phases; inside a group only the last phase's outputs are stored, the rest recomputed."""
    segments: list[list[int]] = []
    for i, phase in enumerate(phases):
        fuse = (
            recompute
            and i > 0
            and phase[0].kind == "norm"
            and bool(outputs[i - 1])
            and all(last[name] == i for name in outputs[i - 1])
        )
        if fuse:
            segments[-1].append(i)
        else:
            segments.append([i])
    return segments


def _plan(program: _Program, recompute: bool) -> list[_Run]:
    phases = _phases(program.ops)
    last = _last_reads(program, phases)
    outputs = [[op.dst for op in phase if last.get(op.dst, -1) > i] for i, phase in enumerate(phases)]
    normed = {op.srcs[0] for op in program.ops if op.kind == "norm"}
    runs: list[_Run] = []
    for seg in _segments(phases, outputs, last, recompute):
        for j, p in enumerate(seg[:-1]):
            targets = tuple(n for n in outputs[p] if n in normed)
            if targets:
                runs.append(_Run([op for q in seg[: j + 1] for op in phases[q]], targets, store=False))
        dead = tuple(name for name, r in last.items() if seg[0] <= r <= seg[-1])
        runs.append(_Run([op for q in seg for op in phases[q]], tuple(outputs[seg[-1]]), True, dead))
    return runs


# --------------------------------------------------------------------------------------------
# GroupNorm statistics over tile cores


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _GroupStats:
    """Per-sample, per-group mean and centred sum of squares, merged over disjoint tile cores."""

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        grouped = x.unflatten(1, (self.groups, -1))
        acc = _accumulation_dtype(x.dtype)
        # a low-precision tile is upcast a few groups at a time, never whole
        step = self.groups if x.dtype == acc else max(1, self.groups * FLOAT_CHUNK_CHANNELS // x.shape[1])
        parts = [
            torch.var_mean(grouped[:, g : g + step].to(acc), dim=(2, 3, 4), correction=0)
            for g in range(0, self.groups, step)
        ]
        var, mean = (torch.cat(t, dim=1) for t in zip(*parts))
        n = grouped[0, 0].numel()
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, var * n
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + var * n + delta.square() * (self.count * n / total)
        self.count = total

    def affine(self, norm: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (scale, shift), (B, C, 1, 1), float32 or wider: norm(x) = x * scale + shift."""
        if self.mean is None or self.m2 is None:
            raise RuntimeError("GroupNorm statistics requested before they were accumulated")
        per = norm.num_channels // norm.num_groups
        rstd = torch.rsqrt(self.m2 / self.count + norm.eps).repeat_interleave(per, dim=1)
        mean = self.mean.repeat_interleave(per, dim=1)
        scale = rstd if norm.weight is None else rstd * cast_to(norm.weight, rstd)
        shift = -mean * scale
        if norm.bias is not None:
            shift = shift + cast_to(norm.bias, shift)
        return scale[:, :, None, None], shift[:, :, None, None]


# --------------------------------------------------------------------------------------------
# Execution


@dataclass
class _Piece:
    """A tensor holding the values of some buffer on ``box``."""

    data: torch.Tensor
    box: Box

    def crop(self, box: Box) -> torch.Tensor:
        (r0, r1), (c0, c1) = box
        (pr, _), (pc, _) = self.box
        return self.data[:, :, r0 - pr : r1 - pr, c0 - pc : c1 - pc]


@dataclass
class _Context:
    sizes: dict[str, Size]
    maps: dict[str, torch.Tensor]  # full maps of buffers that cross phases
    groups: dict[str, int]  # buffer -> GroupNorm groups, for buffers that get normalised
    resident: frozenset[str]  # maps kept on the compute device (attention k/v, the output)
    token_major: frozenset[str]  # attention k/v: stored channels-last, i.e. already as (tokens, channels)
    device: torch.device
    dtype: torch.dtype
    storage: torch.device
    grid: tuple[int, int]
    batch: int
    stats: dict[str, _GroupStats] = field(default_factory=dict)


def _new_map(
    shape: Sequence[int], dtype: torch.dtype, device: torch.device, channels_last: bool = False
) -> torch.Tensor:
    """Allocate one full map (a single place to hook for memory accounting)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(tuple(shape), dtype=dtype, device=device, memory_format=layout)


def _conv(op: _Op, src: _Piece, box: Box, src_size: Size) -> torch.Tensor:
    """The conv on ``box``: source cropped to the needed region, zeros only beyond the image."""
    lengths = src_size[1:]
    need = [_src_span(op, 0, span, n, axis) for axis, (span, n) in enumerate(zip(box, lengths))]
    clip = [_clip(span, n) for span, n in zip(need, lengths)]
    x = src.crop((clip[0], clip[1]))
    before = [c[0] - n[0] for n, c in zip(need, clip)]
    after = [n[1] - c[1] for n, c in zip(need, clip)]
    conv = op.module
    weight, bias = cast_to(conv.weight, x), cast_to(conv.bias, x)
    if conv.stride != (1, 1):
        if any(before) or any(after):
            x = F.pad(x, (before[1], after[1], before[0], after[0]))
        return F.conv2d(x, weight, bias, stride=conv.stride)
    # stride 1: let the conv pad symmetrically (no padded copy of the tile) and drop the extra outputs
    pad = [max(b, a) for b, a in zip(before, after)]
    out = F.conv2d(x, weight, bias, padding=tuple(pad))
    (r0, r1), (c0, c1) = box
    dr, dc = pad[0] - before[0], pad[1] - before[1]
    return out[:, :, dr : dr + r1 - r0, dc : dc + c1 - c0]


def _upsample(src: _Piece, box: Box) -> torch.Tensor:
    (r0, r1), (c0, c1) = box
    rows, cols = (r0 // 2, (r1 + 1) // 2), (c0 // 2, (c1 + 1) // 2)
    up = F.interpolate(src.crop((rows, cols)), scale_factor=2.0, mode="nearest")
    return up[:, :, r0 - 2 * rows[0] : r1 - 2 * rows[0], c0 - 2 * cols[0] : c1 - 2 * cols[0]]


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Single-head attention of the tile's queries over all tokens, chunked over queries.

    ``k`` and ``v`` are whole channels-last maps, so their token views need no copy per call.
    """
    b, c, h, w = q.shape

    def tokens(t: torch.Tensor) -> torch.Tensor:  # (b, c, h, w) -> (b, 1, h*w, c)
        return t.flatten(2).transpose(1, 2).unsqueeze(1)

    vt = tokens(v)
    out = chunked_attention(tokens(q).contiguous(), tokens(k), vt, scale=c**-0.5)
    return out.squeeze(1).transpose(1, 2).reshape(b, vt.shape[3], h, w)


def _norm(x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor], silu: bool) -> torch.Tensor:
    """GroupNorm with precomputed per-channel float32 (scale, shift), optionally followed by SiLU."""
    scale, shift = affine
    acc = _accumulation_dtype(x.dtype)
    if x.dtype == acc:
        y = torch.addcmul(shift.to(acc), x, scale.to(acc))
    else:  # float32 arithmetic rounded once, as F.group_norm does, with bounded float32 temporaries
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        for c in range(0, x.shape[1], FLOAT_CHUNK_CHANNELS):
            part = slice(c, c + FLOAT_CHUNK_CHANNELS)
            y[:, part] = torch.addcmul(shift[:, part], x[:, part].to(acc), scale[:, part])
    return F.silu(y, inplace=True) if silu else y


def _apply(op: _Op, srcs: list[_Piece], box: Box, ctx: _Context, affines: Mapping[str, Any]) -> torch.Tensor:
    if op.kind == "conv":
        return _conv(op, srcs[0], box, ctx.sizes[op.srcs[0]])
    if op.kind == "norm":
        return _norm(srcs[0].crop(box), affines[op.dst], op.silu)
    if op.kind == "add":
        return srcs[0].crop(box) + srcs[1].crop(box)
    if op.kind == "up":
        return _upsample(srcs[0], box)
    if op.kind == "attn":
        return _attention(srcs[0].crop(box), srcs[1].data, srcs[2].data)
    raise ValueError(f"unknown op kind {op.kind!r}")


def _load(ctx: _Context, name: str, box: Box) -> _Piece:
    (r0, r1), (c0, c1) = box
    return _Piece(ctx.maps[name][:, :, r0:r1, c0:c1].to(ctx.device), box)


def _run_tile(run: _Run, core: Box, ctx: _Context, affines: Mapping[str, Any]) -> None:
    need = _needs(run.ops, run.targets, core, ctx.sizes)
    produced = {op.dst for op in run.ops}
    live = [op for op in run.ops if op.dst in need]
    last_use = {src: i for i, op in enumerate(live) for src in op.srcs}
    tile: dict[str, _Piece] = {}
    for i, op in enumerate(live):
        for src in op.srcs:  # load stored inputs only when first needed
            if src not in produced and src not in tile:
                tile[src] = _load(ctx, src, need[src])
        box = need[op.dst]
        tile[op.dst] = _Piece(_apply(op, [tile[s] for s in op.srcs], box, ctx, affines), box)
        if op.dst in run.targets:
            _write_core(run, ctx, op.dst, tile[op.dst].crop(core), core)
        for name in {*op.srcs, op.dst}:
            if last_use.get(name, -1) <= i:
                tile.pop(name, None)


def _write_core(run: _Run, ctx: _Context, name: str, values: torch.Tensor, core: Box) -> None:
    (r0, r1), (c0, c1) = core
    if run.store:
        ctx.maps[name][:, :, r0:r1, c0:c1] = values
    if name in ctx.groups:
        ctx.stats[name].add(values)


def _execute(run: _Run, ctx: _Context) -> None:
    affines = {op.dst: ctx.stats[op.srcs[0]].affine(op.module) for op in run.ops if op.kind == "norm"}
    for name in run.targets:
        if run.store:
            device = ctx.device if name in ctx.resident else ctx.storage
            shape = (ctx.batch, *ctx.sizes[name])
            ctx.maps[name] = _new_map(shape, ctx.dtype, device, name in ctx.token_major)
        if name in ctx.groups:
            ctx.stats[name] = _GroupStats(ctx.groups[name])
    _, height, width = ctx.sizes[run.targets[0]]
    if any(ctx.sizes[name][1:] != (height, width) for name in run.targets):
        raise RuntimeError("targets of one run must share a resolution")
    for core in _tiles(height, width, ctx.grid):
        _run_tile(run, core, ctx, affines)
    for name in run.drop:
        ctx.maps.pop(name, None)


def _run_program(
    program: _Program,
    x: torch.Tensor,
    grid: tuple[int, int],
    storage: torch.device | str | None,
    recompute: bool,
) -> torch.Tensor:
    sizes = _infer_sizes(program, tuple(x.shape[1:]))
    keys_values = frozenset(s for op in program.ops if op.kind == "attn" for s in op.srcs[1:])
    ctx = _Context(
        sizes=sizes,
        maps={program.input: x},
        groups={op.srcs[0]: op.module.num_groups for op in program.ops if op.kind == "norm"},
        resident=keys_values | {program.output},
        token_major=keys_values,
        device=x.device,
        dtype=x.dtype,
        storage=torch.device(DEFAULT_STORAGE_DEVICE if storage is None else storage),
        grid=grid,
        batch=x.shape[0],
    )
    runs = _plan(program, recompute)
    logger.debug("tiled VAE: %s input, %dx%d tiles, %d runs", tuple(x.shape), *grid, len(runs))
    for run in runs:
        _execute(run, ctx)
    return ctx.maps[program.output]


# --------------------------------------------------------------------------------------------
# Storage accounting


def _storage_peak(program: _Program, input_size: Size, itemsize: int, batch: int, recompute: bool) -> int:
    """Most bytes of full maps on the storage device at once, as ``_execute`` allocates and drops them."""
    sizes = _infer_sizes(program, input_size)
    on_device = {s for op in program.ops if op.kind == "attn" for s in op.srcs[1:]} | {program.output}
    live: dict[str, int] = {}
    peak = 0
    for run in _plan(program, recompute):
        if run.store:
            stored = (n for n in run.targets if n not in on_device)
            live.update((n, batch * math.prod(sizes[n]) * itemsize) for n in stored)
        peak = max(peak, sum(live.values()))
        for name in run.drop:
            live.pop(name, None)
    return peak


def storage_bytes(
    first_stage: FirstStage,
    direction: str,
    output_hw: tuple[int, int],
    dtype: torch.dtype,
    *,
    batch: int = 1,
    recompute: bool = False,
) -> int:
    """Bytes of full maps the tiled VAE keeps on its storage device for an ``output_hw`` image.

    ``direction`` is "encode" (image of ``output_hw`` pixels in) or "decode" (its latent in, the image
    out). Only the module shapes are read: a model on the ``meta`` device will do.
    """
    config = first_stage.config
    h, w = output_hw
    if direction == "encode":
        program = _encoder_program(first_stage.encoder, first_stage.quant_conv)
        size = (config.in_channels, h, w)
    elif direction == "decode":
        program = _decoder_program(first_stage.decoder, first_stage.post_quant_conv)
        size = (config.embed_dim, h // 8, w // 8)
    else:
        raise ValueError(f"direction must be 'encode' or 'decode', got {direction!r}")
    return _storage_peak(program, size, dtype.itemsize, batch, recompute)


# --------------------------------------------------------------------------------------------
# Public API


def _grid(height: int, width: int, tile: int) -> tuple[int, int]:
    if tile < 1:
        raise ValueError(f"tile size must be positive, got {tile}")
    return math.ceil(height / tile), math.ceil(width / tile)


def _fits(x: torch.Tensor, tile: int | None) -> bool:
    return tile is None or max(x.shape[-2:]) <= tile


@torch.no_grad()
def tiled_encode_moments(
    first_stage: FirstStage,
    image: torch.Tensor,
    denoise: bool,
    tile_px: int | None,
    *,
    storage_device: torch.device | str | None = None,
    recompute: bool = False,
) -> torch.Tensor:
    """``first_stage.encode_moments(image, denoise)`` computed in tiles of about ``tile_px`` pixels.

    Same values as the plain call (up to float rounding) for any image size and tile size; an image
    that fits in one tile (or ``tile_px=None``) takes the plain path. Full intermediate maps live on
    ``storage_device`` (default CPU); see the module docstring.
    """
    if _fits(image, tile_px):
        return first_stage.encode_moments(image, denoise)
    encoder = first_stage.denoise_encoder if denoise else first_stage.encoder
    program = _encoder_program(encoder, first_stage.quant_conv)
    return _run_program(program, image, _grid(*image.shape[-2:], tile_px), storage_device, recompute)


@torch.no_grad()
def tiled_decode(
    first_stage: FirstStage,
    latent: torch.Tensor,
    tile_latent: int | None,
    scale_factor: float | None = None,
    *,
    storage_device: torch.device | str | None = None,
    recompute: bool = False,
) -> torch.Tensor:
    """``first_stage.decode(latent, scale_factor)`` (scaled latent in, image out) in latent tiles.

    ``tile_latent`` is the tile side in latent pixels (x8 in the image); otherwise as
    ``tiled_encode_moments``.
    """
    if _fits(latent, tile_latent):
        return first_stage.decode(latent, scale_factor)
    scale = first_stage.config.scale_factor if scale_factor is None else scale_factor
    program = _decoder_program(first_stage.decoder, first_stage.post_quant_conv)
    grid = _grid(*latent.shape[-2:], tile_latent)
    return _run_program(program, latent / scale, grid, storage_device, recompute)


class TiledFirstStage(LatentEncoding):
    """Drop-in for ``FirstStage``'s inference methods, computed with the exact tiled VAE.

    ``None`` for a tile size keeps that direction untiled.
    """

    def __init__(
        self,
        first_stage: FirstStage,
        encoder_tile_px: int | None = 512,
        decoder_tile_latent: int | None = 64,
        *,
        storage_device: torch.device | str | None = None,
        recompute: bool = False,
    ) -> None:
        self.first_stage = first_stage
        self.encoder_tile_px = encoder_tile_px
        self.decoder_tile_latent = decoder_tile_latent
        self.storage_device = storage_device
        self.recompute = recompute

    @property
    def config(self) -> Any:
        return self.first_stage.config

    def encode_moments(self, image: torch.Tensor, denoise: bool) -> torch.Tensor:
        return tiled_encode_moments(
            self.first_stage,
            image,
            denoise,
            self.encoder_tile_px,
            storage_device=self.storage_device,
            recompute=self.recompute,
        )

    def decode(self, latent: torch.Tensor, scale_factor: float | None = None) -> torch.Tensor:
        return tiled_decode(
            self.first_stage,
            latent,
            self.decoder_tile_latent,
            scale_factor,
            storage_device=self.storage_device,
            recompute=self.recompute,
        )


# --------------------------------------------------------------------------------------------
# Fixture verification


TiledOutput = Callable[[TiledFirstStage, Mapping[str, torch.Tensor], float], torch.Tensor]

# Quantity named in a tiled-VAE fixture's "tiled_vs_untiled" -> how to compute it tiled.
TILED_CASE_OUTPUTS: dict[str, TiledOutput] = {
    "denoise_encoder_latent": lambda tfs, t, s: tfs.encode_control(t["image"], s),
    "encoder_latent_mode": lambda tfs, t, s: s * split_moments(tfs.encode_moments(t["image"], False))[0],
    "decoded": lambda tfs, t, s: tfs.decode(t["latent_in"], s),
}


def _tiled_case_outputs(
    first_stage: FirstStage, sidecar: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """(quantity, ours, ref_<quantity>_untiled, required PSNR) for every quantity the sidecar judges."""
    tiled = TiledFirstStage(
        first_stage, int(sidecar["encoder_tile_size_px"]), int(sidecar["decoder_tile_size_latent"])
    )
    scale = float(sidecar.get("scale_factor", first_stage.config.scale_factor))
    for name, metrics in sidecar["tiled_vs_untiled"].items():
        if not isinstance(metrics, Mapping):
            continue
        compute = TILED_CASE_OUTPUTS.get(name)
        if compute is None:
            logger.warning("tiled VAE case: no rule for %r; not checked", name)
            continue
        ours = compute(tiled, tensors, scale).float().cpu()
        original = tensors.get(f"out_{name}_tiled")
        if original is not None:
            logger.info("%s: original tiled VAE vs ours %.2f dB", name, psnr(original, ours))
        yield name, ours, tensors[f"ref_{name}_untiled"], float(metrics["psnr_db"]) - 0.5


@torch.no_grad()
def tiled_vae_psnrs(
    first_stage: FirstStage, sidecar: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> dict[str, tuple[float, float]]:
    """Judge a tiled-VAE fixture: ``{quantity: (our PSNR vs ref_<quantity>_untiled, required PSNR)}``.

    Tile sizes and scale factor come from the sidecar; required = the original's tiled PSNR - 0.5 dB
    (the sidecar's ``how_to_judge``). Quantities with no rule are skipped with a warning.
    """
    return {
        n: (psnr(ref, ours), req) for n, ours, ref, req in _tiled_case_outputs(first_stage, sidecar, tensors)
    }


@torch.no_grad()
def run_tiled_vae_case(
    first_stage: FirstStage, sidecar: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> list[Check]:
    """``tiled_vae_psnrs`` as verifier checks: passed when our PSNR reaches the required one."""
    checks = []
    for name, ours, ref, required in _tiled_case_outputs(first_stage, sidecar, tensors):
        value = psnr(ref, ours)
        max_abs = float((ours.double() - ref.double()).abs().max())
        scale = float(ref.abs().max())
        note = f"PSNR {value:.1f} dB (required >= {required:.2f} dB)"
        checks.append(Check(name, value >= required, max_abs, max_abs / scale if scale else max_abs, note))
        logger.info("%s: %s", name, note)
    return checks
