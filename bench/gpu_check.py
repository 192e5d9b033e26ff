"""GPU check: real upscales per memory policy and weight storage, measured on the device.

    python bench/gpu_check.py                               # real-size random weights, every case
    python bench/gpu_check.py --sdxl SDXL.safetensors --supir SUPIR-v0Q.ckpt
    python bench/gpu_check.py --cases 1024:blocks:fp8 --steps 2 --out gpu_check.json
    python bench/gpu_check.py --budget 8                    # plan as if the card had 8 GiB (auto, blocks)
    python bench/gpu_check.py --dry-run                     # the same code on the CPU, tiny model, seconds

Every case (input 512 and 1024 px, 2x; policies stages / blocks / auto; storage fp16 / fp8) runs one upscale
of a fixed test picture with a fixed seed and records: ``torch.cuda.max_memory_allocated`` and ``_reserved``
(reset per case) against the planner's estimate and the fake tracker's figure for the same case (a saved row
of ``bench/vram_results.json``), seconds per sampler step and per stage (the device synchronised before each
clock reading), bytes copied to the device, non-finite values in the UNet outputs and the decoded image,
pinned RAM, and the plan. Then: stages vs blocks outputs must be bit-identical in fp16 (the policies only
change what is copied when), and fp8 vs fp16 PSNR per size and policy. The SDPA backends available for the
model's attention shapes, and the one PyTorch picks, are probed first. Exit status 1 when a case fails, a
non-finite value appears, or stages and blocks differ in fp16.

The random model is built on the meta device and every tensor is generated one at a time (on the GPU when
there is one) and stored in its storage dtype: RAM never holds a float32 copy of the model. fp16 cases run
first; the same weights are then converted to fp8 for the fp8 cases.

``--dry-run`` runs the same code on the CPU with the tiny architecture (``supir_engine/tiny.py``), 32 and 48
px inputs (64 and 96 px out) and 2 steps. Weights then go through a counting copier, so the residency policies
really place and stream them; the device-memory columns are CPU stand-ins (peak bytes of those weight copies),
marked ``memory_method: "cpu stand-in"``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import platform
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from supir_engine.memory import MemoryConfig, apply_storage, pinned_bytes, tensor_storage_dtype  # noqa: E402
from supir_engine.models import SUPIR_V0, SUPIRConfig, SUPIRModel, build_supir  # noqa: E402
from supir_engine.pipeline import SUPIRPipeline  # noqa: E402
from supir_engine.settings import UpscaleSettings  # noqa: E402
from supir_engine.tiny import TINY_CONFIG, demo_image  # noqa: E402

GiB, MiB = 1 << 30, 1 << 20
SIZES = (512, 1024)
DRY_SIZES = (32, 48)  # 64 and 96 px out: one sampler tile, then 2x2
POLICIES = ("stages", "blocks", "auto")
STORAGES = ("fp16", "fp8")
SAVED_FAKE_ROWS = ROOT / "bench" / "vram_results.json"
# Sampler and VAE tiles of the fixed policies, as in bench/vram.py (so its saved rows are the same case).
TILES = {"full": ((128, 64), (512, 64)), "tiny": ((8, 4), (64, 8))}
TINY_CHUNK_BYTES = 256 << 10  # streamed chunk for the tiny model (96 MiB would hold all of it)
STAGES = ("stage1", "text", "sampling", "decode")


@dataclass(frozen=True)
class Case:
    input_px: int
    policy: str
    storage: str

    @property
    def name(self) -> str:
        return f"{self.input_px}:{self.policy}:{self.storage}"


def all_cases(dry_run: bool) -> list[Case]:
    sizes = DRY_SIZES if dry_run else SIZES
    return [Case(s, p, st) for st in STORAGES for s in sizes for p in POLICIES]


def select_cases(names: list[str] | None, dry_run: bool) -> list[Case]:
    cases = {c.name: c for c in all_cases(dry_run)}
    if not names:
        return list(cases.values())
    unknown = [n for n in names if n not in cases]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}: choose from {', '.join(cases)}")
    # fp16 first: the fp8 cases reuse the same weights, converted once
    return sorted((cases[n] for n in dict.fromkeys(names)), key=lambda c: STORAGES.index(c.storage))


# ------------------------------------------------------------------------------------------ the model


def _random_tensor(key: str, shape: torch.Size, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Fan-in scaled values (activations near unit scale through the real depth); norms 1, biases small."""
    device = gen.device
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        values = torch.randn(shape, generator=gen, device=device) / math.sqrt(fan_in)
    elif key.endswith(".weight"):
        values = torch.ones(shape, device=device)
    else:
        values = torch.randn(shape, generator=gen, device=device) * 0.02
    if dtype.itemsize == 1:  # fp8 gets the fp16 values, as a conversion of an fp16 model would
        values = values.to(torch.float16)
    return values.to(dtype).cpu()


def random_model(
    config: SUPIRConfig, storage: str, vae_dtype: torch.dtype, gen_device: torch.device, seed: int = 0
) -> SUPIRModel:
    """The architecture of ``config`` with random weights, each made in its storage dtype, kept in RAM."""
    from supir_engine.memory import storage_dtype

    dtype = storage_dtype(storage)
    model = build_supir(config, "meta")
    gen = torch.Generator(gen_device).manual_seed(seed)
    state = {}
    for key, meta in model.state_dict().items():
        if key.startswith("denoiser.") or key.endswith("position_ids"):
            continue  # computed, not stored
        wanted = (
            vae_dtype
            if key.startswith("first_stage_model.")
            else tensor_storage_dtype(meta.shape, dtype, key)
        )
        state[key] = _random_tensor(key, meta.shape, wanted, gen)
    model.load_state_dict(state, strict=False, assign=True)
    del state
    for module in model.modules():
        reset = getattr(module, "reset_computed_buffers", None)
        if callable(reset):
            reset()
    model.denoiser.reset()
    return model.eval().requires_grad_(False)


def file_model(sdxl: str, supir: str, storage: str) -> SUPIRModel:
    from supir_engine.checkpoints import LoadOptions, load_supir
    from supir_engine.memory import storage_dtype

    model, _ = load_supir(sdxl, supir, LoadOptions(dtype=storage_dtype(storage)))
    return model


# ------------------------------------------------------------------------------------------ environment


def device_info(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            total_memory=props.total_memory,
            driver_free_bytes=torch.cuda.mem_get_info(device)[0],
        )
    else:
        info.update(name=platform.processor() or platform.machine(), capability=None, total_memory=None)
    return info


def _sdpa_ops(fn: Callable[[], object]) -> list[str]:
    """The aten attention kernels a call dispatched to (profiler op names)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.name for e in prof.events()}
    return sorted(n for n in names if "attention" in n and n != "aten::scaled_dot_product_attention")


def probe_sdpa(
    device: torch.device, shapes: dict[str, tuple[tuple[int, int, int, int], torch.dtype]]
) -> dict:
    """Per attention shape: the SDPA backends that run in its dtype, and what the default dispatch ran."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [
        b
        for b in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
        if hasattr(SDPBackend, b)
    ]
    out = {}
    for label, (shape, dtype) in shapes.items():
        q = torch.randn(shape, device=device, dtype=dtype)
        available = []
        for name in backends:
            try:
                with sdpa_kernel([getattr(SDPBackend, name)]), torch.inference_mode():
                    F.scaled_dot_product_attention(q, q, q)
                available.append(name.lower())
            except RuntimeError:
                pass
        with torch.inference_mode():
            ran = _sdpa_ops(lambda q=q: F.scaled_dot_product_attention(q, q, q))
        out[label] = {
            "shape": list(shape),
            "dtype": str(dtype).removeprefix("torch."),
            "available": available,
            "ran": ran,
        }
    return out


def attention_shapes(config: SUPIRConfig, dtype: torch.dtype, vae_dtype: torch.dtype) -> dict:
    heads_dim = config.unet.num_head_channels
    vae_width = config.vae.ch * config.vae.ch_mult[-1]
    return {
        "unet": ((2, 10, 1024, heads_dim), dtype),  # batched CFG, a 32x32-token level
        "vae": ((1, 1, 1024, vae_width), vae_dtype),  # the VAE's single-head mid attention
    }


# ------------------------------------------------------------------------------------------ measuring


class Clock:
    """Synchronises the device before each clock reading; a Host that records sampler step times."""

    def __init__(self, device: torch.device):
        self.device = device
        self.step_times: list[float] = []

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # Host protocol
    def acquire_device(self) -> None:
        pass

    def release_device(self) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def progress(self, stage: str, step: int, total: int) -> None:
        if stage == "sampling":
            self.sync()
            self.step_times.append(time.perf_counter())

    def observer(self, event: str, stage: str) -> None:
        if event in ("begin", "end"):  # the pipeline reads its stage clocks around these
            self.sync()

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.step_times, self.step_times[1:])]


class CopyCounter:
    """For CPU stand-in runs: the peak bytes of live weight copies (what a device would hold)."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def cpu_copy(self, t: torch.Tensor) -> torch.Tensor:
        """A copier for the CPU: a real copy whose bytes are live until the pipeline drops it."""
        copy = t.clone()
        n = copy.nelement() * copy.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(copy, self._freed, n)
        return copy

    def _freed(self, n: int) -> None:
        self.live -= n


@contextlib.contextmanager
def nonfinite_watch(model: SUPIRModel) -> Iterator[dict[str, torch.Tensor]]:
    """Non-finite values in every UNet output and in the decoded image (before and after colour fix)."""
    import supir_engine.pipeline as pipeline_module

    counts: dict[str, torch.Tensor] = {}

    def add(label: str, t: torch.Tensor) -> None:
        n = (~torch.isfinite(t)).sum().cpu()
        counts[label] = counts.get(label, torch.zeros((), dtype=torch.long)) + n

    def unet_hook(module, args, output) -> None:
        add("unet", output)

    handle = model.unet.register_forward_hook(unet_hook)
    original = pipeline_module.apply_color_fix

    def color_fix(kind, decoded, reference):
        add("decoded", decoded)
        out = original(kind, decoded, reference)
        add("output", out)
        return out

    pipeline_module.apply_color_fix = color_fix
    try:
        yield counts
    finally:
        handle.remove()
        pipeline_module.apply_color_fix = original


def saved_fake_rows(path: Path = SAVED_FAKE_ROWS) -> list[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []


def fake_figure(rows: list[dict], case: Case, budget_gib: float | None, steps_tiles: bool) -> int | None:
    """The fake tracker's peak for the same case if bench/vram.py saved one (fixed tiles, or auto N GiB)."""
    if case.policy == "auto":
        if budget_gib is None:
            return None
        name = f"auto{budget_gib:g}:{case.storage}"
    elif budget_gib is not None or not steps_tiles:
        return None  # a budget changes blocks' residency: the saved rows have none
    else:
        name = f"{case.policy}:{case.storage}"
    for row in rows:
        if row.get("case") == name and row.get("input_px") == case.input_px:
            return int(row["peak_bytes"])
    return None


def case_settings(case: Case, steps: int, tiny: bool) -> UpscaleSettings:
    settings = UpscaleSettings(scale=2, min_size=0, steps=steps, seed=1234)
    if case.policy == "auto":  # auto chooses its tiles
        return settings
    (tile, stride), (enc, dec) = TILES["tiny" if tiny else "full"]
    return settings.replace(tile_size=tile, tile_stride=stride, vae_encoder_tile=enc, vae_decoder_tile=dec)


def run_case(
    model: SUPIRModel, case: Case, args: argparse.Namespace, device: torch.device
) -> tuple[dict, np.ndarray | None]:
    tiny = args.dry_run
    memory = MemoryConfig(
        policy=case.policy, budget_bytes=None if args.budget is None else int(args.budget * GiB)
    )
    if tiny:
        memory = memory.replace(chunk_bytes=TINY_CHUNK_BYTES)
    clock, counter = Clock(device), CopyCounter()

    cuda = device.type == "cuda"
    pipe = SUPIRPipeline(
        model, device, memory=memory, observer=clock.observer, transfer=None if cuda else counter.cpu_copy
    )
    image = demo_image(case.input_px)
    settings = case_settings(case, args.steps, tiny)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    row: dict = {
        "case": case.name,
        "input_px": case.input_px,
        "policy_requested": case.policy,
        "storage": case.storage,
        "steps": args.steps,
    }
    start = time.perf_counter()
    try:
        with nonfinite_watch(model) as nonfinite:
            result = pipe.upscale(image, settings, clock)
            clock.sync()
    except Exception as exc:  # one failing case (out of memory, say) must not hide the others
        row.update(error=f"{type(exc).__name__}: {exc}")
        return _complete(row), None
    total = time.perf_counter() - start
    plan = result.memory.as_dict() if result.memory is not None else {}
    steps = clock.step_seconds()
    out = np.asarray(result.image)
    row.update(
        output_px=result.output_size[0],
        policy=plan.get("policy", case.policy),
        plan=plan,
        memory_method="torch.cuda" if cuda else "cpu stand-in: peak bytes of weight copies",
        max_memory_allocated=torch.cuda.max_memory_allocated(device) if cuda else counter.peak,
        max_memory_reserved=torch.cuda.max_memory_reserved(device) if cuda else counter.peak,
        estimated_peak_bytes=plan.get("estimated_peak_bytes"),
        fake_peak_bytes=fake_figure(saved_fake_rows(), case, args.budget, not tiny),
        step_seconds=[round(s, 4) for s in steps],
        # the first step also places the sampling weights (stages); the median is the steady state
        seconds_per_step=round(float(np.median(steps)), 4) if steps else None,
        stage_seconds={k: round(v, 4) for k, v in result.timings.items()},
        total_seconds=round(total, 3),
        bytes_to_device=dict(result.bytes_to_device),
        bytes_to_device_source="result.bytes_to_device",
        nonfinite={k: int(v) for k, v in nonfinite.items()},
        pinned_bytes=pinned_bytes(),
        pinned_source="staging.pinned_bytes()",
        precision=_jsonable(result.precision),
        output_sha1=hashlib.sha1(out.tobytes()).hexdigest(),
        error=None,
    )
    row["nan"] = any(row["nonfinite"].values()) or not row["nonfinite"]
    return _complete(row), out


ROW_FIELDS = (
    "case", "input_px", "output_px", "policy_requested", "policy", "storage", "steps", "plan",
    "memory_method", "max_memory_allocated", "max_memory_reserved", "estimated_peak_bytes",
    "fake_peak_bytes", "step_seconds",
    "seconds_per_step", "stage_seconds", "total_seconds", "bytes_to_device", "bytes_to_device_source",
    "nonfinite", "nan", "pinned_bytes", "pinned_source", "precision", "output_sha1", "error",
)  # fmt: skip


def _complete(row: dict) -> dict:
    """Every field in every row (None where a failed case has no value), in one order."""
    return {k: row.get(k) for k in ROW_FIELDS}


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(asdict(value))
    return str(value)


# ------------------------------------------------------------------------------------------ comparisons


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def compare(images: dict[str, np.ndarray], cases: list[Case]) -> dict:
    """stages vs blocks (must be bit-identical in fp16) and fp8 vs fp16 PSNR, for every pair that ran."""
    identical, quality = [], []
    for case in cases:
        if case.policy == "blocks":
            ref = Case(case.input_px, "stages", case.storage)
            a, b = images.get(ref.name), images.get(case.name)
            if a is not None and b is not None:
                same = a.shape == b.shape and bool(np.array_equal(a, b))
                identical.append(
                    {
                        "a": ref.name,
                        "b": case.name,
                        "identical": same,
                        "max_abs_diff": None
                        if a.shape != b.shape
                        else int(np.abs(a.astype(int) - b.astype(int)).max()),
                        "required": case.storage == "fp16",
                    }
                )
        if case.storage == "fp8":
            ref = Case(case.input_px, case.policy, "fp16")
            a, b = images.get(ref.name), images.get(case.name)
            if a is not None and b is not None and a.shape == b.shape:
                value = psnr(a, b)
                quality.append(
                    {"a": ref.name, "b": case.name, "psnr_db": None if math.isinf(value) else round(value, 2)}
                )
    return {"stages_vs_blocks": identical, "fp8_vs_fp16_psnr": quality}


def failures(rows: list[dict], checks: dict) -> list[str]:
    bad = [f"{r['case']}: {r['error']}" for r in rows if r["error"]]
    bad += [f"{r['case']}: non-finite values {r['nonfinite']}" for r in rows if not r["error"] and r["nan"]]
    bad += [
        f"{c['a']} and {c['b']} differ (max abs diff {c['max_abs_diff']})"
        for c in checks["stages_vs_blocks"]
        if c["required"] and not c["identical"]
    ]
    return bad


# ------------------------------------------------------------------------------------------ report


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / GiB:.2f}G" if n >= GiB / 4 else f"{n / MiB:.1f}M"


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def table(rows: list[dict]) -> str:
    head = (
        f"{'case':<17} {'ran':<7} {'alloc':>7} {'reserv':>7} {'estim':>7} {'fake':>7} {'s/step':>7} "
        + " ".join(f"{s:>8}" for s in STAGES)
        + f" {'to dev':>7} {'pinned':>7}  nan"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["error"]:
            lines.append(f"{r['case']:<17} FAILED: {r['error'][:200]}")
            continue
        stages = " ".join(f"{_secs(r['stage_seconds'].get(s)):>8}" for s in STAGES)
        lines.append(
            f"{r['case']:<17} {r['policy']:<7} {_size(r['max_memory_allocated']):>7} "
            f"{_size(r['max_memory_reserved']):>7} {_size(r['estimated_peak_bytes']):>7} "
            f"{_size(r['fake_peak_bytes']):>7} {_secs(r['seconds_per_step']):>7} {stages} "
            f"{_size(sum(r['bytes_to_device'].values())):>7} {_size(r['pinned_bytes']):>7}  "
            f"{'NaN' if r['nan'] else 'ok'}"
        )
    return "\n".join(lines)


def report(result: dict) -> str:
    d = result["device"]
    method = result["rows"][0]["memory_method"] if result["rows"] else "-"
    lines = [
        f"device {d['name']} ({d['device']}, capability {d['capability']}, "
        f"{_size(d['total_memory'])}); torch {d['torch']}, CUDA {d['cuda']}, cuDNN {d['cudnn']}",
        f"model: {result['model']}; {result['steps']} steps; memory: {method}",
    ]
    for label, probe in result["sdpa"].items():
        lines.append(
            f"SDPA {label} {probe['dtype']} {probe['shape']}: "
            f"available {', '.join(probe['available']) or 'none'}; ran {', '.join(probe['ran']) or '?'}"
        )
    lines += ["", table(result["rows"]), ""]
    lines.append(
        "alloc/reserv: max_memory_allocated/reserved; estim: planner; fake: bench/vram_results.json; "
        "stage columns: seconds; to dev: bytes copied to the device"
    )
    for c in result["checks"]["stages_vs_blocks"]:
        verdict = "identical" if c["identical"] else f"DIFFER (max abs diff {c['max_abs_diff']})"
        lines.append(f"{c['a']} vs {c['b']}: {verdict}{'' if c['required'] else ' (informative)'}")
    for c in result["checks"]["fp8_vs_fp16_psnr"]:
        lines.append(f"{c['b']} vs {c['a']}: PSNR {c['psnr_db'] if c['psnr_db'] is not None else 'inf'} dB")
    lines.append("FAILED: " + "; ".join(result["failures"]) if result["failures"] else "all checks passed")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sdxl", help="SDXL base checkpoint (with --supir; default: random real-size weights)"
    )
    parser.add_argument("--supir", help="SUPIR checkpoint")
    parser.add_argument("--cases", nargs="+", metavar="SIZE:POLICY:STORAGE", help="default: every case")
    parser.add_argument(
        "--out", default="gpu_check.json", help="JSON file for every row (default gpu_check.json)"
    )
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--steps", type=int, help="sampler steps per upscale (default 4; 2 with --dry-run)")
    parser.add_argument(
        "--budget", type=float, metavar="GIB", help="device memory the plans may use (auto, blocks)"
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, tiny sizes: seconds")
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    args = parser.parse_args(argv)
    if (args.sdxl is None) != (args.supir is None):
        parser.error("give both --sdxl and --supir (the real model files), or neither (random weights)")
    if args.dry_run and args.sdxl:
        parser.error("--dry-run uses the tiny random model; leave out --sdxl and --supir")
    args.steps = args.steps or (2 if args.dry_run else 4)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases = select_cases(args.cases, args.dry_run)
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    device = torch.device("cpu" if args.dry_run else args.device)
    if args.dry_run:  # tiny tensors: more threads only contend (badly so on a busy machine)
        torch.set_num_threads(1)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"no CUDA device for {args.device}: run on a CUDA machine, or use --dry-run")
    config = TINY_CONFIG if args.dry_run else SUPIR_V0
    from supir_engine.device_policy import precision_for

    precision = precision_for(device)  # what the pipeline will compute in on this card
    dtype, vae_dtype = precision.unet, precision.vae_storage
    print(
        f"# building the model ({'files' if args.sdxl else 'random weights'}, {cases[0].storage})",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    if args.sdxl:
        model = file_model(args.sdxl, args.supir, cases[0].storage)
        model_label = f"files {Path(args.sdxl).name} + {Path(args.supir).name}"
    else:
        model = random_model(config, cases[0].storage, vae_dtype, device)
        model_label = f"{'tiny' if args.dry_run else 'real-size'} architecture, random weights"
    print(f"# built in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    result = {
        "device": device_info(device),
        "sdpa": probe_sdpa(device, attention_shapes(config, dtype, vae_dtype)),
        "model": model_label,
        "steps": args.steps,
        "dry_run": args.dry_run,
        "budget_gib": args.budget,
    }
    rows, images, storage = [], {}, cases[0].storage
    for case in cases:
        if case.storage != storage:
            apply_storage(model, case.storage, next(model.first_stage_model.parameters()).dtype)
            storage = case.storage
        row, image = run_case(model, case, args, device)
        rows.append(row)
        if image is not None:
            images[case.name] = image
        status = row["error"] or f"{row['total_seconds']} s"
        print(f"# {case.name}: {status}", file=sys.stderr, flush=True)
    result["rows"] = rows
    result["checks"] = compare(images, cases)
    result["failures"] = failures(rows, result["checks"])
    result["ok"] = not result["failures"]
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(report(result))
    print(f"rows written to {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
