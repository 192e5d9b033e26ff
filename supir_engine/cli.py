"""SUPIR restoration and upscaling: ``python -m supir_engine {upscale,check,serve}``.

Model files are looked up in models/SUPIR (or $SUPIR_MODELS_DIR, or --models-dir): SUPIR-v0Q / SUPIR-v0F
by name, the SDXL base by a known name (sd_xl_base*, sdxl_base*, *juggernaut*xl*, *sdxl*) or else by the
SDXL UNet keys in its header; --sdxl and --supir take any path."""

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
from typing import TYPE_CHECKING

from .choices import MEMORY_POLICIES as POLICIES
from .choices import PRECISIONS, STORAGE_DTYPE_NAMES
from .cli_tiles import OWN_FLAGS, add_tile_prompt_flags, show_tiles, tile_prompts_from_args
from .device_select import pick_device, storage_dtype
from .errors import CancelledError, SupirError
from .resume_options import DEFAULT_EVERY_STEPS, DEFAULT_MAX_BYTES, ResumeOptions, weights_identity
from .settings import PRESETS, UpscaleSettings, preset

if TYPE_CHECKING:  # torch is imported when a command runs, not for --help
    from .checkpoints import LoadReport
    from .device_policy import Precision
    from .memory import MemoryConfig, MemoryPlan

__all__ = ["build_parser", "main", "pick_device"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
# Also taken from folders and patterns: animations and videos (media.py), upscaled frame by frame.
INPUT_SUFFIXES = IMAGE_SUFFIXES | {".gif", ".apng", ".mp4", ".webm", ".mov", ".mkv", ".m4v"}
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
    "progressive": "enlarge in x2 passes (3x = 2x then 1.5x), each a full SUPIR run with the same seed",
    "pre_upscaler": "enlargement before stage 1: lanczos (the original's), bicubic, or an upscaler model "
    "file (.safetensors or .pth: ESRGAN, SwinIR, DAT, Compact, ...)",
    "pre_upscale_tile": "pre-upscale model tile (input px); default from the free device memory",
}

# Weight storage dtypes: fp8 (float8_e4m3fn) stores UNet, control and text weights in one byte and
# upcasts each layer's weight just in time; the VAE is never stored below bfloat16. ``auto``: what the
# device's precision policy (device_policy.py) suggests.
DTYPES = STORAGE_DTYPE_NAMES
STORAGE_CHOICES = ("auto", *sorted(DTYPES))
PRECISION_HELP = (
    "compute precision: auto (from the GPU: fp16, with the VAE in bf16 or fp32; fp32 on GTX 16xx, "
    "Pascal and the CPU), fp32, fp16 or bf16 (the VAE is never fp16)"
)
DEMO_NOTE = (
    "DEMO: tiny models with RANDOM weights. The output is noise, not a restoration; it only shows that the "
    "installation runs end to end."
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, but not "(default: None)" for options that have none, nor for flags."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m supir_engine", description=__doc__, formatter_class=HelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="load and validate model files, print what was found", formatter_class=HelpFormatter
    )
    check.add_argument("--sdxl", type=Path, help="SDXL base checkpoint, any name (default: looked up)")
    check.add_argument("--supir", type=Path, help="SUPIR-v0Q or SUPIR-v0F checkpoint (default: looked up)")
    check.add_argument("--model", choices=["Q", "F"], default="Q", help="which SUPIR to look up")
    check.add_argument(
        "--models-dir", type=Path, help="where to look for models (default models/SUPIR or $SUPIR_MODELS_DIR)"
    )
    check.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="storage dtype")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--demo",
        action="store_true",
        help="write a tiny model with RANDOM weights in the real layout to a temporary folder and check that",
    )
    add_upscale_parser(commands)
    add_serve_parser(commands)
    return parser


def _optional(kind):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    return parse


def add_upscale_parser(commands) -> None:
    up = commands.add_parser("upscale", help="restore and upscale images", formatter_class=HelpFormatter)
    up.add_argument(
        "inputs",
        nargs="*",
        help="image files, folders or glob patterns; animated GIF/WebP/APNG and videos (mp4, webm, mov, mkv) "
        "are upscaled frame by frame into the same container",
    )
    up.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output folder (default supir_outputs), or with one input an output file whose extension "
        "(.png, .jpg, .webp) picks the format",
    )
    up.add_argument("--sdxl", type=Path, help="SDXL base checkpoint (default: looked up in --models-dir)")
    up.add_argument("--supir", type=Path, help="SUPIR checkpoint (default: SUPIR-v0Q/F in --models-dir)")
    up.add_argument("--model", choices=["Q", "F"], default="Q", help="SUPIR-v0Q (quality) or v0F (fidelity)")
    up.add_argument("--models-dir", type=Path, help="where to look for models (default models/SUPIR)")
    up.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="quality",
        help="parameter preset: quality / fidelity (the SUPIR authors' 2025 settings), *_classic (the first "
        "demo's), lightning_* (8 DPM++ 2M steps; only for an SDXL-Lightning base)",
    )
    up.add_argument(
        "--dtype", choices=STORAGE_CHOICES, default="auto", help="weight storage dtype (auto: fp16)"
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
    up.add_argument("--device", default="auto", help="cuda, cuda:1, mps, cpu; auto: the best available")
    existing = up.add_mutually_exclusive_group()
    existing.add_argument(
        "--skip-existing", action="store_true", help="skip inputs whose output already exists"
    )
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (default: an existing name gets a number, e.g. a_SUPIR_x2-1.png)",
    )
    up.add_argument(
        "--keep-frames",
        action="store_true",
        help="animations and videos: keep the work folder of upscaled frames (<output>.frames) after the "
        "output is written (it is always kept when a run stops part way, to resume it)",
    )
    up.add_argument(
        "--demo",
        action="store_true",
        help="use a tiny model with RANDOM weights (no download; the output is noise, not a restoration) "
        "and, without inputs, a generated test image: shows that the installation works end to end",
    )
    add_resume_arguments(up)
    add_tile_prompt_flags(up)
    defaults = preset("quality")
    for f in dataclasses.fields(UpscaleSettings):
        if f.name in OWN_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        # default=None: an explicit value overrides the preset; help shows the default preset's value.
        text = f"{HELP.get(f.name, f.name)} (quality preset: {getattr(defaults, f.name)!r})"
        if f.type == "bool":
            up.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
            continue
        kind = float if "float" in f.type else int if "int" in f.type else str
        if "None" in f.type:
            kind = _optional(kind)
        up.add_argument(flag, type=kind, default=None, help=text.replace("%", "%%"))


def add_resume_arguments(parser: argparse.ArgumentParser) -> None:
    """--resume-dir and how often states are saved (upscale and serve share them)."""
    group = parser.add_argument_group("resumable runs")
    group.add_argument(
        "--resume-dir",
        type=Path,
        metavar="DIR",
        help="save the sampler's state in DIR while it runs; a later run of the same image with the same "
        "settings and models continues from it (the same result as one uninterrupted run)",
    )
    group.add_argument(
        "--save-every-steps",
        type=int,
        default=DEFAULT_EVERY_STEPS,
        metavar="N",
        help="with --resume-dir: save after every N sampler steps (and whenever a run is stopped)",
    )
    group.add_argument(
        "--save-every-minutes",
        type=float,
        metavar="M",
        help="with --resume-dir: also save once M minutes have passed since the last save",
    )
    group.add_argument(
        "--resume-limit-gb",
        type=float,
        default=DEFAULT_MAX_BYTES / 1024**3,
        metavar="GB",
        help="with --resume-dir: the oldest saved states are deleted beyond this size",
    )


def resume_from_args(args: argparse.Namespace, weights: str) -> ResumeOptions | None:
    """The ResumeOptions of --resume-dir and its companions (None without --resume-dir)."""
    folder = getattr(args, "resume_dir", None)
    if folder is None:
        return None
    minutes = args.save_every_minutes
    try:
        return ResumeOptions(
            Path(folder).expanduser(),
            weights,
            every_steps=args.save_every_steps,
            every_seconds=None if minutes is None else minutes * 60.0,
            max_bytes=int(args.resume_limit_gb * 1024**3),
        )
    except ValueError as exc:
        raise SupirError(f"resumable runs: {exc}") from exc


def add_serve_parser(commands) -> None:
    serve = commands.add_parser(
        "serve", help="web UI and API (Gradio; needs the 'app' extra)", formatter_class=HelpFormatter
    )
    serve.add_argument("--sdxl", type=Path, help="SDXL base checkpoint (default: looked up in --models-dir)")
    serve.add_argument("--supir", type=Path, help="SUPIR-v0Q checkpoint (or the only SUPIR model)")
    serve.add_argument("--supir-f", type=Path, help="SUPIR-v0F checkpoint, to switch between Q and F")
    serve.add_argument("--models-dir", type=Path, help="where to look for models (default models/SUPIR)")
    serve.add_argument("--model", choices=["Q", "F"], default="Q", help="model loaded at start")
    serve.add_argument(
        "--dtype", choices=STORAGE_CHOICES, default="auto", help="weight storage dtype (auto: fp16)"
    )
    serve.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    serve.add_argument("--device", default="auto", help="cuda, cuda:1, mps, cpu; auto: the best available")
    serve.add_argument("--memory", choices=POLICIES, help="device memory policy (default: auto)")
    serve.add_argument(
        "--vram-budget", type=float, metavar="GIB", help="device memory SUPIR may use, in GiB (default: free)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=6688, help="port")
    serve.add_argument(
        "--listen-anywhere", action="store_true", help="allow a --host that is not a loopback address"
    )
    serve.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    serve.add_argument("--output-dir", type=Path, help="also save every result PNG in this folder")
    serve.add_argument(
        "--upscalers-dir",
        type=Path,
        help="upscaler model files (.safetensors / .pth) offered as pre-upscalers (default models/upscalers)",
    )
    serve.add_argument(
        "--min-size", type=int, help="default minimum short side (default 1024; 256 with --demo)"
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="tiny models with RANDOM weights (no download): the output is noise, not a restoration",
    )
    add_resume_arguments(serve)


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
    check_port(args.host, args.port)


def check_port(host: str, port: int) -> None:
    """Refuse a port that another server holds, before Gradio starts (it would print a misleading hint)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SupirError(f"--host {host} is not an address of this machine ({exc})") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the web server binds: SO_REUSEADDR, so that a port left in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise SupirError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): another program (or an earlier "
                "SUPIR server) uses that port; stop it or choose another port with --port"
            ) from exc


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
    """Load the model files and report them; without --sdxl / --supir they are looked up as ``upscale``
    does (a merged file given as --sdxl alone is checked as it is)."""
    from .checkpoints import LoadOptions, load_supir

    sdxl, supir = args.sdxl, args.supir
    with tempfile.TemporaryDirectory() as tmp:
        if args.demo:
            from .tiny import write_demo_checkpoints

            sdxl, supir = write_demo_checkpoints(Path(tmp))
            print(
                "Demo: checking a tiny model with RANDOM weights in the real SDXL + SUPIR key layout.",
                file=sys.stderr,
            )
        elif supir is None and sdxl is None:
            sdxl, supir = resolve_model_files(args)
            print(f"Found {sdxl} and {supir}", file=sys.stderr)
        _, report = load_supir(sdxl, supir, LoadOptions(dtype=storage_dtype(args.dtype)))
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


def settings_from_args(args: argparse.Namespace) -> UpscaleSettings:
    explicit = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(UpscaleSettings)
        if f.name not in OWN_FLAGS and getattr(args, f.name, None) is not None
    }
    try:
        entries = tile_prompts_from_args(args)
        if entries:
            explicit["tile_prompts"] = entries
        return preset(args.preset, **explicit)
    except ValueError as exc:
        raise SupirError(str(exc)) from exc


def expand_inputs(patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    """(image files found, patterns that matched nothing); files, folders (their images) and globs."""
    found: list[Path] = []
    missing: list[str] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            hits = sorted(p for p in path.iterdir() if p.suffix.lower() in INPUT_SUFFIXES and p.is_file())
        elif path.exists():
            hits = [path]
        else:
            hits = sorted(Path(p) for p in glob.glob(pattern) if Path(p).suffix.lower() in INPUT_SUFFIXES)
        if not hits:
            missing.append(pattern)
        found += hits
    return list(dict.fromkeys(found)), missing


def output_path(source: Path, args: argparse.Namespace, scale: float, single: bool) -> Path:
    """The output of one input on its own (a batch is planned by ``output_names.plan_outputs``)."""
    from .output_names import IMAGE_EXTENSIONS, plan_outputs

    output = args.output
    if not single and output is not None and output.suffix.lower() in IMAGE_EXTENSIONS:
        output = output.parent
    target = plan_outputs([source], [scale], output, overwrite=getattr(args, "overwrite", False))[0]
    return target.path


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
        print(DEMO_NOTE, file=sys.stderr)
        status = upscale_files(args)
        print(DEMO_NOTE, file=sys.stderr)
        return status


@dataclasses.dataclass
class Batch:
    """The checked inputs of a run: what to do, and how many inputs failed already."""

    jobs: list  # output_names.Target, in input order
    failures: int


def report_failure(source: str | Path, message: str) -> None:
    print(f"error: {source}: {message}", file=sys.stderr)


def prepare_batch(args: argparse.Namespace, settings: UpscaleSettings) -> Batch:
    """Everything that can fail before the models load: find and read every input, plan the output names,
    check that the output folders are writable. Unreadable inputs are reported and left out."""
    from .media import check_output, input_size, output_extension
    from .output_names import plan_outputs, real_factor
    from .preprocess import check_size, target_size
    from .upscale_io import check_writable

    if not args.inputs:
        raise SupirError("give at least one image, folder or glob pattern (or --demo)")
    sources, missing = expand_inputs(args.inputs)
    failures = 0
    for pattern in missing:
        report_failure(pattern, "no such file, or no images in that folder or pattern")
        failures += 1
    readable, factors = [], []
    for src in sources:
        try:
            w, h = input_size(src)
            out_h, out_w = target_size(h, w, settings.scale, settings.min_size, settings.alignment)
            check_size(out_h, out_w)
        except SupirError as exc:
            report_failure(src, str(exc))
            failures += 1
            continue
        readable.append(src)
        factors.append(real_factor((w, h), (out_w, out_h)))
    if not readable:
        raise SupirError("none of the inputs can be upscaled (see the errors above)")
    targets = plan_outputs(
        readable,
        factors,
        args.output,
        overwrite=getattr(args, "overwrite", False),
        skip_existing=args.skip_existing,
        extensions=[output_extension(src) for src in readable],
    )
    for target in targets:  # an output file named with -o must suit its input
        check_output(target.path, target.source)
    for folder in dict.fromkeys(t.path.parent for t in targets):
        check_writable(folder)
    skipped = [t for t in targets if t.skip]
    if skipped:
        print(f"skipping {len(skipped)} image(s) already done", file=sys.stderr)
    return Batch([t for t in targets if not t.skip], failures)


def upscale_files(args: argparse.Namespace) -> int:
    from .alpha import keep_alpha
    from .media import media_kind as is_media
    from .media_run import run_media_file
    from .progress import TqdmHost
    from .upscale_io import load_image, save_image

    settings = settings_from_args(args)
    resume_from_args(args, "")  # bad values fail before anything loads
    batch = prepare_batch(args, settings)
    if getattr(args, "show_tiles", False):
        return show_tiles(batch.jobs, settings)
    failures = batch.failures
    if batch.jobs:
        sdxl, supir = resolve_model_files(args)
        pipeline, report = load_pipeline(sdxl, supir, args)
        print(format_report(report), file=sys.stderr)
        model_name = Path(supir).stem
        resume = resume_from_args(args, weights_identity(sdxl, supir, extra=(args.dtype, args.precision)))
    for job in batch.jobs:
        src, dst = job.source, job.path
        if is_media(src):
            failures += run_media_file(pipeline, settings, src, dst, model_name, args.keep_frames)
            continue
        try:
            image = load_image(src)
            result = pipeline.upscale(image, settings, TqdmHost(src.name, settings.steps), resume=resume)
            save_image(keep_alpha(image, result.image), result, dst, model_name)
        except CancelledError:
            raise
        except (SupirError, OSError) as exc:
            report_failure(src, str(exc) if isinstance(exc, SupirError) else f"cannot write {dst} ({exc})")
            failures += 1
            continue
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
        print(
            f"{src} -> {dst} ({result.output_size[0]}x{result.output_size[1]}, seed {result.settings.seed}; "
            f"{stages}{'; stage 1 cached' if result.stage1_cached else ''}{describe_memory(result.memory)}"
            f"{describe_precision(result.precision)}{describe_resume(result)})",
            file=sys.stderr,
        )
    if failures:
        print(f"{failures} image(s) failed", file=sys.stderr)
    return 1 if failures else 0


def load_pipeline(sdxl: Path, supir: Path, args: argparse.Namespace):
    from .checkpoints import LoadOptions, load_supir
    from .pipeline import SUPIRPipeline

    device = pick_device(args.device)
    precision = precision_from_args(args, device)
    storage, vae_storage = precision.storage_dtypes(args.dtype)
    model, report = load_supir(sdxl, supir, LoadOptions(dtype=storage, vae_dtype=vae_storage))
    pipeline = SUPIRPipeline(model, device, memory=memory_from_args(args), precision=precision)
    return pipeline, report


def precision_from_args(args: argparse.Namespace, device):
    """``--precision`` on ``device``; a precision the device cannot do is a SupirError that says so."""
    from .device_policy import precision_for

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
    from .memory import budget_config

    return budget_config(getattr(args, "memory", None), vram_budget(args))


def describe_resume(result) -> str:
    return "" if result.resumed_at is None else "; resumed at step {}/{}".format(*result.resumed_at)


def describe_precision(precision: Precision | None) -> str:
    return "" if precision is None else f"; {precision.label}"


def describe_memory(plan: MemoryPlan | None) -> str:
    if plan is None:
        return ""
    from .memory import GiB

    parts = [plan.policy if plan.requested == plan.policy else f"{plan.requested} -> {plan.policy}"]
    if plan.policy == "blocks":
        parts.append(f"{plan.resident_bytes / GiB:.2f} GiB resident")
    if plan.estimated_peak_bytes is not None:
        parts.append(f"~{plan.estimated_peak_bytes / GiB:.2f} GiB peak")
    if not plan.batch_cfg:
        parts.append("cond/uncond one after the other")
    return "; memory " + ", ".join(parts)
