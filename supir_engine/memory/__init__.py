"""Device memory policy: where each weight lives while SUPIR runs, and in which dtype it is stored.

* The RAM copy of every weight is the source of truth and is never written. Making a module resident
  puts *device copies* of its tensors into the module (in their storage dtype); offloading puts the
  RAM tensors back and drops the copies, with no device-to-host copy. The layers (models/ops.py) upcast
  whatever weight they hold to the compute dtype just in time, so fp8 storage works on every device, and
  a weight that is not resident is copied for the one layer that needs it: every policy computes the
  same values, the policies differ only in what is copied when.
* Policies: ``full`` keeps every weight a run has used resident until the run ends; ``stages`` keeps
  only the current stage's modules; ``blocks`` streams the UNet, control and text encoder layers through
  the device in chunks, in execution order, the next chunk copied on a side CUDA stream (from page-locked
  RAM) while the current one computes, and with ``resident_bytes`` keeps that much of them resident
  (partial residency). ``auto`` (the default; see ``plan``) picks the policy, the resident bytes, the
  sampler and VAE tiles and batched or sequential CFG from the free device memory.
* On the CPU every policy is a no-op: the weights already are where the computation runs.

The package has one module per job, each readable alone: ``storage`` (dtypes the weights are kept in),
``residency`` (placement, streaming), ``staging`` (the page-locked buffers streamed weights are copied
through), ``planning`` (the arrangement that fits a budget) and ``config`` (the user's choices and the
device's free memory).
"""

from .config import (
    ALLOCATOR_OVERHEAD,
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MARGIN_BYTES,
    POLICIES,
    GiB,
    MemoryConfig,
    MiB,
    available_host_bytes,
    budget_config,
    device_budget,
    free_device_bytes,
    memory_config,
)
from .planning import MemoryPlan, Workload, plan, plan_memory
from .residency import Residency
from .staging import pinned_bytes, release_staging
from .storage import (
    FP8_VECTOR_DTYPE,
    STORAGE_DTYPES,
    apply_storage,
    convert_storage,
    is_storage_only,
    storage_dtype,
    tensor_bytes,
    tensor_storage_dtype,
)

__all__ = [
    "ALLOCATOR_OVERHEAD",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MARGIN_BYTES",
    "FP8_VECTOR_DTYPE",
    "POLICIES",
    "STORAGE_DTYPES",
    "GiB",
    "MemoryConfig",
    "MemoryPlan",
    "MiB",
    "Residency",
    "Workload",
    "apply_storage",
    "available_host_bytes",
    "budget_config",
    "convert_storage",
    "device_budget",
    "free_device_bytes",
    "is_storage_only",
    "memory_config",
    "pinned_bytes",
    "plan",
    "plan_memory",
    "release_staging",
    "storage_dtype",
    "tensor_bytes",
    "tensor_storage_dtype",
]
