"""The progressive option in the webui: its argument (last), settings, infotext, paste and progress text."""

from __future__ import annotations

from modules import shared

from sd_webui_supir.args import (
    ALL_INFOTEXT_KEYS,
    ARG_NAMES,
    DERIVED_FIELDS,
    SupirArgs,
    from_values,
    infotext_params,
    to_settings,
)
from sd_webui_supir.host import WebuiHost
from sd_webui_supir.total_progress import ImageShare
from supir_engine.settings import UpscaleSettings


def test_argument_is_appended_after_the_original_ones():
    index = ARG_NAMES.index("progressive")
    assert index == 23 and SupirArgs().progressive is False
    values = [None] * (index + 1)
    values[index] = True
    assert from_values(values).progressive is True
    assert from_values([None] * index).progressive is False  # older callers


def test_settings_infotext_and_paste_round_trip():
    args = SupirArgs(enabled=True, scale=3, progressive=True)
    settings = to_settings(args, UpscaleSettings(), "", 5)
    assert settings.progressive is True
    params = infotext_params(args, settings)
    assert params["SUPIR progressive"] == "2x, 1.5x"  # raw: the webui quotes values itself
    assert "SUPIR progressive" in ALL_INFOTEXT_KEYS
    pasted = {k: str(v) for k, v in params.items()}
    assert DERIVED_FIELDS["progressive"](pasted) is True
    plain = infotext_params(args.replace(progressive=False), settings.replace(progressive=False))
    assert "SUPIR progressive" not in plain
    assert DERIVED_FIELDS["progressive"]({k: str(v) for k, v in plain.items()}) is False


def test_progress_text_names_the_pass(webui):
    host = WebuiHost("SUPIR 1/1")
    host.begin_pass(2, 3)
    host.progress("sampling", 3, 10)
    assert shared.state.textinfo == "SUPIR 1/1 pass 2/3: sampling step 3/10"
    host.progress("decode", 0, 1)
    assert shared.state.textinfo.startswith("SUPIR 1/1 pass 2/3: ")


def test_total_bar_counts_every_pass():
    share = ImageShare(held=20)
    share._resized = True
    share.next_pass()
    assert share.held == 0 and share._resized is False
