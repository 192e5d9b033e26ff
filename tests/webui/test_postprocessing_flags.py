"""Flags a webui reads from Extras scripts to decide where else to offer them."""

from __future__ import annotations

from modules import scripts


def offered_in_main_ui(script) -> bool:
    """A1111 dev's rule for the "Enable postprocessing operations in txt2img and img2img tabs" choices
    (``shared_items.postprocessing_scripts(filter_out_extra_only=True)``); older webuis offer every script."""
    return not getattr(script, "extra_only", None)


def test_supir_extras_script_is_not_offered_as_a_main_ui_postprocessing_operation(webui):
    script = next(s for s in scripts.scripts_postproc.scripts if s.name == "SUPIR")
    assert not offered_in_main_ui(script)  # txt2img/img2img have SUPIR's own accordion
    assert not getattr(script, "main_ui_only", None)  # but the Extras tab keeps it
