from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"

# The test models are tiny: thread start-up costs more than it saves, and CI machines are small.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


def load_case(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    sidecar = json.loads((FIXTURES / f"{name}.json").read_text())
    return sidecar, load_file(str(FIXTURES / f"{name}.safetensors"))


@pytest.fixture(scope="session")
def tiny_weights() -> dict[str, torch.Tensor]:
    """The reference tiny model's weights (stored as exact float8 values) in float32."""
    return {k: v.float() for k, v in load_file(str(FIXTURES / "tiny_model.safetensors")).items()}
