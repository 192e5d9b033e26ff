"""shared.state: the job / progress / interrupt record the progress bar and /sdapi/v1/progress read.

``history`` (fake only) records every change of the progress fields, and ``on_change`` lets a test
act at a given moment (e.g. press Interrupt at sampler step k).
"""

import time

TRACKED = ("job", "job_no", "job_count", "sampling_step", "sampling_steps", "textinfo")


class State:
    skipped = False
    interrupted = False
    stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    processing_has_refined_job_count = False
    job_timestamp = "0"
    sampling_step = 0
    sampling_steps = 0
    current_latent = None
    current_image = None
    current_image_sampling_step = 0
    id_live_preview = 0
    textinfo = None
    time_start = None

    def __init__(self):
        object.__setattr__(self, "history", [])
        object.__setattr__(self, "on_change", None)

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        if name in TRACKED:
            self.history.append((name, value))
            if self.on_change is not None:
                self.on_change(self, name, value)

    def skip(self):
        self.skipped = True

    def interrupt(self):
        self.interrupted = True

    def stop_generating(self):
        self.stopping_generation = True

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0
        self.current_image_sampling_step = 0

    def dict(self):
        return {
            name: getattr(self, name)
            for name in (
                "skipped",
                "interrupted",
                "job",
                "job_count",
                "job_no",
                "sampling_step",
                "sampling_steps",
            )
        }

    def begin(self, job="(unknown)"):
        self.sampling_step = 0
        self.time_start = time.time()
        self.job_count = -1
        self.processing_has_refined_job_count = False
        self.job_no = 0
        self.current_latent = None
        self.current_image = None
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.textinfo = None
        self.job = job

    def end(self):
        self.job = ""
        self.job_count = 0
