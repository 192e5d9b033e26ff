"""SUPIR on the SDXL checkpoint a real webui has loaded: its tensors used in place, never copied or changed.

Opt-in, and heavy: besides ``SD_WEBUI_DIR`` (see test_real_webui.py) set ``SD_WEBUI_SDXL_CKPT`` to a
full-size SDXL checkpoint (random weights are fine). SUPIR's own part is ``SD_WEBUI_SUPIR`` or, if that is
not set, written once with random weights in the real layout (2.7 GB). On the CPU the webui holds SDXL in
float32 (about 14 GiB of RAM); SUPIR's part is stored in fp8 here, so the whole test needs about 17 GiB.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from .test_real_webui import ROOT, WEBUI, decode, start_webui, txt2img

SDXL = Path(os.environ["SD_WEBUI_SDXL_CKPT"]).expanduser() if os.environ.get("SD_WEBUI_SDXL_CKPT") else None

pytestmark = pytest.mark.skipif(
    WEBUI is None or SDXL is None,
    reason="SDXL integration test: set SD_WEBUI_DIR and SD_WEBUI_SDXL_CKPT (a full-size SDXL checkpoint)",
)


def supir_part(folder: Path) -> Path:
    if os.environ.get("SD_WEBUI_SUPIR"):
        return Path(os.environ["SD_WEBUI_SUPIR"]).expanduser()
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from supir_engine.models.supir import build_supir
    from supir_engine.tiny import SUPIR_PREFIXES

    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, meta in build_supir(None, "meta").state_dict().items():
        if key.startswith(SUPIR_PREFIXES) and not key.endswith("position_ids"):
            state[key] = (torch.randn(meta.shape, generator=generator) * 0.02).to(torch.float16)
    path = folder / "SUPIR-v0Q.safetensors"
    save_file(state, str(path))
    return path


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def webui_xl(tmp_path_factory):
    models = tmp_path_factory.mktemp("supir_models")
    supir = supir_part(models)
    config = {"supir_min_size": 64, "supir_storage_dtype": "fp8", "show_progress_type": "Approx cheap"}
    yield from start_webui(tmp_path_factory, SDXL, {"SUPIR-v0Q.safetensors": supir}, config)


def test_supir_uses_the_loaded_sdxl_in_place(webui_xl):
    plain = {"seed": 21, "steps": 1}
    reference = decode(txt2img(webui_xl, None, **plain)["images"][0])  # the webui alone, before SUPIR
    resident_before = rss_bytes(webui_xl.process.pid)

    result = txt2img(webui_xl, [True, "SUPIR-v0Q", 2, False, "None"] + [""] * 3 + [1], **plain)
    image = decode(result["images"][0])
    infotext = json.loads(result["info"])["infotexts"][0]
    assert image.size == (128, 128) and "SUPIR model: SUPIR-v0Q" in infotext, infotext
    cache = webui_xl.call("/supir/v1/status")["cache"]
    assert cache["base"]["shared_with_host"] is True and cache["base"]["bytes_owned"] == 0
    grown = rss_bytes(webui_xl.process.pid) - resident_before
    supir_fp8 = 1.4e9  # SUPIR's own 1.33 B parameters in one byte each (vectors in two)
    # A copy of the webui's SDXL (float32 on the CPU) would add about 10 GiB; sharing adds SUPIR's part.
    assert grown < supir_fp8 + 1.5 * 2**30, f"RSS grew by {grown / 2**30:.2f} GiB"

    after = decode(txt2img(webui_xl, None, **plain)["images"][0])
    assert after.tobytes() == reference.tobytes()  # the webui's weights are exactly as they were
    print(f"SDXL shared: RSS +{grown / 2**30:.2f} GiB for SUPIR's part (fp8)")
