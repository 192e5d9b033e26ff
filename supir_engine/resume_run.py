"""The resume bookkeeping of one pipeline run: the job's key, its saved state, saving after steps."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from .resume import ResumeJob, ResumeOptions, SavedState, image_digest
from .settings import UpscaleSettings

log = logging.getLogger(__name__)


def _in_memory_identity(model: Any) -> str:
    """Weights known only as a model object: valid within this process."""
    return f"object:{os.getpid()}:{id(model)}"


class ResumeRun:
    """Made by ``SUPIRPipeline.upscale`` before the seed is drawn, so a random seed (-1) stays part of the
    job and a resumed run takes the seed its saved state was sampled with."""

    def __init__(self, options: ResumeOptions, image: Any, requested_seed: int | None, pipeline: Any):
        self.options = options
        self.image = image_digest(image)
        self.random_seed = requested_seed is None or requested_seed < 0
        self.pipeline = pipeline
        self.job: ResumeJob | None = None
        self.state: SavedState | None = None
        self.seed = -1

    def open(self, settings: UpscaleSettings, plan: Any, shape: tuple[int, ...]) -> SavedState | None:
        """Key the job from the settings the plan applied; return its saved state when it matches."""
        pipeline = self.pipeline
        chosen = settings.to_dict()
        if self.random_seed:
            chosen["seed"] = -1
        fields = {
            "settings": chosen,
            "image": self.image,
            "weights": self.options.weights or _in_memory_identity(pipeline.model),
            "device": pipeline.device.type,
            "precision": pipeline.precision.label,
            "batch_cfg": bool(plan.batch_cfg),
            "tile_batch": int(plan.tile_batch),
            "lockstep": bool(plan.lockstep),
        }
        self.job = ResumeJob(self.options, fields, settings.sampler, settings.steps, shape)
        rng_size = torch.Generator("cpu").get_state().numel()
        self.state = self.job.load(rng_size)
        if self.state is not None and not self.random_seed and self.state.seed != settings.seed:
            self.state = None  # cannot happen with an intact key; a collision must not resume
        if self.state is not None:
            log.info("SUPIR: resumed at step %d/%d from %s", self.state.step, self.state.total, self.job.path)
        return self.state

    def settings(self, settings: UpscaleSettings) -> UpscaleSettings:
        """``settings`` with the saved run's seed when the seed was left random."""
        if self.state is not None and self.random_seed:
            settings = settings.replace(seed=self.state.seed)
        self.seed = settings.seed
        return settings

    def notes(self) -> list[str]:
        notes = list(self.job.messages) if self.job is not None else []
        if self.state is not None:
            notes.append(f"resumed at step {self.state.step}/{self.state.total}")
        return notes

    def after_step(self, info: Any, generator: torch.Generator, stopping: bool) -> None:
        """Save the state after ``info.step + 1`` done steps when due (always when the run is stopping,
        and after the last step, so that a failed decode does not lose the sampling)."""
        done = info.step + 1
        if self.job is None or not (stopping or done == info.total or self.job.due(done)):
            return
        sampler_needs_old = self.job.sampler == "restore_dpmpp_2m"
        old = info.denoised if sampler_needs_old else None
        self.job.save(SavedState(done, info.total, self.seed, info.x, old, generator.get_state()))

    def completed(self) -> None:
        if self.job is not None:
            self.job.drop()
