"""Find, validate and load SDXL base + SUPIR checkpoints into the model, with little RAM.

The model is built on the ``meta`` device and every tensor is read from its (memory-mapped)
file, cast straight to its final dtype and assigned; the file pages are released right after.
Peak RAM is therefore the loaded model plus one tensor, never a float32 copy of everything.
"""

from __future__ import annotations

import logging
import pickle
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import (
    CheckpointError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    MissingWeightsError,
    ShapeMismatchError,
    UnsafeCheckpointError,
    WrongModelError,
)
from .filemap import file_mappings, release_pages
from .memory.storage import FP8_SCALE_SUFFIX, is_storage_only, quantise_fp8, set_scale, tensor_storage_dtype
from .models import SUPIRConfig, SUPIRModel, build_supir, infer_config

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = {".safetensors", ".sft"}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}

WHERE_TO_GET = (
    "SUPIR-v0Q / SUPIR-v0F come from the official SUPIR repository (github.com/Fanghua-Yu/SUPIR, "
    "non-commercial licence); an SDXL base is e.g. sd_xl_base_1.0.safetensors from stabilityai "
    "or a Juggernaut-XL checkpoint."
)


@dataclass(frozen=True)
class Component:
    name: str
    description: str
    prefix: str
    source: str  # "sdxl" or "supir": which file is expected to provide it
    exclude: str | None = None

    def owns(self, key: str) -> bool:
        return key.startswith(self.prefix) and not (self.exclude and key.startswith(self.exclude))


COMPONENTS = (
    Component(
        "unet", "SDXL UNet", "model.diffusion_model.", "sdxl", "model.diffusion_model.project_modules."
    ),
    Component("projections", "SUPIR projection modules", "model.diffusion_model.project_modules.", "supir"),
    Component("control", "SUPIR control model (GLVControl)", "model.control_model.", "supir"),
    Component("vae", "SDXL VAE", "first_stage_model.", "sdxl", "first_stage_model.denoise_encoder."),
    Component("denoise_encoder", "SUPIR denoise encoder", "first_stage_model.denoise_encoder.", "supir"),
    Component("clip_l", "CLIP ViT-L/14 text encoder", "conditioner.embedders.0.", "sdxl"),
    Component("clip_bigg", "OpenCLIP ViT-bigG/14 text encoder", "conditioner.embedders.1.", "sdxl"),
)
SUPIR_COMPONENTS = tuple(c for c in COMPONENTS if c.source == "supir")
VAE_COMPONENTS = {"vae", "denoise_encoder"}

# Keys that real files carry but that are not weights of the model, or that we recompute.
_IGNORED_SUFFIXES = ("position_ids", "attn_mask", "mask_LQ")
_IGNORED_PREFIXES = ("model_ema.", "denoiser.")


def component_of(key: str) -> Component | None:
    return next((c for c in COMPONENTS if c.owns(key)), None)


# --------------------------------------------------------------------------------------------
# Reading files


class TensorFile:
    """Read-only, lazy view of one checkpoint file: names, shapes, dtypes, one tensor at a time."""

    def __init__(self, path: Path):
        self.path = path
        self._mappings: list[tuple[int, int]] | None = None
        self.keys: dict[str, str] = {}  # normalised key -> key in the file

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, key: str) -> str:
        raise NotImplementedError

    def _raw(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def read(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        """The tensor in ``dtype``, in memory of its own; the file's pages are released."""
        raw = self._raw(self.keys[key])
        owned = raw.to(dtype=dtype, copy=True).contiguous()
        if self._mappings is None:
            self._mappings = file_mappings(self.path)
        release_pages(raw, self._mappings)
        return owned

    def scale(self, key: str) -> torch.Tensor | None:
        """The fp8 scale the source stores for ``key`` (``None``: values are as stored)."""
        return None

    def read_stored(self, key: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tensor, fp8 scale or None) for storage ``dtype``: fp8 is quantised with a scale of its own."""
        scale = self.scale(key)
        if not is_storage_only(dtype) and scale is None:
            return self.read(key, dtype), None
        values = self.read(key, torch.float32)
        if scale is not None:
            values.mul_(scale)
        return quantise_fp8(values, dtype) if is_storage_only(dtype) else (values.to(dtype), None)

    def close(self) -> None:
        pass


class SafetensorsFile(TensorFile):
    def __init__(self, path: Path):
        super().__init__(path)
        try:
            self._handle = safe_open(str(path), framework="pt", device="cpu")
            names = list(self._handle.keys())
            self._slices = {k: self._handle.get_slice(k) for k in names}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointFormatError(
                f"cannot be read as safetensors ({exc}); the file is truncated or corrupt: download it again",
                path,
            ) from exc
        self.keys = normalise_keys(names)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._slices[self.keys[key]].get_shape())

    def dtype(self, key: str) -> str:
        return str(self._slices[self.keys[key]].get_dtype())

    def _raw(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key)

    def close(self) -> None:
        self._handle = None
        self._slices = {}


class PickleFile(TensorFile):
    """A torch .ckpt/.pt file, read with ``weights_only=True`` and memory-mapped when possible."""

    def __init__(self, path: Path):
        super().__init__(path)
        state = _torch_load_safely(path)
        if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise CheckpointFormatError("holds no state dict of named tensors", path)
        self._tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        self.keys = normalise_keys(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[self.keys[key]].shape)

    def dtype(self, key: str) -> str:
        return str(self._tensors[self.keys[key]].dtype).removeprefix("torch.")

    def _raw(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def close(self) -> None:
        self._tensors = {}


class StateDictSource(TensorFile):
    """Tensors already in memory, e.g. the SDXL model a host application has loaded.

    With ``share=True`` the tensors are used as they are (same storage, whatever their dtype,
    float8 included): no RAM is added and nothing is ever written to them. Otherwise each is
    copied into the requested dtype like a file tensor.
    """

    def __init__(
        self, tensors: Mapping[str, torch.Tensor], name: str = "<in-memory model>", share: bool = True
    ):
        super().__init__(Path(name))
        self._tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
        # fp8 scales travel beside their tensors (e.g. from the model cache) under their buffer's name.
        self._scales = {
            k: self._tensors.pop(k)
            for k in list(self._tensors)
            if k.endswith(FP8_SCALE_SUFFIX) and k.removesuffix(FP8_SCALE_SUFFIX) in self._tensors
        }
        self.keys = normalise_keys(self._tensors)
        self.share = share

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[self.keys[key]].shape)

    def dtype(self, key: str) -> str:
        return str(self._tensors[self.keys[key]].dtype).removeprefix("torch.")

    def read(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        tensor = self._tensors[self.keys[key]].detach()
        return tensor if self.share else tensor.to(dtype=dtype, copy=True)

    def scale(self, key: str) -> torch.Tensor | None:
        return self._scales.get(self.keys[key] + FP8_SCALE_SUFFIX)

    def read_stored(self, key: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.share:  # as they are; a float8 tensor without a scale has the implicit scale 1
            return self.read(key, dtype), self.scale(key)
        return super().read_stored(key, dtype)

    def close(self) -> None:
        self._tensors = {}


def _torch_load_safely(path: Path) -> object:
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            raise UnsafeCheckpointError(
                "this pickle needs code execution to load and was refused. Use a .safetensors "
                "version of this model (fp16 conversions of SUPIR are published) or convert it "
                "in an environment you trust.",
                path,
            ) from exc
        raise CheckpointFormatError(f"is not a valid checkpoint ({exc}): download it again", path) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointFormatError(
            f"cannot be read ({_first_line(exc)}); the file is truncated or corrupt: download it again", path
        ) from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def normalise_keys(names: Iterable[str]) -> dict[str, str]:
    """Map the model's key names to the file's, tolerating known layout variants."""
    mapping = {}
    for name in names:
        key = name
        if key.startswith(_IGNORED_PREFIXES) or key.endswith(_IGNORED_SUFFIXES):
            continue
        clip_prefix = "conditioner.embedders.0.transformer."
        if key.startswith(clip_prefix) and not key.startswith(clip_prefix + "text_model."):
            key = clip_prefix + "text_model." + key[len(clip_prefix) :]  # transformers 5 layout
        mapping[key] = name
    return mapping


def open_checkpoint(path: str | Path) -> TensorFile:
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointNotFoundError(f"file not found at {path}. {WHERE_TO_GET}", path)
    if path.is_dir():
        raise CheckpointFormatError("is a folder; give the path of a single checkpoint file", path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return SafetensorsFile(path)
    if suffix in PICKLE_SUFFIXES:
        return PickleFile(path)
    raise CheckpointFormatError(f"unknown file type {suffix!r}: expected .safetensors or .ckpt", path)


# --------------------------------------------------------------------------------------------
# Recognising what a file holds


def identify(file: TensorFile) -> set[str]:
    """Names of the components present in a file; raises WrongModelError for non-SDXL models."""
    raw = set(file.keys.values())
    if any(k.startswith("cond_stage_model.transformer.") for k in raw):
        raise WrongModelError("this is an SD 1.x checkpoint; SUPIR needs an SDXL base model", file.path)
    if any(k.startswith("cond_stage_model.model.") for k in raw):
        raise WrongModelError("this is an SD 2.x checkpoint; SUPIR needs an SDXL base model", file.path)
    keys = file.keys
    has_clip_l = any(k.startswith("conditioner.embedders.0.transformer.") for k in keys)
    if not has_clip_l and any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise WrongModelError(
            "this is the SDXL refiner; SUPIR needs an SDXL base model (sd_xl_base_1.0 or a fine-tune)",
            file.path,
        )
    found = {c.name for c in COMPONENTS if any(c.owns(k) for k in keys)}
    if not found:
        raise WrongModelError(
            "holds none of the weights SUPIR uses (no SDXL UNet, VAE, text encoders or SUPIR control "
            "weights): is it a LoRA, an embedding or an upscaler model?",
            file.path,
        )
    return found


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class ComponentReport:
    name: str
    description: str
    file: str
    stored_dtype: str
    dtype: str
    tensors: int = 0
    parameters: int = 0
    bytes: int = 0


@dataclass
class LoadReport:
    files: dict[str, list[str]] = field(default_factory=dict)  # file -> components it provided
    components: list[ComponentReport] = field(default_factory=list)
    ignored_keys: int = 0
    seconds: float = 0.0

    @property
    def resident_bytes(self) -> int:
        return sum(c.bytes for c in self.components)

    @property
    def parameters(self) -> int:
        return sum(c.parameters for c in self.components)


@dataclass(frozen=True)
class LoadOptions:
    dtype: torch.dtype = torch.float16
    vae_dtype: torch.dtype | None = None  # default: bfloat16, or float32 when dtype is float32
    num_head_channels: int = 64
    clip_l_heads: int | None = None
    bigg_heads: int | None = None

    def dtype_for(self, component: str) -> torch.dtype:
        if component not in VAE_COMPONENTS:
            return self.dtype
        if self.vae_dtype is not None:
            return self.vae_dtype
        return torch.float32 if self.dtype == torch.float32 else torch.bfloat16


Source = str | Path | Mapping[str, torch.Tensor] | TensorFile


def _open(source: Source) -> TensorFile:
    if isinstance(source, TensorFile):
        return source
    if isinstance(source, Mapping):
        return StateDictSource(source)
    return open_checkpoint(source)


def load_supir(
    sdxl: Source | None,
    supir: Source | None,
    options: LoadOptions | None = None,
) -> tuple[SUPIRModel, LoadReport]:
    """Load the whole model from an SDXL base and a SUPIR file (or one merged file).

    Each source is a file path, or tensors already in memory (``StateDictSource``, shared
    without a copy by default). Later sources win for keys present in both, as in the original
    (SDXL first, then SUPIR).
    """
    options = options or LoadOptions()
    if options.dtype_for("vae") == torch.float16:
        raise CheckpointError("the SDXL VAE produces NaNs in float16: use bfloat16 or float32 for it")
    sources = [(role, src) for role, src in (("sdxl", sdxl), ("supir", supir)) if src is not None]
    if not sources:
        raise CheckpointError(f"no model files given. {WHERE_TO_GET}")
    start = time.perf_counter()
    files = []
    try:
        for _, src in sources:
            files.append(_open(src))
        return _load(files, [role for role, _ in sources], options, start)
    finally:
        for f in files:
            f.close()


def _load(
    files: list[TensorFile], roles: list[str], options: LoadOptions, start: float
) -> tuple[SUPIRModel, LoadReport]:
    for file, role in zip(files, roles):
        found = identify(file)
        if role == "supir" and "control" not in found:
            raise MissingWeightsError(
                "this file has no SUPIR control weights (model.control_model.*). It looks like an "
                "SDXL checkpoint: pass it as the SDXL base, and the SUPIR-v0Q/v0F file as the SUPIR model.",
                file.path,
            )
    view = {key: file for file in files for key in file.keys}  # later files win
    shapes = {key: file.shape(key) for key, file in view.items()}
    _require_components(view, files)
    config = _infer(shapes, options)
    model = build_supir(config, "meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    _check_shapes(expected, shapes, view)
    report = LoadReport(ignored_keys=sum(1 for k in view if k not in expected))
    for component in COMPONENTS:
        report.components.append(_load_component(model, component, expected, view, options))
    for file in files:
        provided = [c.name for c in report.components if c.file == str(file.path)]
        report.files[str(file.path)] = provided
    model.denoiser.reset()
    _materialise_computed_buffers(model)
    model.eval().requires_grad_(False)
    report.seconds = time.perf_counter() - start
    return model, report


def _infer(shapes: Mapping[str, tuple[int, ...]], options: LoadOptions) -> SUPIRConfig:
    try:
        return infer_config(shapes, options.num_head_channels, options.clip_l_heads, options.bigg_heads)
    except (KeyError, StopIteration, IndexError, ValueError) as exc:
        raise ShapeMismatchError(
            f"the weights do not have the SDXL/SUPIR structure (could not read {exc}); "
            "check that these are an SDXL base model and a SUPIR-v0 model"
        ) from exc


def _require_components(view: Mapping[str, TensorFile], files: list[TensorFile]) -> None:
    names = ", ".join(f.path.name for f in files)
    for component in COMPONENTS:
        if not any(component.owns(k) for k in view):
            hint = (
                "give the SUPIR-v0Q or SUPIR-v0F file as the SUPIR model"
                if component.source == "supir"
                else "give an SDXL base checkpoint (sd_xl_base_1.0 or a fine-tune such as Juggernaut-XL)"
            )
            raise MissingWeightsError(f"no {component.description} weights found in {names}: {hint}")


def _check_shapes(
    expected: Mapping[str, tuple[int, ...]],
    shapes: Mapping[str, tuple[int, ...]],
    view: Mapping[str, TensorFile],
) -> None:
    missing = [
        k
        for k in expected
        if k not in shapes and not k.startswith("denoiser.") and not k.endswith(_IGNORED_SUFFIXES)
    ]
    wrong = [k for k in expected if k in shapes and _fits(shapes[k], expected[k]) is None]
    if wrong:
        k = wrong[0]
        raise ShapeMismatchError(
            f"{len(wrong)} tensors have unexpected shapes, e.g. {k} is {list(shapes[k])}, expected "
            f"{list(expected[k])}; the file is not a SUPIR-v0 / SDXL base model",
            view[k].path,
        )
    if missing:
        by_component: dict[str, int] = {}
        for k in missing:
            c = component_of(k)
            by_component[c.description if c else k] = by_component.get(c.description if c else k, 0) + 1
        summary = ", ".join(f"{n} {name}" for name, n in by_component.items())
        raise MissingWeightsError(
            f"{len(missing)} weights are missing ({summary}), e.g. {missing[0]}; the file is incomplete "
            "or from another architecture"
        )


def _fits(stored: tuple[int, ...], wanted: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape to reshape a stored tensor to, or None if it cannot be this parameter.

    Tolerates VAE attention projections saved as Linear [C, C] instead of 1x1 conv [C, C, 1, 1].
    """
    if stored == wanted:
        return wanted
    if len(wanted) == 4 and wanted[2:] == (1, 1) and stored == wanted[:2]:
        return wanted
    return None


def _load_component(
    model: SUPIRModel,
    component: Component,
    expected: Mapping[str, tuple[int, ...]],
    view: Mapping[str, TensorFile],
    options: LoadOptions,
) -> ComponentReport:
    dtype = options.dtype_for(component.name)
    keys = [k for k in expected if component.owns(k) and k in view]
    first = view[keys[0]]
    report = ComponentReport(
        component.name, component.description, str(first.path), first.dtype(keys[0]), _dtype_name(dtype)
    )
    for key in keys:
        stored = tensor_storage_dtype(expected[key], dtype, key)
        tensor, scale = view[key].read_stored(key, stored)
        tensor = tensor.reshape(expected[key])
        _assign(model, key, tensor, scale)
        report.tensors += 1
        report.parameters += tensor.numel()
        report.bytes += tensor.nbytes
    return report


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _assign(
    model: torch.nn.Module, key: str, tensor: torch.Tensor, scale: torch.Tensor | None = None
) -> None:
    module_path, _, name = key.rpartition(".")
    module = model.get_submodule(module_path)
    set_scale(module, name, scale)
    if name in module._parameters:
        module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)
    elif name in module._buffers:
        module._buffers[name] = tensor
    else:  # pragma: no cover - keys come from the model's own state dict
        raise KeyError(key)


def _materialise_computed_buffers(model: torch.nn.Module) -> None:
    """Buffers no file provides (token positions) are filled from their definition."""
    for module in model.modules():
        reset = getattr(module, "reset_computed_buffers", None)
        if callable(reset):
            reset()
    leftovers = [n for n, t in _named_tensors(model) if t.is_meta]
    if leftovers:
        raise MissingWeightsError(f"no weights were loaded for {leftovers[0]} ({len(leftovers)} tensors)")


def _named_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()
