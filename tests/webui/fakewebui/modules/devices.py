"""Devices. ``device`` is what the webui computes on: a CUDA device that never runs anything here."""

import contextlib

import torch

from modules import shared

cpu = torch.device("cpu")
device = torch.device("cuda")
dtype = torch.float16
dtype_vae = torch.float16
dtype_unet = torch.float16
unet_needs_upcast = False  # the webui: --upcast-sampling and not --no-half
fp8 = False
gc_calls = 0  # fake only


def get_optimal_device():
    return device


def get_device_for(task):
    use_cpu = shared.cmd_opts.use_cpu
    if task in use_cpu or "all" in use_cpu:
        return cpu
    return get_optimal_device()


def torch_gc():
    global gc_calls
    gc_calls += 1  # the real one empties CUDA/MPS caches; it does not call gc.collect()


def autocast(disable=False):
    return contextlib.nullcontext()


def without_autocast(disable=False):
    return contextlib.nullcontext()
