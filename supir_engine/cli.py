"""Command line: ``python -m supir_engine check ...``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoints import LoadOptions, LoadReport, load_supir
from .errors import SupirError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


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
    return parser


def format_report(report: LoadReport) -> str:
    lines = ["Files:"]
    for path, components in report.files.items():
        lines.append(f"  {path}: {', '.join(components) or 'nothing used'}")
    lines.append(f"{'component':<36} {'file':<28} {'stored':>8} {'loaded':>9} {'params':>14} {'MiB':>9}")
    for c in report.components:
        lines.append(
            f"{c.description:<36} {c.file[:28]:<28} {c.stored_dtype:>8} {c.dtype:>9} "
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
    except SupirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1
