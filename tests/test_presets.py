"""Parameter presets: the SUPIR authors' current recommendations by default, the first demo's as classic,
and the Lightning YAML's for Lightning bases. Expected values are the ones the sources publish (cited in
supir_engine/settings.py), not outputs of this code."""

from __future__ import annotations

import pytest

from supir_engine.cli import build_parser
from supir_engine.settings import PRESET_LABELS, PRESETS, UpscaleSettings, preset, preset_controls, preset_key


def test_defaults_are_the_authors_quality_oriented_settings_of_2025():
    d = UpscaleSettings()
    assert (d.cfg_scale, d.cfg_scale_start, d.s_noise, d.control_scale) == (6.0, 3.0, 1.02, 1.0)
    assert d == preset("quality")


@pytest.mark.parametrize(
    ("name", "cfg", "start", "s_noise"),
    [
        ("quality", 6.0, 3.0, 1.02),
        ("fidelity", 4.0, 1.0, 1.01),
        ("quality_classic", 7.5, 4.0, 1.003),
        ("fidelity_classic", 4.0, 1.0, 1.003),
    ],
)
def test_edm_presets(name, cfg, start, s_noise):
    s = preset(name)
    assert (s.cfg_scale, s.cfg_scale_start, s.s_noise) == (cfg, start, s_noise)
    assert (s.sampler, s.steps, s.s_churn, s.restoration_scale) == ("restore_edm", 50, 5.0, -1.0)


@pytest.mark.parametrize(("name", "cfg"), [("lightning_quality", 2.0), ("lightning_fidelity", 1.5)])
def test_lightning_presets_follow_the_lightning_yaml(name, cfg):
    s = preset(name)
    assert (s.sampler, s.steps, s.cfg_scale, s.cfg_scale_start) == ("restore_dpmpp_2m", 8, cfg, cfg)
    assert (s.s_churn, s.restoration_scale) == (0.0, 4.0)


def test_labels_and_keys_name_the_same_presets():
    assert list(PRESET_LABELS) == list(PRESETS)
    for key, label in PRESET_LABELS.items():
        assert preset_key(label) == key == preset_key(key) == preset_key(key.replace("_", "-").upper())
    with pytest.raises(ValueError, match="Lightning Fidelity"):
        preset_key("turbo")


def test_preset_controls_carry_the_sampler():
    controls = preset_controls("Lightning Fidelity", cfg_start_off=1.0, control_start_off=0.0)
    assert controls["sampler"] == "restore_dpmpp_2m" and controls["linear_cfg"] is True


def test_cli_offers_every_preset():
    parser = build_parser()
    for key in PRESETS:
        args = parser.parse_args(["upscale", "x.png", "--preset", key])
        assert args.preset == key
