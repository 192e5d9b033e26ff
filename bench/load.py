"""Loading benchmark: time and peak RAM of ``load_supir`` on SDXL base + SUPIR checkpoints.

Writes random checkpoints in the real key layout once (an SDXL base fp16 .safetensors, a SUPIR
fp16 .safetensors and a SUPIR fp32 Lightning-style .ckpt), then measures every case in a fresh
subprocess so that each peak RSS is that of one load only:

    python bench/load.py --config tiny                   # seconds; what CI runs
    python bench/load.py --config full --workdir /data   # ~15 GB of files, ~10 GB of RAM per load
    python bench/load.py --config full --json            # machine-readable figures

Cases: ``load_supir`` with the SDXL file and each SUPIR file (LoadOptions(dtype=float16)), and
each file alone read tensor by tensor through the same ``TensorFile.read`` path (the file's
contribution). Targets (full size only): peak RSS / resident bytes <= 1.15 with fp16
safetensors and <= 1.3 with the fp32 .ckpt cast to fp16. For the single-file cases the target
is checked on (peak - baseline) / resident, since the baseline (Python + torch, ~0.5 GB) is
not part of a file's contribution.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import math
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from supir_engine import checkpoints  # noqa: E402
from supir_engine.checkpoints import LoadOptions, component_of, load_supir, open_checkpoint  # noqa: E402
from supir_engine.models import SUPIR_V0, SUPIRConfig, build_supir  # noqa: E402
from supir_engine.tiny import TINY_CONFIG, split_state_dict  # noqa: E402

log = logging.getLogger("bench.load")

CONFIGS: dict[str, SUPIRConfig] = {"full": SUPIR_V0, "tiny": TINY_CONFIG}
LOAD_DTYPE = torch.float16
SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}
NORM_SUFFIXES = ("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "ln_1.weight", "ln_2.weight")
RESULT_MARK = "BENCH_RESULT "
# Runs the measuring process from a small interpreter: ru_maxrss survives exec, so a process spawned
# straight from this (large) one would start with our peak RSS as its own.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"
GIB = 1 << 30
MIB = 1 << 20


# --------------------------------------------------------------------------------------------
# The checkpoint files


@dataclass(frozen=True)
class FileSpec:
    role: str  # "sdxl", "supir_sft" or "supir_ckpt"
    part: str  # "sdxl" or "supir": which half of split_state_dict it holds
    dtype: torch.dtype
    suffix: str

    def path(self, workdir: Path, config: str) -> Path:
        dtype = str(self.dtype).removeprefix("torch.").replace("float", "fp")
        return workdir / f"{config}_{self.role}_{dtype}{self.suffix}"


FILES = {
    "sdxl": FileSpec("sdxl", "sdxl", torch.float16, ".safetensors"),
    "supir_sft": FileSpec("supir_sft", "supir", torch.float16, ".safetensors"),
    "supir_ckpt": FileSpec("supir_ckpt", "supir", torch.float32, ".ckpt"),
}


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "load_supir": the whole model from two files; "read": one file, tensor by tensor
    files: tuple[str, ...]
    target: float


CASES = {
    c.name: c
    for c in (
        Case("sdxl_fp16_sft", "read", ("sdxl",), 1.15),
        Case("supir_fp16_sft", "read", ("supir_sft",), 1.15),
        Case("supir_fp32_ckpt", "read", ("supir_ckpt",), 1.3),
        Case("sdxl_fp16_sft + supir_fp16_sft", "load_supir", ("sdxl", "supir_sft"), 1.15),
        Case("sdxl_fp16_sft + supir_fp32_ckpt", "load_supir", ("sdxl", "supir_ckpt"), 1.3),
    )
}


def key_shapes(config: SUPIRConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """{"sdxl": {key: shape}, "supir": {key: shape}}: the keys the public files hold, in model order."""
    with _no_weight_init():
        model = build_supir(config, "meta")
    meta = {
        k: v
        for k, v in model.state_dict().items()
        if not (k.startswith("denoiser.") or k.endswith("position_ids"))
    }
    sdxl, supir = split_state_dict(meta)
    return {
        "sdxl": {k: tuple(v.shape) for k, v in sdxl.items()},
        "supir": {k: tuple(v.shape) for k, v in supir.items()},
    }


@contextlib.contextmanager
def _no_weight_init() -> Iterator[None]:
    """Skip nn.init while building on meta: on meta it goes through torch._refs, which imports
    torch._dynamo (~2 s of CPU). Only the shapes are wanted here."""
    saved = {n: getattr(torch.nn.init, n) for n in dir(torch.nn.init) if n.endswith("_") and n[0] != "_"}
    for name in saved:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def random_tensor(
    key: str, shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator
) -> torch.Tensor:
    """Small random values generated directly in ``dtype`` (no float32 detour)."""
    tensor = torch.empty(shape, dtype=dtype).normal_(0.0, 0.02, generator=generator)
    if key.endswith(NORM_SUFFIXES):
        tensor.add_(1.0)
    return tensor


def safetensors_header(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> tuple[bytes, int]:
    """(length-prefixed JSON header, size of the data section) of a file holding ``shapes``.

    Tensors are laid out sorted by name, as safetensors' save_file does (for one dtype) and as the
    public files are, so the loader reads them in the same scattered order as real files."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict[str, object] = {"__metadata__": {"format": "pt", "written_by": "bench/load.py"}}
    offset = 0
    for key, shape in sorted(shapes.items()):
        size = math.prod(shape) * itemsize
        header[key] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors itself writes it
    return struct.pack("<Q", len(raw)) + raw, offset


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, seed: int) -> None:
    """Stream a .safetensors file tensor by tensor: one tensor in RAM at a time."""
    generator = torch.Generator().manual_seed(seed)
    header, _ = safetensors_header(shapes, dtype)
    with open(path, "wb") as f:
        f.write(header)
        for key, shape in sorted(shapes.items()):
            tensor = random_tensor(key, shape, dtype, generator)
            f.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
            del tensor
        f.flush()
        os.fsync(f.fileno())  # dirty pages could not be dropped for a cold-cache measurement


def write_ckpt(path: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, seed: int) -> None:
    """A Lightning-style pickled checkpoint ({'state_dict': ...}) written by torch.save."""
    generator = torch.Generator().manual_seed(seed)
    state = {key: random_tensor(key, shape, dtype, generator) for key, shape in shapes.items()}
    torch.save({"state_dict": state, "global_step": 0, "epoch": 0}, path)
    del state
    _malloc_trim()
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def expected_size(spec: FileSpec, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """Exact size of a file we write, or None when it is only known once written (torch.save)."""
    if spec.suffix != ".safetensors":
        return None
    header, data = safetensors_header(shapes, spec.dtype)
    return len(header) + data


def ensure_files(workdir: Path, config: str, roles: Sequence[str], seed: int) -> dict[str, dict]:
    """Write the checkpoint files that are missing or have the wrong size; {role: info}."""
    workdir.mkdir(parents=True, exist_ok=True)
    manifest_path = workdir / f"{config}_manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    shapes = key_shapes(CONFIGS[config])
    info = {}
    for role in roles:
        spec = FILES[role]
        path = spec.path(workdir, config)
        part = shapes[spec.part]
        wanted = expected_size(spec, part) or manifest.get(path.name, {}).get("bytes")
        if path.exists() and path.stat().st_size == wanted:
            info[role] = {"path": str(path), "bytes": wanted, "tensors": len(part), "written_s": None}
            log.info("reusing %s (%s)", path, human(wanted))
            continue
        estimate = sum(math.prod(s) for s in part.values()) * torch.empty((), dtype=spec.dtype).element_size()
        free = shutil.disk_usage(workdir).free
        if free < estimate + 2 * GIB:
            raise SystemExit(
                f"not enough disk space in {workdir} for {path.name}: {human(free)} free, "
                f"{human(estimate)} needed (+2 GiB margin)"
            )
        log.info("writing %s (%d tensors, ~%s)", path, len(part), human(estimate))
        start = time.perf_counter()
        tmp = path.with_name(path.name + ".partial")
        writer = write_safetensors if spec.suffix == ".safetensors" else write_ckpt
        writer(tmp, part, spec.dtype, seed * len(FILES) + list(FILES).index(role))
        tmp.replace(path)
        seconds = time.perf_counter() - start
        size = path.stat().st_size
        manifest[path.name] = {"bytes": size, "tensors": len(part), "dtype": str(spec.dtype)}
        manifest_path.write_text(json.dumps(manifest, indent=1))
        info[role] = {"path": str(path), "bytes": size, "tensors": len(part), "written_s": round(seconds, 1)}
        log.info("wrote %s in %.1f s", human(size), seconds)
    return info


# --------------------------------------------------------------------------------------------
# Measuring (in a fresh subprocess)


def proc_status() -> dict[str, int]:
    """The memory lines of /proc/self/status, in bytes (empty where there is no procfs)."""
    values = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name.startswith(("Vm", "Rss")) and rest.strip().endswith("kB"):
                    values[name] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 1 << 62


def ru_maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


@dataclass
class Sampler:
    """Samples VmRSS / RssAnon / RssFile in a thread, to see *what* the peak is made of."""

    interval: float = 0.02
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        s = proc_status()
        t = time.perf_counter() - self._start
        self.samples.append((t, s.get("VmRSS", 0), s.get("RssAnon", 0), s.get("RssFile", 0)))

    def summary(self) -> dict[str, int]:
        if not self.samples:
            return {}
        at_peak = max(self.samples, key=lambda s: s[1])
        return {
            "sampled_peak_rss": at_peak[1],
            "rss_anon_at_peak": at_peak[2],
            "rss_file_at_peak": at_peak[3],
            "max_rss_anon": max(s[2] for s in self.samples),
            "max_rss_file": max(s[3] for s in self.samples),
        }


def drop_from_page_cache(path: Path) -> None:
    """Evict this file's (clean, unmapped) pages from the page cache: a cold read, this file only."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_into_page_cache(path: Path) -> None:
    buffer = bytearray(16 * MIB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def _read_file(path: Path, options: LoadOptions) -> list[torch.Tensor]:
    """Read every tensor of one file as load_supir does; keep them (the file's share of the model)."""
    file = open_checkpoint(path)
    kept = []
    try:
        for key in file.keys:
            component = component_of(key)
            kept.append(file.read(key, options.dtype_for(component.name if component else "")))
    finally:
        file.close()
    return kept


def measure(case: Case, paths: dict[str, Path], cache: str, release: bool, trace: bool) -> dict:
    """Runs in the fresh subprocess: load, and report time and memory of this process."""
    if not release:  # diagnostic: what peak RSS would be without the madvise page release
        checkpoints.release_pages = lambda *args, **kwargs: None
    files = [paths[role] for role in case.files]
    for path in files:
        if cache == "cold":
            drop_from_page_cache(path)
        elif cache == "warm":
            read_into_page_cache(path)
    options = LoadOptions(dtype=LOAD_DTYPE)
    baseline = proc_status()
    baseline_rss = baseline.get("VmRSS") or ru_maxrss_bytes()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with Sampler() as sampler:
        start, cpu_start = time.perf_counter(), time.process_time()
        loaded: object
        if case.kind == "load_supir":
            loaded, report = load_supir(files[0], files[1], options)
            resident = report.resident_bytes
        else:
            loaded = _read_file(files[0], options)
            resident = sum(t.nbytes for t in loaded)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    used = resource.getrusage(resource.RUSAGE_SELF)
    after = proc_status()  # with the loaded tensors still alive
    del loaded
    result = {
        "case": case.name,
        "kind": case.kind,
        "files": [str(p) for p in files],
        "cache": cache,
        "madvise_release": release,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # user + system, all threads: steadier than wall time on a busy machine
        "major_faults": used.ru_majflt - usage.ru_majflt,
        "minor_faults": used.ru_minflt - usage.ru_minflt,
        "baseline_rss": baseline_rss,
        # VmHWM is this program's own high-water mark (a new mm at exec); ru_maxrss survives exec and so
        # also holds the RSS of whoever spawned us, hence the small launcher in run_case.
        "peak_rss": after.get("VmHWM") or ru_maxrss_bytes(),
        "vm_hwm": after.get("VmHWM"),
        "ru_maxrss": ru_maxrss_bytes(),
        "resident_bytes": resident,
        "after_rss": after.get("VmRSS"),
        "after_rss_anon": after.get("RssAnon"),
        "after_rss_file": after.get("RssFile"),
        **sampler.summary(),
    }
    if trace:
        result["trace"] = [[round(t, 3), rss, anon, file] for t, rss, anon, file in sampler.samples]
    return result


def run_case(case: Case, args: argparse.Namespace, workdir: Path) -> dict:
    """Measure one case in a fresh interpreter and add the ratios and the target check."""
    command = [
        sys.executable,
        "-S",
        "-c",
        LAUNCHER,
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure",
        case.name,
        "--workdir",
        str(workdir),
        "--config",
        args.config,
        "--cache",
        args.cache,
    ]
    if args.no_release:
        command.append("--no-release")
    if args.trace:
        command.append("--trace")
    log.info("measuring %s", case.name)
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        raise SystemExit(
            f"measuring {case.name} failed (exit {done.returncode}):\n"
            f"{done.stdout[-2000:]}{done.stderr[-4000:]}"
        )
    result = json.loads(lines[-1][len(RESULT_MARK) :])
    resident = result["resident_bytes"]
    result["ratio_delta"] = (result["peak_rss"] - result["baseline_rss"]) / resident
    result["ratio_peak"] = result["peak_rss"] / resident
    if args.config == "full":
        checked = result["ratio_peak"] if case.kind == "load_supir" else result["ratio_delta"]
        result["target"] = case.target
        result["target_on"] = "peak/resident" if case.kind == "load_supir" else "(peak-baseline)/resident"
        result["target_met"] = checked <= case.target
    else:
        result["target"] = result["target_on"] = result["target_met"] = None
    return result


# --------------------------------------------------------------------------------------------
# Output


def human(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / MIB:.1f} MiB"


def table(rows: list[list[str]], header: list[str]) -> Iterator[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    yield "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()
    yield "  ".join("-" * w for w in widths)
    for row in rows:
        cells = (str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        yield "  ".join(cells).rstrip()


def print_report(results: list[dict], files: dict[str, dict], args: argparse.Namespace) -> None:
    release = "off (diagnostic)" if args.no_release else "on"
    print(
        f"SUPIR loading benchmark: config={args.config}, cache={args.cache}, dtype=float16 (VAEs bfloat16), "
        f"madvise release {release}, torch {torch.__version__}, {os.cpu_count()} CPUs, jobs={args.jobs}"
    )
    for role, info in files.items():
        written = f", written in {info['written_s']} s" if info["written_s"] is not None else ", reused"
        print(f"  {role:<10} {info['path']}  {human(info['bytes'])} ({info['tensors']} tensors{written})")
    print()
    rows = []
    for r in results:
        if r["target"] is None:
            verdict = "n/a (tiny)"
        else:
            on = "peak/res" if r["kind"] == "load_supir" else "(peak-base)/res"
            verdict = f"{on} <= {r['target']}: {'met' if r['target_met'] else 'MISSED'}"
        rows.append(
            [
                r["case"],
                f"{r['seconds']:.2f}",
                f"{r['cpu_seconds']:.2f}",
                human(r["baseline_rss"]),
                human(r["peak_rss"]),
                human(r["ru_maxrss"]),
                human(r["resident_bytes"]),
                f"{r['ratio_delta']:.3f}",
                f"{r['ratio_peak']:.3f}",
                verdict,
            ]
        )
    header = [
        "case",
        "seconds",
        "CPU s",
        "baseline RSS",
        "peak RSS",
        "ru_maxrss",
        "resident",
        "(peak-base)/res",
        "peak/res",
        "target",
    ]
    for line in table(rows, header):
        print(line)
    print("(peak RSS = VmHWM of the measuring process; ru_maxrss for comparison)")
    print()
    detail = [
        [
            r["case"],
            human(r.get("max_rss_anon")),
            human(r.get("max_rss_file")),
            human(r.get("rss_anon_at_peak")),
            human(r.get("rss_file_at_peak")),
            human(r.get("after_rss_anon")),
            human(r.get("after_rss_file")),
            f"{r['major_faults']:,}",
            f"{r['minor_faults']:,}",
        ]
        for r in results
    ]
    header = [
        "memory detail (sampled every 20 ms)",
        "max RssAnon",
        "max RssFile",
        "RssAnon@peak",
        "RssFile@peak",
        "RssAnon after",
        "RssFile after",
        "major faults",
        "minor faults",
    ]
    for line in table(detail, header):
        print(line)


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the checkpoint files here and reuse them between "
        "runs (default: a temporary folder, deleted at the end)",
    )
    parser.add_argument("--delete", action="store_true", help="delete the files in --workdir at the end")
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=list(CASES),
        default=list(CASES),
        metavar="CASE",
        help=f"subset of: {', '.join(repr(c) for c in CASES)}",
    )
    parser.add_argument(
        "--cache",
        choices=["cold", "warm", "asis"],
        default="cold",
        help="page cache before each case: cold drops the files' pages (posix_fadvise), warm "
        "reads them first, asis leaves it (default: cold)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help="cases measured at the same time (default: 1 at full size, "
        "the CPU count for tiny, where times are not the point); RSS is per process",
    )
    parser.add_argument(
        "--no-release",
        action="store_true",
        help="diagnostic: disable the madvise page release of supir_engine.filemap",
    )
    parser.add_argument("--trace", action="store_true", help="include the RSS samples in --json output")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    parser.add_argument("--json-out", type=Path, help="also write the JSON results to this file")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = 1 if args.config == "full" else max(1, os.cpu_count() or 1)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.measure:
        paths = {role: spec.path(args.workdir, args.config) for role, spec in FILES.items()}
        result = measure(CASES[args.measure], paths, args.cache, not args.no_release, args.trace)
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0

    if args.config == "full" and _mem_available() < 12 * GIB:
        log.warning("only %s of RAM available: a full-size load needs ~10 GiB", human(_mem_available()))
    cases = [CASES[name] for name in args.cases]
    roles = [role for role in FILES if any(role in c.files for c in cases)]
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="supir-bench-")) if temporary else args.workdir
    try:
        start = time.perf_counter()
        files = ensure_files(workdir, args.config, roles, args.seed)
        log.info("files ready in %.1f s", time.perf_counter() - start)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda case: run_case(case, args, workdir), cases))
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.delete:
            for role in roles:
                FILES[role].path(workdir, args.config).unlink(missing_ok=True)
            (workdir / f"{args.config}_manifest.json").unlink(missing_ok=True)
    everything = {
        "config": args.config,
        "cache": args.cache,
        "madvise_release": not args.no_release,
        "torch": torch.__version__,
        "files": files,
        "results": results,
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(everything, indent=1))
    if args.json:
        print(json.dumps(everything, indent=1))
    else:
        print_report(results, files, args)
    missed = [r["case"] for r in results if r["target_met"] is False]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
