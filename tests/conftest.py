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


def export_tiny(tmp_path_factory, task: str = "detect", classes=("frog", "bird", "insect")) -> Path:
    """A tiny model with random (perturbed, seed 0) weights exported to ONNX; its export folder."""
    import torch

    from biomamba import BioMamba
    from biomamba.export import export_model

    torch.manual_seed(0)
    model = perturb_(BioMamba.from_preset("tiny", task=task, classes=list(classes)), 0.2)
    root = tmp_path_factory.mktemp(f"model-{task}")
    model.save(root / "ckpt")
    return Path(export_model(root / "ckpt", root / "export"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny detection model (frog, bird, insect) with random weights, exported to ONNX."""
    return export_tiny(tmp_path_factory)


def detect(*args) -> tuple[int, str]:
    """`bmamba detect ARGS...` in this process: (exit code, output)."""
    from typer.testing import CliRunner

    from biomamba.cli.app import app

    result = CliRunner().invoke(app, ["detect", *map(str, args)])
    return result.exit_code, result.output
