from __future__ import annotations

import pytest
import torch

from supir_engine.checkpoints import LoadOptions
from supir_engine.model_cache import InMemorySDXL, ModelCache, split_model
from supir_engine.tiny import random_state_dict, save_checkpoint, split_state_dict

FP32 = LoadOptions(dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache_models")
    sdxl, supir_q = split_state_dict(random_state_dict(seed=1))
    _, supir_f = split_state_dict(random_state_dict(seed=2))
    return {
        "sdxl": save_checkpoint(sdxl, folder / "sdxl.safetensors"),
        "sdxl_tensors": sdxl,
        "q": save_checkpoint(supir_q, folder / "SUPIR-v0Q.safetensors"),
        "f": save_checkpoint(supir_f, folder / "SUPIR-v0F.safetensors"),
    }


def ptrs(tensors):
    return {k: t.data_ptr() for k, t in tensors.items()}


def test_same_request_is_a_hit(tiny_files):
    cache = ModelCache()
    first = cache.get(tiny_files["sdxl"], tiny_files["q"], FP32)
    assert cache.last_event.base == "loaded" and cache.last_event.supir == "loaded"
    assert cache.get(tiny_files["sdxl"], tiny_files["q"], FP32) is first
    assert cache.last_event.base == cache.last_event.supir == "hit"


def test_switching_q_to_f_replaces_only_supir_tensors(tiny_files):
    cache = ModelCache()
    base_q, supir_q = split_model(cache.get(tiny_files["sdxl"], tiny_files["q"], FP32))
    base_q_ptrs, supir_q_values = ptrs(base_q), {k: v.clone() for k, v in supir_q.items()}
    del base_q, supir_q
    model_f = cache.get(tiny_files["sdxl"], tiny_files["f"], FP32)
    assert (cache.last_event.base, cache.last_event.supir) == ("hit", "loaded")
    base_f, supir_f = split_model(model_f)
    assert ptrs(base_f) == base_q_ptrs  # same storage: nothing of the base was read again
    key = next(iter(supir_f))
    assert not torch.equal(supir_f[key], supir_q_values[key])


def test_in_memory_base_is_shared_not_copied_and_never_modified(tiny_files):
    host_tensors = {k: v.half() for k, v in tiny_files["sdxl_tensors"].items()}
    before = {k: v.clone() for k, v in host_tensors.items()}
    cache = ModelCache()
    model = cache.get(InMemorySDXL(host_tensors, token="ckpt-a"), tiny_files["q"], FP32)
    base, _ = split_model(model)
    shared = [k for k in base if k in host_tensors]
    assert shared and all(base[k].data_ptr() == host_tensors[k].data_ptr() for k in shared)
    assert all(base[k].dtype == torch.float16 for k in shared)  # the host's dtype, as it is
    assert cache.describe()["base"]["shared_with_host"] and cache.describe()["base"]["bytes_owned"] == 0
    assert cache.get(InMemorySDXL(host_tensors, token="ckpt-a"), tiny_files["q"], FP32) is model
    assert all(torch.equal(host_tensors[k], before[k]) for k in host_tensors)


def test_release_shared_and_token_change_reload_the_base(tiny_files):
    host_tensors = dict(tiny_files["sdxl_tensors"])
    cache = ModelCache()
    cache.get(InMemorySDXL(host_tensors, token="a"), tiny_files["q"], FP32)
    cache.get(InMemorySDXL(host_tensors, token="b"), tiny_files["q"], FP32)
    assert (cache.last_event.base, cache.last_event.supir) == ("loaded", "hit")
    assert cache.release_shared()
    assert cache.describe()["base"] is None and cache.describe()["supir"] is not None
    assert not cache.release_shared()
    cache.release()
    status = cache.describe()
    assert (status["model_loaded"], status["base"], status["supir"]) == (False, None, None)
