"""Run golden fixtures produced by the original SUPIR through our code.

    python -m supir_engine.verify DIR

DIR holds ``index.json``, the tiny model (+ its sidecar), optionally tiny text encoders, and one
``<case>.json`` + ``<case>.safetensors`` pair per case. Each case is dispatched on its sidecar's
``case`` kind, never on its name, so other fixture sets in the same format run unchanged.
Prints one line per case and exits with status 1 if any case fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file

from .golden import Check, Tolerance, compare

log = logging.getLogger(__name__)

SAMPLER_TOL = Tolerance(1e-3, 1e-4)
SINGLE_CALL_TOL = Tolerance(1e-4, 1e-5)
PIXEL_TOL = Tolerance(1.0, 0.0)  # uint8 resampling re-implemented without OpenCV: +-1 level


def tolerances_from_index(index: Mapping) -> tuple[Tolerance, Tolerance]:
    """(sampler, single-call) tolerances as stated in the index's precision note, else defaults."""
    text = str(index.get("precision", ""))

    def find(label: str, default: Tolerance) -> Tolerance:
        m = re.search(r"atol ([0-9.e-]+) \+ rtol ([0-9.e-]+) \(" + label, text)
        return Tolerance(float(m.group(1)), float(m.group(2))) if m else default

    return find("sampler", SAMPLER_TOL), find("single", SINGLE_CALL_TOL)


class FixtureModels:
    """The tiny networks of a fixture directory, built on first use."""

    def __init__(self, directory: Path, index: Mapping):
        self.directory = directory
        self.index = index

    def _json(self, name: str) -> dict:
        return json.loads((self.directory / name).read_text())

    @cached_property
    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in load_file(str(self.directory / self.index["model_file"])).items()}

    @cached_property
    def model_sidecar(self) -> dict:
        return self._json(self.index.get("model_sidecar", "tiny_model.json"))

    def _params(self, section: str) -> dict:
        return self.model_sidecar.get("config", {}).get("params", {}).get(section, {}).get("params", {})

    @cached_property
    def unet_and_control(self):
        from .models.config import infer_unet_config
        from .models.control import GLVControl
        from .models.unet import SUPIRUNet

        heads = self._params("network_config").get("num_head_channels", 64)
        cfg = infer_unet_config({k: v.shape for k, v in self.weights.items()}, num_head_channels=heads)
        with torch.device("meta"):
            unet, control = SUPIRUNet(cfg), GLVControl(cfg)
        _assign(unet, self.weights, "model.diffusion_model.")
        _assign(control, self.weights, "model.control_model.")
        return unet.eval(), control.eval()

    @cached_property
    def denoiser(self):
        from .sampling import Denoiser

        unet, control = self.unet_and_control
        return Denoiser(unet, control, torch.float32)

    @cached_property
    def first_stage(self):
        from .models.vae import FirstStage, infer_vae_config

        cfg = infer_vae_config({k: v.shape for k, v in self.weights.items()})
        scale = self._params("first_stage_config").get("scale_factor") or self.model_sidecar.get(
            "config", {}
        ).get("params", {}).get("scale_factor")
        if scale:
            cfg = type(cfg)(**{**cfg.__dict__, "scale_factor": float(scale)})
        with torch.device("meta"):
            first_stage = FirstStage(cfg)
        _assign(first_stage, self.weights, "first_stage_model.")
        return first_stage.eval()

    @cached_property
    def conditioner(self):
        from .models.text import text_conditioner_from_state_dict, text_heads_from_sidecar

        path = (
            self.directory / self.index.get("text_encoder_file", "tiny_text_encoders.safetensors").split()[0]
        )
        sidecar_path = path.with_suffix(".json")
        heads = (
            text_heads_from_sidecar(json.loads(sidecar_path.read_text()))
            if sidecar_path.exists()
            else (None, None)
        )
        weights = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        return text_conditioner_from_state_dict(weights, "conditioner.", *heads)


def _assign(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], prefix: str) -> None:
    expected = set(module.state_dict())
    state = {
        k[len(prefix) :]: v
        for k, v in weights.items()
        if k.startswith(prefix) and k[len(prefix) :] in expected
    }
    module.load_state_dict(state, strict=True, assign=True)


# ------------------------------------------------------------------------------------- runners

Pairs = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


def run_denoiser_case(models: FixtureModels, sidecar: Mapping, t: Mapping[str, torch.Tensor]) -> Pairs:
    from .sampling import Conditioning

    cond = Conditioning(t["crossattn"], t["vector"], t["control"])
    unet, control = models.unet_and_control
    sigmas = t["sigma"].double().tolist()
    out = models.denoiser(t["x"], sigmas, cond, float(sidecar.get("control_scale", 1.0)))
    pairs = {"out_denoised": (t["out_denoised"], out)}
    from .sampling import snap_sigma

    snapped = [snap_sigma(s) for s in sigmas]
    if "intermediate_sigma_quantized" in t:
        pairs["intermediate_sigma_quantized"] = (
            t["intermediate_sigma_quantized"],
            torch.tensor([q for q, _ in snapped], dtype=torch.float32),
        )
    if "intermediate_timestep_index" in t:
        pairs["intermediate_timestep_index"] = (
            t["intermediate_timestep_index"],
            torch.tensor([i for _, i in snapped]),
        )
    feature_names = sorted(k for k in t if k.startswith("intermediate_control_feature_"))
    if feature_names:
        c_in = torch.tensor([(q * q + 1) ** -0.5 for q, _ in snapped]).view(-1, 1, 1, 1)
        timesteps = torch.tensor([i for _, i in snapped])
        features = control(t["control"], timesteps, t["x"] * c_in, t["crossattn"], t["vector"])
        pairs.update({name: (t[name], f) for name, f in zip(feature_names, features)})
    return pairs


def run_vae(models: FixtureModels, sidecar: Mapping, t: Mapping[str, torch.Tensor]) -> Pairs:
    from .models.vae import run_vae_case

    return run_vae_case(models.first_stage, t, sidecar)


def run_sampler(models: FixtureModels, sidecar: Mapping, t: Mapping[str, torch.Tensor]) -> Pairs:
    from .replay.sampling import run_sampler_case

    return run_sampler_case(models.denoiser, sidecar, t)


def run_schedules(models: FixtureModels, sidecar: Mapping, t: Mapping[str, torch.Tensor]) -> Pairs:
    from .replay.sampling import run_schedule_case

    return run_schedule_case(sidecar, t)


def run_colorfix(models: FixtureModels, sidecar: Mapping, t: Mapping[str, torch.Tensor]) -> Pairs:
    from .colorfix import run_colorfix_case

    return run_colorfix_case(sidecar, t)


def run_upscale_image(models: FixtureModels, sidecar: Mapping, t: Mapping[str, torch.Tensor]) -> Pairs:
    from .preprocess import run_upscale_image_case

    return run_upscale_image_case(sidecar, t)


def run_text(models: FixtureModels, sidecar: Mapping, t: Mapping[str, torch.Tensor]) -> list[Check]:
    from .models.text import run_text_case

    _, single = tolerances_from_index(models.index)
    comparisons = run_text_case(models.conditioner, sidecar, t, single.atol, single.rtol)
    return [Check(c.name, c.passed, c.max_abs_err, float("nan"), "") for c in comparisons]


def run_batchify(models: FixtureModels, sidecar: Mapping, t: Mapping[str, torch.Tensor]) -> Pairs:
    from .replay.batchify import run_batchify_case

    return run_batchify_case(models.denoiser, models.first_stage, sidecar, t)


def run_tiled_vae(models: FixtureModels, sidecar: Mapping, t: Mapping[str, torch.Tensor]) -> list[Check]:
    from .tiled_vae import run_tiled_vae_case

    return run_tiled_vae_case(models.first_stage, sidecar, t)


@dataclass(frozen=True)
class CaseKind:
    runner: Callable
    tolerance: str  # "sampler", "single" or "pixel"


# Matched against the sidecar's "case" field (its letter prefix is ignored), most specific first.
CASE_KINDS: tuple[tuple[str, CaseKind], ...] = (
    ("tiled_vae", CaseKind(run_tiled_vae, "single")),
    ("denoiser", CaseKind(run_denoiser_case, "single")),
    ("dpmpp", CaseKind(run_sampler, "sampler")),
    ("sampler", CaseKind(run_sampler, "sampler")),
    ("batchify", CaseKind(run_batchify, "sampler")),
    ("vae", CaseKind(run_vae, "single")),
    ("colorfix", CaseKind(run_colorfix, "single")),
    ("schedule", CaseKind(run_schedules, "single")),
    ("upscale_image", CaseKind(run_upscale_image, "pixel")),
    ("text", CaseKind(run_text, "single")),
)


def kind_of(sidecar: Mapping) -> CaseKind | None:
    case = str(sidecar.get("case", "")).lower()
    return next((kind for key, kind in CASE_KINDS if key in case), None)


@dataclass(frozen=True)
class CaseResult:
    name: str
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def line(self) -> str:
        finite = [c for c in self.checks if c.note != "psnr"]
        max_abs = max((c.max_abs for c in finite), default=0.0)
        max_rel = max((c.max_rel for c in finite if not math.isnan(c.max_rel)), default=0.0)
        notes = "; ".join(f"{c.name}: {c.note}" for c in self.checks if c.note and c.note != "exact")
        verdict = "PASS" if self.passed else "FAIL"
        failed = [c.name for c in self.checks if not c.passed]
        extra = f"  failed: {', '.join(failed)}" if failed else ""
        return (
            f"{self.name:<36} max_abs={max_abs:.3e} max_rel={max_rel:.3e} {verdict} "
            f"({len(self.checks)} checks){extra}{'  ' + notes if notes else ''}"
        )


def run_directory(directory: Path) -> list[CaseResult]:
    index = json.loads((directory / "index.json").read_text())
    tolerances = dict(zip(("sampler", "single"), tolerances_from_index(index)), pixel=PIXEL_TOL)
    models = FixtureModels(directory, index)
    results = []
    for name, entry in index.get("fixtures", {}).items():
        results.append(_run_case(directory, name, entry, models, tolerances))
    return results


def _run_case(directory: Path, name: str, entry: Mapping, models: FixtureModels, tolerances) -> CaseResult:
    sidecar = json.loads((directory / entry.get("sidecar", f"{name}.json")).read_text())
    tensors = load_file(str(directory / entry.get("file", f"{name}.safetensors")))
    kind = kind_of(sidecar)
    if kind is None:
        return CaseResult(
            name, [Check("dispatch", False, 0.0, 0.0, f"unknown case kind {sidecar.get('case')!r}")]
        )
    try:
        with torch.inference_mode():
            outcome = kind.runner(models, sidecar, tensors)
    except Exception as exc:  # a broken case must not hide the others
        log.exception("case %s raised", name)
        return CaseResult(name, [Check("run", False, 0.0, 0.0, f"{type(exc).__name__}: {exc}")])
    if isinstance(outcome, list):
        return CaseResult(name, outcome)
    tol = tolerances[kind.tolerance]
    return CaseResult(name, [compare(k, expected, actual, tol) for k, (expected, actual) in outcome.items()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m supir_engine.verify", description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path, help="fixture directory (with index.json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every compared quantity")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(0)
    results = run_directory(args.directory)
    for result in results:
        print(result.line())
        if args.verbose:
            for c in result.checks:
                print(f"    {c.name:<40} max_abs={c.max_abs:.3e} {'ok' if c.passed else 'FAIL'} {c.note}")
    failed = [r.name for r in results if not r.passed]
    print(
        f"{len(results) - len(failed)}/{len(results)} cases passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
