"""bench/fakecuda.py: device bytes, FLOPs and phases on a fake CUDA device, checked against hand counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.fakecuda import GRANULE, FakeCuda, device_bytes
from supir_engine.memory import convert_storage

MiB = 1 << 20


def rounded(*nbytes: int) -> int:
    return sum(-(-n // GRANULE) * GRANULE for n in nbytes)


def test_linear_weights_forward_and_flops():
    with FakeCuda() as fc, torch.no_grad():
        layer = nn.Linear(4096, 4096, device="cuda", dtype=torch.float16)
        weights = rounded(4096 * 4096 * 2, 4096 * 2)
        assert fc.current_bytes == weights == 33_562_624
        x = torch.randn(8, 4096, device="cuda", dtype=torch.float16)
        fc.reset_peak()
        y = layer(x)
        assert fc.peak_bytes == fc.current_bytes == weights + 2 * rounded(8 * 4096 * 2)
        assert fc.flops == 2 * 8 * 4096 * 4096
        del y
        assert fc.current_bytes == weights + rounded(8 * 4096 * 2)
        del x, layer
        assert fc.current_bytes == 0


def test_views_share_their_storage_and_the_last_one_frees_it():
    with FakeCuda() as fc:
        x = torch.empty(1000, 1000, device="cuda")
        size = rounded(1000 * 1000 * 4)
        views = [x.view(-1), x[10:20], x.t(), x.unsqueeze(0)]
        assert fc.current_bytes == size
        del x
        assert fc.current_bytes == size  # the views keep it alive
        views.pop()
        assert fc.current_bytes == size
        views.clear()
        assert fc.current_bytes == 0


def test_copies_to_the_cpu_free_the_device_and_are_not_counted():
    with FakeCuda() as fc:
        x = torch.empty(256, 1024, device="cuda", dtype=torch.float16)
        on_cpu = x.cpu()
        assert fc.current_bytes == rounded(256 * 1024 * 2)
        del x
        assert fc.current_bytes == 0 and on_cpu.device.type == "cpu"
        back = on_cpu.to("cuda", non_blocking=True)
        assert fc.current_bytes == rounded(256 * 1024 * 2) and back.is_cuda


def test_sizes_round_up_to_the_allocator_granule():
    with FakeCuda() as fc:
        fp16 = torch.empty(1024, 1024, device="cuda", dtype=torch.float16)
        fp8 = torch.empty(1024, 1024, device="cuda", dtype=torch.float8_e4m3fn)
        assert fp8.untyped_storage().nbytes() * 2 == fp16.untyped_storage().nbytes()
        assert fc.current_bytes == 3 * MiB
        del fp16, fp8
        one = torch.empty(1, device="cuda", dtype=torch.uint8)
        assert fc.current_bytes == 512 == device_bytes(1)
        empty = torch.empty(0, device="cuda")
        assert fc.current_bytes == 512
        empty.resize_(1000)  # resized in place: measured again
        assert fc.current_bytes == 512 + rounded(4000)
        del one, empty
        assert fc.current_bytes == 0


def test_meta_models_given_storage_move_to_the_device_and_back():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(256, 512), nn.LayerNorm(512))
    with FakeCuda() as fc:
        convert_storage(model, "fp8")  # meta -> uninitialised CPU tensors: fp8 matrices, fp16 vectors
        assert fc.current_bytes == 0
        model.to("cuda")  # swaps fake parameters in place
        # the fp8 weight, its float32 scale buffer, and three fp16 vectors
        assert fc.current_bytes == rounded(256 * 512) + rounded(4) + 3 * rounded(512 * 2)
        assert model[0].weight.dtype == torch.float8_e4m3fn and model[0].weight.is_cuda
        model.to("cpu")
        assert fc.current_bytes == 0


def test_attention_takes_the_flash_kernel_not_the_full_score_matrix():
    b, h, n, d = 2, 10, 4096, 64
    with FakeCuda() as fc, torch.no_grad():
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.float16) for _ in range(3))
        base = fc.current_bytes
        assert base == 3 * rounded(b * h * n * d * 2)
        fc.reset_peak()
        out = F.scaled_dot_product_attention(q, k, v)
        assert fc.attention_kernels == {"flash": 1}
        out_bytes = rounded(b * h * n * d * 2)
        logsumexp = rounded(b * h * n * 4)
        assert 0 <= fc.peak_bytes - (base + out_bytes + logsumexp) <= 2 * GRANULE  # + the RNG seed, offset
        assert fc.peak_bytes < (b * h * n * n * 4) / 20  # the math path would hold N x N fp32 scores
        assert fc.current_bytes == base + out_bytes and out.dtype == torch.float16
        assert fc.flops == 4 * b * h * n * n * d


def test_wide_heads_take_the_efficient_kernel_with_its_fp32_accumulator():
    n, dv = 4096, 512
    with FakeCuda() as fc, torch.no_grad():
        q = torch.randn(1, 1, n, dv, device="cuda", dtype=torch.bfloat16)
        base = fc.current_bytes
        fc.reset_peak()
        out = F.scaled_dot_product_attention(q, q, q)
        assert fc.attention_kernels == {"efficient": 1}
        accumulator = n * dv * 4
        assert 0 <= fc.peak_bytes - (base + n * dv * 2 + accumulator) <= 2 * GRANULE
        assert fc.current_bytes == base + n * dv * 2  # the accumulator was transient
        del out
        with torch.autocast("cuda", torch.float16):  # fp32 inputs are cast, as autocast would
            out = F.scaled_dot_product_attention(
                *(torch.randn(1, 2, 256, 64, device="cuda") for _ in range(3))
            )
        assert out.dtype == torch.float16 and fc.attention_kernels["flash"] == 1
        F.scaled_dot_product_attention(*(torch.randn(1, 1, 8, 8) for _ in range(3)))  # the CPU: not routed
        assert sum(fc.attention_kernels.values()) == 2


def test_phases_nest_accumulate_and_locate_the_peak():
    with FakeCuda() as fc, torch.no_grad():
        layer = nn.Linear(1024, 1024, device="cuda")
        weights = fc.current_bytes
        with fc.phase("run"):
            with fc.phase("step"):
                y = layer(torch.randn(16, 1024, device="cuda"))
            del y
            big = torch.empty(4 * MiB, device="cuda", dtype=torch.uint8)
            del big
            with fc.phase("step"):
                y = layer(torch.randn(16, 1024, device="cuda"))
        run, step = fc.phases["run"], fc.phases["step"]
        act = rounded(16 * 1024 * 4)
        assert (run.calls, step.calls) == (1, 2)
        assert step.peak_bytes == weights + 2 * act and run.peak_bytes == weights + 4 * MiB
        assert fc.peak_bytes == run.peak_bytes and fc.peak_phase_path == ["run"]
        assert step.flops == 2 * (2 * 16 * 1024 * 1024) == run.flops == fc.flops
        fc.reset_peak()  # the last output is still alive
        assert fc.peak_bytes == fc.current_bytes == weights + act and fc.peak_phase_path == []
        assert y.shape == (16, 1024)


def test_torch_cuda_reports_the_emulated_card():
    with FakeCuda(total_memory=8 << 30) as fc:
        assert torch.cuda.is_available() and torch.cuda.current_device() == 0
        assert torch.cuda.get_device_properties(0).total_memory == 8 << 30
        x = torch.empty(MiB, device="cuda", dtype=torch.uint8)
        assert torch.cuda.memory_allocated() == fc.current_bytes == MiB
        assert torch.cuda.mem_get_info() == ((8 << 30) - MiB, 8 << 30)
        del x
        torch.cuda.reset_peak_memory_stats()  # the pipeline's own resets leave the tracker's peak alone
        assert torch.cuda.max_memory_allocated() == 0 and fc.peak_bytes == MiB
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            y = torch.ones(4, device="cuda")
        event = torch.cuda.Event()
        event.record(side)
        torch.cuda.current_stream().wait_event(event)
        y.record_stream(torch.cuda.current_stream())
        pinned = torch.empty(4).pin_memory()
        assert pinned.is_pinned() and not torch.empty(4).is_pinned()
        assert fc.current_bytes == 512  # pinned host memory is not device memory
        with torch.autocast("cuda", torch.float16):  # enabled: is_available() says yes
            z = nn.Linear(4, 4, device="cuda")(y)
        assert z.dtype == torch.float16


def test_everything_is_restored_on_exit_and_sessions_repeat():
    available = torch.cuda.is_available()
    cuda_before, tensor_before = dict(vars(torch.cuda)), dict(vars(torch.Tensor))
    figures = []
    for _ in range(2):
        with FakeCuda() as fc, torch.no_grad():
            layer = nn.Linear(512, 512, device="cuda")
            layer(torch.randn(3, 512, device="cuda"))
        figures.append((fc.peak_bytes, fc.flops))
        assert torch.cuda.is_available() == available
        assert dict(vars(torch.cuda)) == cuda_before and dict(vars(torch.Tensor)) == tensor_before
    assert figures[0] == figures[1]
    real = torch.arange(4.0) * 2
    assert type(real) is torch.Tensor and real.tolist() == [0.0, 2.0, 4.0, 6.0]
    assert not torch.cuda.is_available() or torch.ones(1, device="cuda").item() == 1.0


def test_agrees_with_torch_mem_tracker_on_a_conv_net():
    tools = pytest.importorskip(
        "torch.distributed._tools.mem_tracker", reason="this torch build has no MemTracker to compare with"
    )
    with FakeCuda() as fc, torch.no_grad():
        net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.GroupNorm(8, 32),
            nn.SiLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(32, 16, 3, padding=1),
        ).to("cuda")
        x = torch.randn(2, 3, 128, 128, device="cuda")
        fc.reset_peak()
        tracker = tools.MemTracker()  # independent: its own dispatch mode, module hooks and rounding
        tracker.track_external(net, x)
        with tracker:
            net(x)
        (peak,) = (snap["Total"] for snap in tracker.get_tracker_snapshot("peak").values())
        assert fc.peak_bytes == peak > 20 * MiB
