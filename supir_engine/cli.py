"""Command line: ``python -m supir_engine check ...``."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import ipaddress
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoints import LoadOptions, LoadReport, load_supir
from .device_policy import PRECISIONS, Precision, precision_for
from .errors import CancelledError, SupirError
from .memory import POLICIES, STORAGE_DTYPES, GiB, MemoryConfig, MemoryPlan, budget_config
from .settings import PRESETS, UpscaleSettings, preset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
HELP = {
    "scale": "upscale factor",
    "min_size": "minimum short side in pixels (the original uses 1024)",
    "alignment": "output sides are rounded to a multiple of this",
    "steps": "sampler steps",
    "sampler": "restore_edm or restore_dpmpp_2m",
    "cfg_scale": "text guidance (CFG) scale",
    "cfg_scale_start": "CFG at the first step, ramping linearly to --cfg-scale ('none': constant)",
    "control_scale": "control (stage-2) strength",
    "control_scale_start": "control strength at the first step ('none': constant)",
    "restoration_scale": "restoration guidance towards the stage-1 image (<= 0: off)",
    "s_churn": "noise churn per step",
    "s_noise": "churn noise scale",
    "eta": "DPM++ 2M stochasticity",
    "color_fix": "wavelet, adain or none",
    "denoise_stage": "run stage 1 (denoise encoder)",
    "caption": "description of the image, put before the positive prompt",
    "positive_prompt": "positive prompt",
    "negative_prompt": "negative prompt",
    "seed": "-1 draws a random seed (reported)",
    "tile_size": "sampler tile size in latent pixels (image px / 8); default untiled",
    "tile_stride": "sampler tile stride in latent pixels",
    "vae_encoder_tile": "VAE encoder tile (image px)",
    "vae_decoder_tile": "VAE decoder tile (latent px)",
}

# Weight storage dtypes: fp8 (float8_e4m3fn) stores UNet, control and text weights in one byte and
# upcasts each layer's weight just in time; the VAE is never stored below bfloat16. ``auto``: what the
# device's precision policy (device_policy.py) suggests.
DTYPES = STORAGE_DTYPES
STORAGE_CHOICES = ("auto", *sorted(DTYPES))
PRECISION_HELP = (
    "compute precision: auto (from the GPU: fp16, with the VAE in bf16 or fp32; fp32 on GTX 16xx, "
    "Pascal and the CPU), fp32, fp16 or bf16 (the VAE is never fp16)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m supir_engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="load and validate model files, print what was found")
    check.add_argument("--sdxl", type=Path, help="SDXL base checkpoint (.safetensors or .ckpt)")
    check.add_argument("--supir", type=Path, help="SUPIR-v0Q or SUPIR-v0F checkpoint")
    check.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="storage dtype (default fp16)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--demo",
        action="store_true",
        help="write a tiny random model in the real layout to a temporary folder and check that instead",
    )
    add_upscale_parser(commands)
    add_serve_parser(commands)
    return parser


def _optional(kind):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    return parse


def add_upscale_parser(commands) -> None:
    up = commands.add_parser("upscale", help="restore and upscale images")
    up.add_argument("inputs", nargs="*", help="image files, folders or glob patterns")
    up.add_argument(
        "-o", "--output", type=Path, help="output file (one input) or folder (default supir_outputs)"
    )
    up.add_argument("--sdxl", type=Path, help="SDXL base checkpoint (default: looked up in --models-dir)")
    up.add_argument("--supir", type=Path, help="SUPIR checkpoint (default: SUPIR-v0Q/F in --models-dir)")
    up.add_argument("--model", choices=["Q", "F"], default="Q", help="SUPIR-v0Q (quality) or v0F (fidelity)")
    up.add_argument("--models-dir", type=Path, help="where to look for models (default models/SUPIR)")
    up.add_argument("--preset", choices=sorted(PRESETS), default="quality", help="parameter preset")
    up.add_argument(
        "--dtype", choices=STORAGE_CHOICES, default="auto", help="weight storage dtype (default auto: fp16)"
    )
    up.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    up.add_argument(
        "--memory",
        choices=POLICIES,
        help="device memory: auto (default: fit the free memory), full, stages, blocks (stream layers)",
    )
    up.add_argument(
        "--vram-budget",
        type=float,
        metavar="GIB",
        help="device memory SUPIR may use, in GiB (default: the free memory); used by --memory auto/blocks",
    )
    up.add_argument("--device", default="auto", help="cuda, cuda:1, mps, cpu (default: best available)")
    up.add_argument("--skip-existing", action="store_true", help="skip inputs whose output already exists")
    up.add_argument(
        "--demo",
        action="store_true",
        help="use a tiny model with RANDOM weights (no download; the output is noise, not a restoration) "
        "and, without inputs, a generated test image: shows that the installation works end to end",
    )
    for f in dataclasses.fields(UpscaleSettings):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            up.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=HELP.get(f.name))
            continue
        kind = float if "float" in f.type else int if "int" in f.type else str
        if "None" in f.type:
            kind = _optional(kind)
        up.add_argument(flag, type=kind, default=None, help=HELP.get(f.name))


def add_serve_parser(commands) -> None:
    serve = commands.add_parser("serve", help="web UI and API (Gradio; needs the 'app' extra)")
    serve.add_argument("--sdxl", type=Path, help="SDXL base checkpoint (default: looked up in --models-dir)")
    serve.add_argument("--supir", type=Path, help="SUPIR-v0Q checkpoint (or the only SUPIR model)")
    serve.add_argument("--supir-f", type=Path, help="SUPIR-v0F checkpoint, to switch between Q and F")
    serve.add_argument("--models-dir", type=Path, help="where to look for models (default models/SUPIR)")
    serve.add_argument("--model", choices=["Q", "F"], default="Q", help="model loaded at start")
    serve.add_argument(
        "--dtype", choices=STORAGE_CHOICES, default="auto", help="weight storage dtype (default auto: fp16)"
    )
    serve.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    serve.add_argument("--device", default="auto", help="cuda, cuda:1, mps, cpu (default: best available)")
    serve.add_argument("--memory", choices=POLICIES, help="device memory policy (default: auto)")
    serve.add_argument(
        "--vram-budget", type=float, metavar="GIB", help="device memory SUPIR may use, in GiB (default: free)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=6688, help="port (default 6688)")
    serve.add_argument(
        "--listen-anywhere", action="store_true", help="allow a --host that is not a loopback address"
    )
    serve.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    serve.add_argument("--output-dir", type=Path, help="also save every result PNG in this folder")
    serve.add_argument("--min-size", type=int, help="default minimum short side (1024; 256 with --demo)")
    serve.add_argument("--demo", action="store_true", help="tiny models with RANDOM weights (no download)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_serve_flags(args: argparse.Namespace) -> None:
    """Refuse a non-loopback address without --listen-anywhere, and a malformed --auth."""
    if not is_loopback(args.host):
        if not args.listen_anywhere:
            raise SupirError(
                f"--host {args.host} is not a loopback address: anyone who can reach this machine could use "
                "the server. Add --listen-anywhere to allow it (and consider --auth user:password)."
            )
        print(
            f"warning: listening on {args.host}: the UI and API are reachable from other machines",
            file=sys.stderr,
        )
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not (user and sep and password):
            raise SupirError("--auth takes user:password")
    vram_budget(args)


def run_serve(args: argparse.Namespace) -> int:
    check_serve_flags(args)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from .app import run_serve as serve
    except ModuleNotFoundError as exc:
        if exc.name != "gradio":
            raise
        raise SupirError("the web UI needs gradio: pip install 'sd-webui-supir[app]'") from exc
    return serve(args)


def format_report(report: LoadReport) -> str:
    lines = ["Files:"]
    for path, components in report.files.items():
        lines.append(f"  {path}: {', '.join(components) or 'nothing used'}")
    lines.append(f"{'component':<36} {'file':<28} {'stored':>8} {'loaded':>9} {'params':>14} {'MiB':>9}")
    for c in report.components:
        lines.append(
            f"{c.description:<36} {Path(c.file).name[:28]:<28} {c.stored_dtype:>8} {c.dtype:>9} "
            f"{c.parameters:>14,} {c.bytes / 2**20:>9.1f}"
        )
    lines.append(
        f"total: {report.parameters:,} parameters, {report.resident_bytes / 2**30:.2f} GiB resident, "
        f"{report.ignored_keys} unused keys ignored, loaded in {report.seconds:.1f} s"
    )
    return "\n".join(lines)


def run_check(args: argparse.Namespace) -> int:
    sdxl, supir = args.sdxl, args.supir
    with tempfile.TemporaryDirectory() as tmp:
        if args.demo:
            from .tiny import write_demo_checkpoints

            sdxl, supir = write_demo_checkpoints(Path(tmp))
            print("Demo: checking a tiny random model in the real SDXL + SUPIR key layout.", file=sys.stderr)
        elif sdxl is None and supir is None:
            raise SupirError("give --sdxl and --supir (or one merged file), or --demo")
        _, report = load_supir(sdxl, supir, LoadOptions(dtype=DTYPES[args.dtype]))
    if args.json:
        print(json.dumps({**dataclasses.asdict(report), "resident_bytes": report.resident_bytes}, indent=1))
    else:
        print(format_report(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            return run_check(args)
        if args.command == "upscale":
            return run_upscale(args)
        if args.command == "serve":
            return run_serve(args)
    except SupirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


def settings_from_args(args: argparse.Namespace) -> UpscaleSettings:
    explicit = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(UpscaleSettings)
        if getattr(args, f.name) is not None
    }
    try:
        return preset(args.preset, **explicit)
    except ValueError as exc:
        raise SupirError(str(exc)) from exc


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            found += sorted(Path(p) for p in glob.glob(pattern) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise SupirError(f"no images found in {', '.join(patterns)}")
    return list(dict.fromkeys(found))


def output_path(source: Path, args: argparse.Namespace, scale: float, single: bool) -> Path:
    if args.output is not None and single and args.output.suffix.lower() in IMAGE_SUFFIXES:
        return args.output
    folder = args.output or Path("supir_outputs")
    return folder / f"{source.stem}_SUPIR_x{scale:g}.png"


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_model_files(args: argparse.Namespace) -> tuple[Path, Path]:
    from .model_files import default_models_dir, find_sdxl, find_supir

    folder = args.models_dir or default_models_dir()
    supir = args.supir or find_supir(folder, args.model)
    sdxl = args.sdxl or find_sdxl(folder, exclude=supir)
    return sdxl, supir


def run_upscale(args: argparse.Namespace) -> int:
    if not args.demo:
        return upscale_files(args)

    from .tiny import demo_image, write_demo_checkpoints

    with tempfile.TemporaryDirectory() as tmp:
        args.sdxl, args.supir = write_demo_checkpoints(Path(tmp))
        if not args.inputs:
            args.inputs = [str(Path(tmp) / "demo.png")]
            demo_image().save(args.inputs[0])
        if args.min_size is None:
            args.min_size = 256
        print(
            "Demo: a tiny model with random weights; the output shows the pipeline runs, nothing more.",
            file=sys.stderr,
        )
        return upscale_files(args)


def upscale_files(args: argparse.Namespace) -> int:
    from .progress import TqdmHost
    from .upscale_io import load_image, save_png

    settings = settings_from_args(args)
    if not args.inputs:
        raise SupirError("give at least one image, folder or glob pattern (or --demo)")
    inputs = expand_inputs(args.inputs)
    single = len(inputs) == 1
    jobs = [(src, output_path(src, args, settings.scale, single)) for src in inputs]
    if args.skip_existing:
        skipped = [src for src, dst in jobs if dst.exists()]
        jobs = [(src, dst) for src, dst in jobs if not dst.exists()]
        if skipped:
            print(f"skipping {len(skipped)} image(s) already done", file=sys.stderr)
    if not jobs:
        return 0
    sdxl, supir = resolve_model_files(args)
    pipeline, report = load_pipeline(sdxl, supir, args)
    print(format_report(report), file=sys.stderr)
    failures = 0
    for src, dst in jobs:
        try:
            image = load_image(src)
            result = pipeline.upscale(image, settings, TqdmHost(src.name))
        except SupirError as exc:
            if isinstance(exc, CancelledError):
                raise
            print(f"error: {src}: {exc}", file=sys.stderr)
            failures += 1
            continue
        save_png(result, dst, model_name=Path(supir).stem)
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
        print(
            f"{src} -> {dst} ({result.output_size[0]}x{result.output_size[1]}, seed {result.settings.seed}; "
            f"{stages}{'; stage 1 cached' if result.stage1_cached else ''}{describe_memory(result.memory)}"
            f"{describe_precision(result.precision)})",
            file=sys.stderr,
        )
    return 1 if failures else 0


def load_pipeline(sdxl: Path, supir: Path, args: argparse.Namespace):
    from .pipeline import SUPIRPipeline

    device = pick_device(args.device)
    precision = precision_from_args(args, device)
    storage, vae_storage = precision.storage_dtypes(args.dtype)
    model, report = load_supir(sdxl, supir, LoadOptions(dtype=storage, vae_dtype=vae_storage))
    pipeline = SUPIRPipeline(model, device, memory=memory_from_args(args), precision=precision)
    return pipeline, report


def precision_from_args(args: argparse.Namespace, device: torch.device) -> Precision:
    """``--precision`` on ``device``; a precision the device cannot do is a SupirError that says so."""
    precision = precision_for(device, getattr(args, "precision", "auto"))
    print(f"precision: {precision.label} ({precision.reason})", file=sys.stderr)
    return precision


def vram_budget(args: argparse.Namespace) -> float | None:
    """``--vram-budget`` in GiB (None: the free memory); refuses zero or less."""
    budget = getattr(args, "vram_budget", None)
    if budget is not None and budget <= 0:
        raise SupirError(f"--vram-budget must be a positive number of GiB, got {budget}")
    return budget


def memory_from_args(args: argparse.Namespace) -> MemoryConfig:
    return budget_config(getattr(args, "memory", None), vram_budget(args))


def describe_precision(precision: Precision | None) -> str:
    return "" if precision is None else f"; {precision.label}"


def describe_memory(plan: MemoryPlan | None) -> str:
    if plan is None:
        return ""
    parts = [plan.policy if plan.requested == plan.policy else f"{plan.requested} -> {plan.policy}"]
    if plan.policy == "blocks":
        parts.append(f"{plan.resident_bytes / GiB:.2f} GiB resident")
    if plan.estimated_peak_bytes is not None:
        parts.append(f"~{plan.estimated_peak_bytes / GiB:.2f} GiB peak")
    if not plan.batch_cfg:
        parts.append("cond/uncond one after the other")
    return "; memory " + ", ".join(parts)
