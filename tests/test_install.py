"""install.py: what the extension asks pip for inside a webui's environment."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_install():
    spec = importlib.util.spec_from_file_location("supir_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_packages_are_asked_for_with_their_lower_bounds():
    install = load_install()
    assert install.needed(lambda name: name != "open_clip_torch") == ["open_clip_torch>=2.20.0"]
    assert install.needed(lambda name: True) == []


def test_open_clip_is_not_installed_where_the_host_ships_the_clip_merges(tmp_path):
    install = load_install()
    missing = lambda name: name in ("transformers",)  # noqa: E731 - only transformers installed
    assert "open_clip_torch>=2.20.0" in install.needed(missing, tmp_path)  # A1111: no bundled tokenizers
    merges = tmp_path / install.HOST_CLIP_MERGES
    merges.parent.mkdir(parents=True)
    merges.write_text("#version: 0.2\n", encoding="utf-8")
    asked = install.needed(missing, tmp_path)  # a Forge-family webui folder
    assert "open_clip_torch>=2.20.0" not in asked and "safetensors>=0.4.2" in asked
