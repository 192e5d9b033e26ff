"""Option names the front-ends offer, importable without torch so that ``--help`` stays fast.

``memory.POLICIES``, ``memory.STORAGE_DTYPES`` and ``device_policy.PRECISIONS`` are the engine's own lists; a
test keeps these equal.
"""

from __future__ import annotations

MEMORY_POLICIES = ("full", "stages", "blocks", "auto")
STORAGE_DTYPE_NAMES = ("bf16", "fp16", "fp32", "fp8")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # device_policy.PRECISIONS
