"""An interrupted SUPIR job resumes when the same image is upscaled again with the same settings."""

from __future__ import annotations

import numpy as np
from modules import shared

from sd_webui_supir import resume
from supir_engine.resume import state_files

from .test_generation import params_of, txt2img


def _interrupt_at(k: int) -> None:
    def on_change(state, name, value):
        if name == "sampling_step" and value == k and state.job.startswith("SUPIR"):
            state.interrupt()

    shared.state.on_change = on_change


def _fresh_state() -> None:
    shared.state.on_change = None
    shared.state.interrupted = False
    shared.state.begin(job="again")


def test_interrupted_job_resumes_to_the_uninterrupted_image(webui):
    shared.opts.supir_resume = False
    try:
        _, whole = txt2img(webui, batch_size=1, steps=6)
    finally:
        shared.opts.supir_resume = True
    assert state_files(resume.resume_folder()) == []

    _fresh_state()
    _interrupt_at(2)
    _, stopped = txt2img(webui, batch_size=1, steps=6)
    assert "SUPIR was interrupted" in stopped.comments
    (saved,) = state_files(resume.resume_folder())
    assert saved.parent == resume.resume_folder() and saved.parent.parent == resume.resume_folder().parent

    _fresh_state()
    _, resumed = txt2img(webui, batch_size=1, steps=6)
    params = params_of(resumed.infotexts[0])
    assert params.get("SUPIR resumed") == "step 2/6", resumed.comments
    assert "SUPIR: resumed at step 2/6" in resumed.comments
    assert np.array_equal(np.asarray(resumed.images[0]), np.asarray(whole.images[0]))
    assert state_files(resume.resume_folder()) == []  # dropped once the job completed


def test_resume_off_in_settings_saves_nothing(webui):
    shared.opts.supir_resume = False
    try:
        _interrupt_at(2)
        txt2img(webui, batch_size=1, steps=6)
    finally:
        shared.opts.supir_resume = True
    assert state_files(resume.resume_folder()) == []
