"""WebuiHost: the webui's offload functions around SUPIR, restored in a finally; progress; stop flags."""

from __future__ import annotations

import pytest
import torch
from modules import sd_models, shared

from sd_webui_supir.host import WebuiHost


def names():
    return [name for name, _ in sd_models.calls]


def test_restored_when_the_run_fails(webui):
    host = WebuiHost()
    seen = []
    host.before_restore.append(lambda: seen.append((host.will_restore, webui.sdxl.device.type)))
    with pytest.raises(RuntimeError), host.lease():
        assert webui.sdxl.device.type == "cpu"
        host.acquire_device()  # the pipeline's own acquire/release nest inside the lease
        host.release_device()
        assert webui.sdxl.device.type == "cpu"
        raise RuntimeError("out of memory")
    assert names() == ["send_model_to_cpu", "send_model_to_device"] and webui.sdxl.device.type == "cuda"
    assert seen == [(True, "cpu")]  # cleanup runs before the checkpoint goes back


def test_lowvram_and_cpu_models(webui):
    webui.sdxl.lowvram = True
    try:
        with WebuiHost().lease():
            pass
    finally:
        webui.sdxl.lowvram = False
    assert names() == ["send_model_to_cpu", "send_model_to_device"]  # the webui re-applies its own scheme
    sd_models.calls.clear()
    webui.sdxl.device = torch.device("cpu")
    with WebuiHost().lease():
        pass
    assert names() == ["send_model_to_cpu"] and webui.sdxl.device.type == "cpu"


def test_progress_and_stop_flags(webui):
    host = WebuiHost("SUPIR 1/1")
    host.progress("stage1", 0, 1)
    assert shared.state.textinfo == "SUPIR 1/1: stage 1 (denoise encoder)"
    host.progress("sampling", 3, 10)
    assert (shared.state.sampling_step, shared.state.sampling_steps) == (3, 10)
    assert not host.should_stop()
    shared.state.skip()
    assert host.should_stop()


def _restore_runs_out_of_memory(monkeypatch):
    def send_model_to_device(m):
        sd_models.calls.append(("send_model_to_device", m))
        m.to("cuda")  # part of it got there before the allocation failed
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(sd_models, "send_model_to_device", send_model_to_device)


def test_checkpoint_left_wholly_in_ram_when_its_restore_runs_out_of_memory(webui, monkeypatch, caplog):
    _restore_runs_out_of_memory(monkeypatch)
    host = WebuiHost()
    with caplog.at_level("WARNING"), host.lease():
        pass
    assert webui.sdxl.device.type == "cpu"
    assert host.restore_failure.startswith("the SD checkpoint was left in RAM")
    assert "CUDA out of memory" in host.restore_failure
    assert "Load SD checkpoint to VRAM" in host.restore_failure
    assert host.restore_failure in caplog.text
