"""What a latent-upscaler input path would save, in FLOPs and peak device memory, at 1024 -> 2048 px.

    python bench/latent_route.py             # real-size SUPIR on the fake CUDA device (a few minutes)
    python bench/latent_route.py --tiny      # the tiny architecture, 64 -> 128 px (seconds; for tests)
    python bench/latent_route.py --json

The case: txt2img has an SDXL latent (same VAE as SUPIR's) of the 1024 px image, and SUPIR enlarges x2.
Today the latent is decoded (1024 px), the image is resized (Lanczos, on the CPU) and stage 1 runs at
2048 px: denoise encoder -> decoder -> encoder. An SD-Latent-Upscaler style network (a small conv net:
conv 4->64, nearest x2, 16 convs 64->64, conv 64->4, all 3x3) could enlarge the latent instead.

Stage 1 needs the *pixel* image through SUPIR's denoise encoder (the control latent is the denoise
encoder's output, and GLVControl was trained on it), so a faithful latent path removes only the 1024 px
decode and the resize, and must add the upscaler and a 2048 px decode to get the pixels stage 1 needs:
it costs more than it saves. The upper bound (not faithful) lets the enlarged latent stand in for all of
stage 1. Both are compared with a 20-step run's FLOPs (stage 1 + text + 20 x one sampler step + decode).

Everything runs untiled, fp16 UNet/control and bf16 VAE, on bench/fakecuda.py's fake device: FLOPs count
matrix products, convolutions and attention (2 per multiply-add); peaks are allocated bytes while the
piece ran (its weights included), and "rise" is that peak above the bytes live when it began (for the run's
stages, that includes the weights the stage brought to the device).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30
STEPS = 20
THRESHOLD = 0.25  # the share of a run's FLOPs the path must save to be worth building
LANCZOS_TAPS = 8


def latent_upscaler(channels: int = 4, width: int = 64, depth: int = 16, factor: float = 2.0):
    """The SD-Latent-Upscaler v2.1 layout (random weights; only its cost is measured here)."""
    from torch import nn

    layers: list[nn.Module] = [
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Upsample(scale_factor=factor, mode="nearest"),
        nn.ReLU(),
    ]
    for _ in range(depth):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    layers.append(nn.Conv2d(width, channels, 3, padding=1))
    return nn.Sequential(*layers)


def lanczos_flops(src_hw: tuple[int, int], dst_hw: tuple[int, int], channels: int = 3) -> int:
    """Multiply-adds (x2) of a separable 8-tap resize: rows first, then columns (CPU work, estimated)."""
    (sh, _), (dh, dw) = src_hw, dst_hw
    return 2 * LANCZOS_TAPS * channels * (sh * dw + dh * dw)


def _tracker():
    path = Path(__file__).resolve().with_name("fakecuda.py")
    spec = importlib.util.spec_from_file_location("fakecuda", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fakecuda"] = module
    spec.loader.exec_module(module)
    return module


def measure(tiny: bool) -> dict:
    """One fake-CUDA session: a 1-step run (stages), the input-size decode, and the latent upscaler."""
    import contextlib

    import numpy as np
    import torch
    from PIL import Image

    import supir_engine.pipeline  # noqa: F401  (real tables computed before the fake mode)
    from supir_engine.memory import MemoryConfig, apply_storage
    from supir_engine.models import SUPIR_V0, build_supir
    from supir_engine.pipeline import SUPIRPipeline
    from supir_engine.settings import UpscaleSettings
    from supir_engine.tiny import TINY_CONFIG

    size = 64 if tiny else 1024
    fv = _tracker()
    pieces: dict[str, dict[str, int]] = {}
    with fv.FakeCuda(total_memory=80 * GiB) as fc:
        open_phases: dict[str, contextlib.AbstractContextManager] = {}
        starts: dict[str, int] = {}

        def observe(event: str, stage: str) -> None:
            if event == "begin":
                starts[stage] = fc.current_bytes
                open_phases[stage] = fc.phase(stage)
                open_phases[stage].__enter__()
            elif event == "end":
                open_phases.pop(stage).__exit__(None, None, None)

        model = build_supir(TINY_CONFIG if tiny else SUPIR_V0, "meta")
        apply_storage(model, torch.float16, torch.bfloat16)
        memory = MemoryConfig(policy="stages", pin_memory=False, batch_cfg=True)
        pipe = SUPIRPipeline(model.eval(), "cuda", memory=memory, observer=observe)
        image = Image.fromarray(np.full((size, size, 3), 128, dtype=np.uint8))
        settings = UpscaleSettings(scale=2, min_size=0, steps=1, seed=1)
        result = pipe.upscale(image, settings)
        for name, st in fc.phases.items():
            pieces[name] = {
                "flops": st.flops,
                "peak_bytes": st.peak_bytes,
                "start_bytes": starts.get(name, 0),
            }

        with torch.inference_mode():
            vae = model.first_stage_model
            for module in (vae.decoder, vae.post_quant_conv):
                module.to("cuda")
            latent = torch.randn(1, 4, size // 8, size // 8, device="cuda", dtype=torch.bfloat16)
            pieces["decode_input"] = _piece(fc, lambda: vae.decode(latent, vae.config.scale_factor))
            for module in (vae.decoder, vae.post_quant_conv):
                module.to("cpu")
            upscaler = latent_upscaler().to("cuda", torch.float16)
            small = latent.to(torch.float16)
            pieces["latent_upscaler"] = _piece(fc, lambda: upscaler(small))
    return {"input_px": size, "output_px": result.output_size[0], "pieces": pieces}


def _piece(fc, run) -> dict[str, int]:
    start, flops = fc.current_bytes, fc.flops
    fc.reset_peak()
    out = run()
    del out
    return {"flops": fc.flops - flops, "peak_bytes": fc.peak_bytes, "start_bytes": start}


def figures(raw: dict) -> dict:
    """The comparison: a 20-step run, what each reading of the latent path removes and adds."""
    p = raw["pieces"]
    size, out = raw["input_px"], raw["output_px"]
    resize = lanczos_flops((size, size), (out, out))
    stage1 = sum(p[f"stage1.{k}"]["flops"] for k in ("denoise_encode", "decode", "encode"))
    run = stage1 + p["text"]["flops"] + STEPS * p["sampling"]["flops"] + p["decode"]["flops"]
    upscaler = p["latent_upscaler"]["flops"]
    decode_out = p["stage1.decode"]["flops"]  # the same decoder at the output size
    faithful_removed = p["decode_input"]["flops"] + resize
    faithful_added = upscaler + decode_out
    bound_removed = stage1 + p["decode_input"]["flops"] + resize
    return {
        "run_flops": run,
        "step_flops": p["sampling"]["flops"],
        "faithful": {
            "removed": faithful_removed,
            "added": faithful_added,
            "net_share": (faithful_removed - faithful_added) / run,
        },
        "upper_bound": {
            "removed": bound_removed,
            "added": upscaler,
            "net_share": (bound_removed - upscaler) / run,
        },
        "worth_building": (bound_removed - upscaler) / run >= THRESHOLD,
        "resize_flops": resize,
    }


def report(raw: dict) -> str:
    p, f = raw["pieces"], figures(raw)
    size, out = raw["input_px"], raw["output_px"]
    rows = [
        (f"decode of the {size} px latent", "decode_input"),
        (f"stage 1 denoise encoder at {out} px", "stage1.denoise_encode"),
        (f"stage 1 decoder at {out} px", "stage1.decode"),
        (f"stage 1 encoder at {out} px", "stage1.encode"),
        ("text encoders", "text"),
        (f"one sampler step at {out} px (CFG batched)", "sampling"),
        (f"final decode at {out} px", "decode"),
        (f"latent upscaler {size // 8} -> {out // 8} latent px", "latent_upscaler"),
    ]
    lines = [f"{'piece':<46} {'TFLOP':>9} {'peak GiB':>9} {'rise GiB':>8} {'% of run':>8}"]
    for label, key in rows:
        st = p[key]
        share = st["flops"] / f["run_flops"] * 100
        lines.append(
            f"{label:<46} {st['flops'] / 1e12:>9.3f} {st['peak_bytes'] / GiB:>9.2f} "
            f"{(st['peak_bytes'] - st['start_bytes']) / GiB:>8.2f} {share:>7.2f}%"
        )
    lines.append(f"{'Lanczos resize (CPU, estimated)':<46} {f['resize_flops'] / 1e12:>9.4f}")
    lines.append(f"{f'{STEPS}-step run in all':<46} {f['run_flops'] / 1e12:>9.2f}")
    for name, label in (("faithful", "faithful path"), ("upper_bound", "upper bound (stage 1 replaced)")):
        r = f[name]
        lines.append(
            f"{label}: removes {r['removed'] / 1e12:.3f} TFLOP, adds {r['added'] / 1e12:.3f} TFLOP: "
            f"net {r['net_share'] * 100:+.2f} % of the run"
        )
    verdict = "build it" if f["worth_building"] else "leave it out"
    lines.append(f"threshold {THRESHOLD * 100:.0f} % of the run's FLOPs: {verdict}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny architecture, 64 -> 128 px (seconds)")
    parser.add_argument("--json", action="store_true", help="print the measurements and figures as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        print("ROW " + json.dumps(measure(args.tiny)), flush=True)
        os._exit(0)  # long fake-tensor sessions have been seen to crash at interpreter teardown
    raw = run_worker(args.tiny)
    if args.json:
        print(json.dumps({**raw, "figures": figures(raw)}, indent=1))
    else:
        print(report(raw))


def run_worker(tiny: bool, retries: int = 2) -> dict:
    """The measurement in a process of its own (the fake-tensor machinery leaks between sessions)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker"] + (["--tiny"] if tiny else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    last = ""
    for _ in range(retries + 1):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        for line in proc.stdout.splitlines():
            if line.startswith("ROW "):
                return json.loads(line[4:])
        last = (proc.stderr or proc.stdout)[-3000:]
    raise SystemExit(f"the measurement failed:\n{last}")


if __name__ == "__main__":
    main()
