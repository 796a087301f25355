"""Shared test fixtures.

Real recordings live beside the project in ../shared/data/real (see its README); a fresh clone
does not have them, so tests that need them skip with a reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real recordings absent ({REAL_DATA}); they come with the project's shared folder")
    return REAL_DATA


def perturb_(model, scale: float = 0.05, seed: int = 0):
    """Add noise to every parameter, so that D, dt_bias, A_log and the norms are not at their
    init values (a test on fresh-init weights could miss a wrongly wired parameter)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model
