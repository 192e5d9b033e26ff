"""Peak device memory and FLOPs of one upscale, per memory policy and weight storage dtype.

    python bench/vram.py                        # real-size SUPIR, 1024 -> 2048 px, every case (~1 h)
    python bench/vram.py --case stages:fp16 --case blocks:fp8 --json
    python bench/vram.py --config tiny          # the tiny architecture, 64 -> 128 px, seconds
    python bench/vram.py --list                 # the case names

The model is the real architecture with no weights (built on the meta device, given its storage dtypes
as uninitialised tensors), so no model file is needed. One sampler step is run (``steps=1``): every step
peaks the same, and the FLOPs of a step scale with the step count.

Without a CUDA device the pipeline runs under torch's fake tensors with a fake ``cuda`` device, counting
live device bytes as ``torch.cuda.max_memory_allocated`` would (``bench/fakecuda.py``; ``--fakevram PATH``
runs another tracker module with the same ``FakeCuda`` interface instead). These figures are
``memory_allocated`` peaks: the CUDA context, allocator fragmentation and library workspaces come on
top, and prefetch overlap is not modelled (the prefetched chunk is counted as live, as it would be).
On a CUDA device (or with ``--real``; ``--fake`` forces the tracker) the same run is measured with
``torch.cuda.max_memory_allocated`` (the weights are then real, uninitialised RAM: 9 GB for fp16).
``--calibrate`` measures the pieces behind the activation estimates of memory.py's ``auto`` planner.
Each measurement runs in a subprocess of its own (the fake-tensor machinery is not re-entrant and
leaks between sessions).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACKER = Path(__file__).resolve().with_name("fakecuda.py")
GiB = 1 << 30

# The memory targets at 2048 px output (peak allocated bytes), and the reference figures of the original
# SUPIR measured with the same tracker (fp16 UNet+control, bf16 VAE, tiled sampler 128/64, tiled VAE).
TARGETS_GIB = {
    ("stages", "fp16"): 8.2,
    ("stages", "fp8"): 4.5,
    ("blocks", "fp16"): 2.0,
    ("blocks", "fp8"): 1.5,
}
REFERENCE_GIB = {
    "original: UNet+control weights resident": 7.20,
    "original: one denoiser step at 2048 px (tiled 128/64)": 8.00,
    "original: whole model resident": 8.94,
    "original: plain VAE decode at 2048 px": 14.09,
}
ORIGINAL_TILED_FLOP_RATIO = 1.7
TINY_CHUNK_BYTES = 256 << 10  # blocks' streamed chunk for the tiny model (about 1 % of its UNet and control)


@dataclass(frozen=True)
class Case:
    name: str
    policy: str
    storage: str
    fake_total_gib: float = 80.0  # the emulated card (auto plans from its free memory)
    tile: tuple[int, int] | None = (128, 64)  # sampler tile, stride (latent px); None = untiled
    vae_tiles: tuple[int | None, int | None] = (512, 64)  # encoder (image px), decoder (latent px)
    batch_cfg: bool | None = None
    tile_batch: int | None = None  # sampler tiles per network call (None: 1, or auto's choice)
    lockstep: bool | None = False  # a step's calls evaluated together (None: the planner decides)


def _cases() -> list[Case]:
    cases = [Case("untiled:fp16", "stages", "fp16", tile=None, vae_tiles=(None, None))]
    for policy, storages in (
        ("full", ("fp16", "fp8")),
        ("stages", ("fp16", "bf16", "fp8")),
        ("blocks", ("fp16", "bf16", "fp8")),
    ):
        cases += [Case(f"{policy}:{storage}", policy, storage) for storage in storages]
    cases.append(Case("blocks-tiles4:fp16", "blocks", "fp16", tile_batch=4))  # 9 tiles in 3 calls
    cases.append(Case("blocks-lockstep:fp16", "blocks", "fp16", lockstep=True))  # 9 calls, one weight pass
    for storage, budgets in (("fp16", (4, 6, 8, 12, 24)), ("fp8", (4, 6, 8, 12))):
        for budget in budgets:
            cases.append(
                Case(
                    f"auto{budget}:{storage}",
                    "auto",
                    storage,
                    budget,
                    tile=None,
                    vae_tiles=(None, None),
                    lockstep=None,
                )
            )
    return cases


CASES = {c.name: c for c in _cases()}


@dataclass
class Row:
    case: str
    policy: str  # as run (auto resolved)
    requested: str
    storage: str
    input_px: int
    output_px: int
    peak_bytes: int
    flops: int
    weights_bytes: int
    stages: dict[str, dict[str, int]] = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    peak_at: str = ""
    seconds: float = 0.0
    method: str = "fake"
    bytes_to_device: dict[str, int] = field(default_factory=dict)  # weight bytes copied, per stage
    steps: int = 1
    streamed_bytes: int = 0  # UNet + control bytes not kept resident (what one weight pass copies)


# ------------------------------------------------------------------------------------------ one measurement


def _load_tracker(path: Path | None):
    """The module providing ``FakeCuda``: bench/fakecuda.py, or the file given with ``--fakevram``."""
    path = path or DEFAULT_TRACKER
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or not path.exists():
        raise SystemExit(f"fake-CUDA tracker not found at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


class _RealTracker:
    """Phase peaks from torch.cuda.max_memory_allocated, folded into every open phase at each boundary."""

    def __init__(self) -> None:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        self.torch = torch
        self.counter = FlopCounterMode(display=False)
        self.open: list[str] = []
        self.phases: dict[str, dict[str, int]] = {}
        self.peak_bytes = 0
        self.peak_at = ""

    def _fold(self) -> None:
        cuda = self.torch.cuda
        peak = cuda.max_memory_allocated()
        for label in self.open:
            st = self.phases[label]
            st["peak_bytes"] = max(st["peak_bytes"], peak)
        if peak > self.peak_bytes:
            self.peak_bytes, self.peak_at = peak, "/".join(self.open)
        cuda.reset_peak_memory_stats()

    def observe(self, event: str, stage: str) -> None:
        self._fold()
        flops = self.counter.get_total_flops()
        if event == "begin":
            st = self.phases.setdefault(stage, {"peak_bytes": 0, "flops": 0, "calls": 0, "_f0": 0})
            st["calls"] += 1
            st["_f0"] = flops
            self.open.append(stage)
        elif event == "end":
            self.open.remove(stage)
            st = self.phases[stage]
            st["flops"] += flops - st.pop("_f0", flops)


def _settings(case: Case, config: str):
    from supir_engine.settings import UpscaleSettings

    size, stride = case.tile if case.tile else (None, None)
    if config == "tiny" and size is not None:
        size, stride = 8, 4
    encoder, decoder = case.vae_tiles
    if config == "tiny":
        encoder, decoder = (None if encoder is None else 64), (None if decoder is None else 8)
    return UpscaleSettings(
        scale=2,
        min_size=0,
        steps=1,
        seed=1,
        tile_size=size,
        tile_stride=stride,
        vae_encoder_tile=encoder,
        vae_decoder_tile=decoder,
    )


def _pipeline(case: Case, config: str, device: str, observer):
    import torch

    from supir_engine.memory import MemoryConfig, apply_storage, storage_dtype
    from supir_engine.models import SUPIR_V0, build_supir
    from supir_engine.pipeline import SUPIRPipeline
    from supir_engine.tiny import TINY_CONFIG

    model = build_supir(TINY_CONFIG if config == "tiny" else SUPIR_V0, "meta")
    apply_storage(model, storage_dtype(case.storage), torch.bfloat16)
    memory = MemoryConfig(
        policy=case.policy,
        pin_memory=False,
        batch_cfg=case.batch_cfg,
        tile_batch=case.tile_batch,
        lockstep=case.lockstep,
    )
    if config == "tiny":  # scaled down with the model, as the tiles are: 96 MiB would hold all its layers
        memory = memory.replace(chunk_bytes=TINY_CHUNK_BYTES)
    return SUPIRPipeline(model.eval(), device, memory=memory, observer=observer)


def measure(case: Case, config: str, fakevram: Path | None, real: bool) -> Row:
    import numpy as np
    import torch
    from PIL import Image

    # import the engine before any fake mode: it computes real tables (sigmas) at import time
    import supir_engine.pipeline  # noqa: F401
    import supir_engine.tiled_vae  # noqa: F401
    from supir_engine.memory import tensor_bytes

    size = 64 if config == "tiny" else 1024
    image = Image.fromarray(np.full((size, size, 3), 128, dtype=np.uint8))
    settings = _settings(case, config)
    start = time.perf_counter()
    if real:
        tracker = _RealTracker()
        pipe = _pipeline(case, config, "cuda", tracker.observe)
        weights = tensor_bytes([pipe.model])
        sampling_weights = tensor_bytes([pipe.model.model])
        torch.cuda.reset_peak_memory_stats()
        with tracker.counter:
            result = pipe.upscale(image, settings)
        tracker._fold()
        stages = {
            k: {n: v for n, v in st.items() if not n.startswith("_")} for k, st in tracker.phases.items()
        }
        peak, flops, peak_at, method = (
            tracker.peak_bytes,
            tracker.counter.get_total_flops(),
            tracker.peak_at,
            "cuda",
        )
    else:
        fv = _load_tracker(fakevram)
        with fv.FakeCuda(total_memory=int(case.fake_total_gib * GiB)) as fc:
            open_phases: dict[str, contextlib.AbstractContextManager] = {}

            def observe(event: str, stage: str) -> None:
                if event == "begin":
                    open_phases[stage] = fc.phase(stage)
                    open_phases[stage].__enter__()
                elif event == "end":
                    open_phases.pop(stage).__exit__(None, None, None)

            pipe = _pipeline(case, config, "cuda", observe)
            weights = tensor_bytes([pipe.model])
            sampling_weights = tensor_bytes([pipe.model.model])
            result = pipe.upscale(image, settings)
            stages = {
                k: {"peak_bytes": st.peak_bytes, "flops": st.flops, "calls": st.calls}
                for k, st in fc.phases.items()
            }
            peak, flops, peak_at, method = fc.peak_bytes, fc.flops, "/".join(fc.peak_phase_path), "fake"
    plan = result.memory.as_dict() if result.memory is not None else {}
    return Row(
        case=case.name,
        policy=plan.get("policy", case.policy),
        requested=case.policy,
        storage=case.storage,
        input_px=size,
        output_px=result.output_size[0],
        peak_bytes=int(peak),
        flops=int(flops),
        weights_bytes=int(weights),
        stages=stages,
        plan=plan,
        peak_at=peak_at,
        seconds=round(time.perf_counter() - start, 1),
        method=method,
        bytes_to_device=dict(result.bytes_to_device),
        steps=settings.steps,
        streamed_bytes=sampling_weights - int(plan.get("resident_bytes") or 0)
        if plan.get("policy") == "blocks"
        else 0,
    )


# ------------------------------------------------------------------------------------------ calibration


def calibrate(part: str, fakevram: Path | None) -> dict:
    """Activation bytes (peak above weights and inputs) and FLOPs of pieces, for memory.py's planner."""
    import torch

    import supir_engine.pipeline  # noqa: F401
    from supir_engine.memory import apply_storage
    from supir_engine.models import SUPIR_V0, build_supir
    from supir_engine.sampling import Conditioning, Denoiser
    from supir_engine.tiled_vae import TiledFirstStage

    fv = _load_tracker(fakevram)
    model = build_supir(SUPIR_V0, "meta")
    out: dict[str, dict[str, int]] = {}
    with fv.FakeCuda(total_memory=80 * GiB) as fc, torch.inference_mode():
        apply_storage(model, torch.float16, torch.bfloat16)
        if part == "sampling":
            model.model.to("cuda")
            denoiser = Denoiser(model.unet, model.control_model, torch.float16)
            for tile in (64, 96, 128, 192, 256):
                for batch in (1, 2):
                    x = torch.randn(batch, 4, tile, tile, device="cuda")
                    cond = Conditioning(
                        torch.randn(batch, 77, 2048, device="cuda"),
                        torch.randn(batch, 2816, device="cuda"),
                        torch.randn(batch, 4, tile, tile, device="cuda"),
                    )
                    base, f0 = fc.current_bytes, fc.flops
                    fc.reset_peak()
                    denoiser(x, 5.0, cond, 1.0)
                    out[f"sampling tile {tile} batch {batch}"] = {
                        "act": fc.peak_bytes - base,
                        "flops": fc.flops - f0,
                    }
        else:
            vae = model.first_stage_model.to("cuda")
            image = torch.randn(1, 3, 2048, 2048, device="cuda", dtype=torch.bfloat16)
            latent = torch.randn(1, 4, 256, 256, device="cuda", dtype=torch.bfloat16)
            for tile in (256, 512, 1024, None):
                base, f0 = fc.current_bytes, fc.flops
                fc.reset_peak()
                TiledFirstStage(vae, tile, None).encode_moments(image, denoise=True)
                out[f"encode tile {tile}"] = {"act": fc.peak_bytes - base, "flops": fc.flops - f0}
            for tile in (32, 64, 128, None):
                base, f0 = fc.current_bytes, fc.flops
                fc.reset_peak()
                TiledFirstStage(vae, None, tile).decode(latent)
                out[f"decode tile {tile}"] = {"act": fc.peak_bytes - base, "flops": fc.flops - f0}
    return out


def _worker(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tracker = Path(args.fakevram) if args.fakevram else None
    if args.worker.startswith("calibrate:"):
        print("ROW " + json.dumps(calibrate(args.worker.split(":")[1], tracker)), flush=True)
        os._exit(0)
    row = measure(CASES[args.worker], args.config, tracker, args.real)
    print("ROW " + json.dumps(asdict(row)), flush=True)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown, which long fake-tensor sessions have been seen to crash


def run_case(name: str, config: str, fakevram: Path | None, real: bool, retries: int = 2) -> Row:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--config", config]
    cmd += (["--fakevram", str(fakevram)] if fakevram else []) + (["--real"] if real else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    last = ""
    for _ in range(retries + 1):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        for line in proc.stdout.splitlines():
            if line.startswith("ROW "):
                return Row(**json.loads(line[4:]))
        last = (proc.stderr or proc.stdout)[-3000:]
    raise RuntimeError(f"case {name} failed:\n{last}")


# ------------------------------------------------------------------------------------------ report


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def _verdict(row: Row) -> str:
    target = TARGETS_GIB.get((row.requested, row.storage))
    if row.case.startswith("untiled"):
        return "reference: untiled FLOPs, plain VAE"
    if row.case == "blocks-tiles4:fp16":
        return "4 tiles per call: 3 weight passes a step instead of 9"
    if row.case.startswith("blocks-lockstep"):
        ratio = _h2d_ratio(row)
        ok = ratio is not None and ratio <= H2D_TARGET
        return f"9 calls in lockstep: H2D/step <= {H2D_TARGET:g} x streamed: {'met' if ok else 'NOT met'}"
    if row.requested == "auto":
        budget = float(row.case.split(":")[0][4:])
        target = budget
    if target is None or row.output_px != 2048:
        return ""
    return f"<= {target:g}: {'met' if row.peak_bytes <= target * GiB else 'NOT met'}"


H2D_TARGET = 1.1  # host->device bytes of one sampler step, in weight passes (blocks with lockstep)


def _h2d_step(row: Row) -> float | None:
    """Weight bytes the sampling stage copied to the device per sampler step (None: not recorded)."""
    copied = row.bytes_to_device.get("sampling")
    if copied is None or not row.steps:
        return None
    # blocks with partial residency copies its resident layers once per run, not per step
    resident = int(row.plan.get("resident_bytes") or 0) if row.policy == "blocks" else 0
    return max(0, copied - resident) / row.steps


def _h2d_ratio(row: Row) -> float | None:
    """H2D bytes per step over the UNet + control bytes not kept resident (1 = one pass over them)."""
    per_step = _h2d_step(row)
    return None if per_step is None or not row.streamed_bytes else per_step / row.streamed_bytes


STAGE_LABELS = {
    "stage1.denoise_encode": "s1.denenc",
    "stage1.decode": "s1.dec",
    "stage1.encode": "s1.enc",
    "text": "text",
    "sampling": "sampling",
    "decode": "decode",
}
STAGE_COLUMNS = tuple(STAGE_LABELS)


def table(rows: list[Row]) -> str:
    untiled = next((r.flops for r in rows if r.case == "untiled:fp16"), None)
    head = f"{'case':<14} {'policy':<7} {'stor':<5} {'out':>5} {'peak GiB':>8}  "
    head += " ".join(f"{STAGE_LABELS[c]:>8}" for c in STAGE_COLUMNS)
    head += f" {'TFLOP':>7} {'xuntiled':>8} {'H2D/step':>8} {'xstream':>7}  plan / target"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [f"{_gib(r.stages[c]['peak_bytes']) if c in r.stages else '-':>8}" for c in STAGE_COLUMNS]
        ratio = f"{r.flops / untiled:.2f}" if untiled else "-"
        h2d, passes = _h2d_step(r), _h2d_ratio(r)
        transfer = f"{'-' if h2d is None else _gib(h2d):>8} {'-' if passes is None else f'{passes:.2f}':>7}"
        p = r.plan
        plan = f"tile {p.get('tile')} vae {p.get('vae_tiles')} cfg {'batch' if p.get('batch_cfg') else 'seq'}"
        if p.get("lockstep"):
            plan += " lockstep"
        if p.get("resident_bytes"):
            plan += f" resident {_gib(p['resident_bytes'])}"
        lines.append(
            f"{r.case:<14} {r.policy:<7} {r.storage:<5} {r.output_px:>5} {_gib(r.peak_bytes):>8}  "
            + " ".join(cells)
            + f" {r.flops / 1e12:>7.1f} {ratio:>8} {transfer}  {plan}  {_verdict(r)}"
        )
    lines.append("")
    lines.append("stage columns: peak allocated GiB while that stage ran (weights + activations).")
    lines.append(
        "H2D/step: GiB of weights the sampling stage copied host->device per sampler step (first step "
        "included; layers kept resident are copied once per run and not counted); xstream: that over the "
        "UNet + control bytes not kept resident (1 = one pass)."
    )
    lines.append(
        "reference (original SUPIR, same tracker): "
        + "; ".join(f"{k} {v} GiB" for k, v in REFERENCE_GIB.items())
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", action="append", help="case name (repeatable); default: all")
    parser.add_argument("--config", choices=("full", "tiny"), default="full")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    parser.add_argument(
        "--fakevram",
        metavar="PATH",
        help="fake-CUDA tracker module with the same FakeCuda interface (default: bench/fakecuda.py)",
    )
    parser.add_argument(
        "--real", action="store_true", help="measure on the CUDA device (default when there is one)"
    )
    parser.add_argument("--fake", action="store_true", help="use the fake tracker even when there is a GPU")
    parser.add_argument("--out", help="append each row (JSON) to this file as it is measured")
    parser.add_argument("--from", dest="from_file", help="report rows saved with --out instead of measuring")
    parser.add_argument("--list", action="store_true")
    parser.add_argument(
        "--calibrate", action="store_true", help="measure the pieces memory.py's planner uses"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    if not args.fake and not args.real:
        import torch

        args.real = torch.cuda.is_available()
    if args.list:
        print("\n".join(CASES))
        return
    if args.calibrate:
        for part in ("sampling", "vae"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", f"calibrate:{part}"]
            cmd += ["--fakevram", args.fakevram] if args.fakevram else []
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("ROW ")), None)
            if line is None:
                raise SystemExit(proc.stderr[-3000:])
            for name, v in json.loads(line[4:]).items():
                print(f"{name:<28} act {v['act'] / 2**20:9.1f} MiB  {v['flops'] / 1e12:8.2f} TFLOP")
        return
    if args.from_file:
        text = Path(args.from_file).read_text()
        # a JSON list (as --json prints it) or one row per line (as --out appends them)
        lines = [json.loads(x) for x in text.splitlines() if x] if not text.lstrip().startswith("[") else None
        saved = json.loads(text) if lines is None else lines
        rows = [Row(**row) for row in saved]
        order = {name: i for i, name in enumerate(CASES)}
        rows = sorted({r.case: r for r in rows}.values(), key=lambda r: order.get(r.case, len(order)))
    else:
        fakevram = Path(args.fakevram) if args.fakevram else None
        names = args.case or list(CASES)
        unknown = [n for n in names if n not in CASES]
        if unknown:
            raise SystemExit(f"unknown case(s) {unknown}; see --list")
        rows = []
        for name in names:
            rows.append(run_case(name, args.config, fakevram, args.real))
            print(
                f"# {name}: {_gib(rows[-1].peak_bytes)} GiB, {rows[-1].seconds} s",
                file=sys.stderr,
                flush=True,
            )
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(asdict(rows[-1])) + "\n")
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
    else:
        print(table(rows))


if __name__ == "__main__":
    main()
