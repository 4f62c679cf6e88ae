"""Shared fixtures: small, seeded, fast."""

from __future__ import annotations

import pytest
import torch

# The test machine has two cores shared with other jobs; torch's intra-op threads then
# wait on each other (a 1437x64 matmul ran 20x slower with 2 threads than with 1).
torch.set_num_threads(1)


@pytest.fixture
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """256 samples, 10 features, 3 classes that a small MLP learns in a few dozen steps."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 10, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    return X, y
