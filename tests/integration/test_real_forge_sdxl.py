"""SUPIR on the SDXL that Forge has loaded (UNet stored in fp8): no second copy, Forge unchanged after.

Opt-in, and heavy: besides ``FORGE_DIR`` and ``FORGE_PYTHON`` (see test_real_forge.py) set
``FORGE_SDXL_CKPT`` to a full-size SDXL checkpoint (random weights are fine). Forge starts with
``--unet-in-fp8-e4m3fn`` (a recent Neo: its ``float8-e4m3fn`` storage setting) so its UNet takes about
2.6 GB; SUPIR's own part is ``FORGE_SUPIR`` or, if that is not set, written once with random weights in
the real layout (2.7 GB, stored in fp8 in RAM here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .test_real_forge import FORGE, host_takes, rss_bytes, start_forge
from .test_real_webui import decode, supir_args, txt2img
from .test_real_webui_sdxl import supir_part

SDXL = Path(os.environ["FORGE_SDXL_CKPT"]).expanduser() if os.environ.get("FORGE_SDXL_CKPT") else None

pytestmark = pytest.mark.skipif(
    FORGE is None or not os.environ.get("FORGE_PYTHON") or SDXL is None,
    reason="Forge SDXL integration test: set FORGE_DIR, FORGE_PYTHON and FORGE_SDXL_CKPT "
    "(a full-size SDXL checkpoint)",
)

GIB = 2**30


@pytest.fixture(scope="module")
def forge_xl(tmp_path_factory):
    folder = tmp_path_factory.mktemp("supir_models")
    given = os.environ.get("FORGE_SUPIR")
    supir = Path(given).expanduser() if given else supir_part(folder)
    config = {"supir_min_size": 64, "supir_storage_dtype": "fp8", "show_progress_type": "Approx cheap"}
    flags = ["--unet-in-fp8-e4m3fn"] if host_takes("--unet-in-fp8-e4m3fn") else []
    if not flags:  # a recent Neo has no such flag: its "Diffusion in Low Bits" setting, as the UI sets it
        config["forge_unet_storage_dtype"] = "float8-e4m3fn"
    supir_files = {"SUPIR-v0Q.safetensors": supir}
    yield from start_forge(tmp_path_factory, SDXL, supir_files, config, extra_flags=flags)


def test_supir_runs_on_forges_loaded_sdxl_without_a_copy(forge_xl):
    idle = rss_bytes(forge_xl.process.pid)
    plain = {"seed": 21, "steps": 1}
    reference = decode(txt2img(forge_xl, None, **plain)["images"][0])  # loads Forge's SDXL
    loaded = rss_bytes(forge_xl.process.pid)
    print(f"Forge RSS: idle {idle / GIB:.2f} GiB, SDXL loaded (fp8 UNet) {loaded / GIB:.2f} GiB")
    models = forge_xl.call("/supir/v1/models")
    assert models["sdxl_problem"] in (None, ""), models  # "Loaded checkpoint" (the default) is usable

    result = txt2img(forge_xl, supir_args(forge_xl, steps=1, prompt_source="None"), **plain)
    infotext = json.loads(result["info"])["infotexts"][0]
    after = rss_bytes(forge_xl.process.pid)
    print(f"Forge RSS after SUPIR: {after / GIB:.2f} GiB (+{(after - loaded) / GIB:.2f} GiB)")
    assert decode(result["images"][0]).size == (128, 128) and "SUPIR model: SUPIR-v0Q" in infotext, infotext
    cache = forge_xl.call("/supir/v1/status")["cache"]
    assert cache["base"]["shared_with_host"] is True and cache["base"]["bytes_owned"] == 0, cache
    supir_fp8 = 1.4e9  # SUPIR's own 1.33 B parameters in one byte each (vectors in two)
    # a second SDXL (UNet fp8 2.6 GB + text encoders and VAE) would add at least 4 GiB
    assert after - loaded < supir_fp8 + 1.5 * GIB, f"RSS grew by {(after - loaded) / GIB:.2f} GiB"

    again = decode(txt2img(forge_xl, None, **plain)["images"][0])
    assert again.tobytes() == reference.tobytes()  # Forge's weights are as they were and it still generates
