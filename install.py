"""Install the Python packages this extension needs into stable-diffusion-webui's environment.

The webui runs this file (as a script) when it starts or installs the extension. Only packages that are
missing, or older than the lower bounds below, are installed, and always with those bounds, which are the
webui 1.10 pins: the webui's own versions are kept. torch is the webui's business and is never touched: the
installed torch and torchvision are passed to pip as exact pins alongside whatever is installed.
Importing this module has no side effects.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

# (distribution name, minimum version or None). Same bounds as `dependencies` in pyproject.toml, minus torch.
REQUIREMENTS: tuple[tuple[str, str | None], ...] = (
    ("transformers", "4.30.2"),
    ("open_clip_torch", "2.20.0"),
    ("safetensors", "0.4.2"),
    ("accelerate", "0.21.0"),
    ("Pillow", "9.5.0"),
    ("numpy", "1.26"),
    ("tqdm", None),
    ("ftfy", None),
    ("regex", None),
)


def release(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: '4.30.2' -> (4, 30, 2), '2.1.0+cu121' -> (2, 1, 0)."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def requirement(name: str, minimum: str | None) -> str:
    return f"{name}>={minimum}" if minimum else name


# The Forge family ships the SDXL tokenizers; their merges are the only thing SUPIR takes from open_clip,
# so it is not installed there (Forge Neo's environment has none, and needs none).
HOST_CLIP_MERGES = "backend/huggingface/stabilityai/stable-diffusion-xl-base-1.0/tokenizer/merges.txt"


def needed(is_installed=None, webui_root: Path | None = None) -> list[str]:
    """Requirement strings for the packages that are missing or older than their minimum."""
    result = []
    host_has_merges = webui_root is not None and (webui_root / HOST_CLIP_MERGES).is_file()
    for name, minimum in REQUIREMENTS:
        if name == "open_clip_torch" and host_has_merges:
            continue
        present = is_installed(name) if is_installed else installed_version(name) is not None
        version = installed_version(name) if present else None
        if not present or (minimum and version and release(version) < release(minimum)):
            result.append(requirement(name, minimum))
    return result


def held(names: tuple[str, ...] = ("torch", "torchvision")) -> list[str]:
    """Exact pins for the installed torch and torchvision, so that pip keeps the webui's builds."""
    return [f"{name}=={version}" for name in names if (version := installed_version(name))]


def install() -> None:
    try:
        import launch  # the webui's launcher module: only importable when the webui runs this file
    except ImportError:
        print("install.py is run by stable-diffusion-webui; elsewhere use: pip install -e .")
        return
    missing = needed(launch.is_installed, Path(launch.__file__).resolve().parent)
    if missing:
        args = " ".join(f'"{req}"' for req in missing + held())
        launch.run_pip(f"install {args}", f"sd-webui-supir requirements: {', '.join(missing)}")


if __name__ == "__main__":
    install()
