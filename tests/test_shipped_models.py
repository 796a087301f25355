"""Models shipped in the package are found by name (`bmamba detect --model NAME`, `bmamba eval NAME`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from biomamba.runtime.manifest import MANIFEST
from biomamba.runtime.models import (
    default_model_dir,
    demonstration_note,
    describe_model,
    model_folder,
)

PACKAGE_MODELS = Path(__file__).resolve().parents[1] / "biomamba" / "models"


def test_shipped_names_resolve_to_package_folders():
    shipped = sorted(p.parent.name for p in PACKAGE_MODELS.glob(f"*/{MANIFEST}"))
    assert "default" in shipped
    for name in shipped:
        assert model_folder(name).resolve() == (PACKAGE_MODELS / name).resolve()
    assert model_folder("default").resolve() == default_model_dir().resolve()


def test_an_existing_path_wins_and_unknown_names_stay_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    assert model_folder("default") == Path("default")            # the user's own folder
    assert model_folder("no-such-model") == Path("no-such-model")
    assert model_folder("sub/default") == Path("sub/default")    # a path, never a name


def test_describe_model_by_name():
    manifest, folder, name = describe_model("default", "onnxruntime")
    assert name == "default" and folder.resolve() == default_model_dir().resolve()
    assert manifest.task == "detect"


def test_insectset32_model_is_shipped_with_card_and_licence():
    manifest, folder, name = describe_model("insectset32", "onnxruntime")
    assert name == "insectset32" and manifest.task == "classify" and len(manifest.classes) == 32
    card = (folder / "README.md").read_text()
    licence = (folder / "LICENSE").read_text()
    assert all(c in card for c in manifest.classes)
    assert "CC BY 4.0" in licence and "Faiss" in licence and "Stowell" in licence
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 6 * 2**20


def test_insectset32_scores_what_its_card_says(real_data, tmp_path):
    """`bmamba eval insectset32` on the validation split, every recording whole, gives the accuracy
    and macro-F1 the card and the manifest state (so a model swapped in without its card fails)."""
    import json
    import re

    from typer.testing import CliRunner

    from biomamba.cli.app import app

    listing = real_data / "insectset32" / "files.csv"
    if not listing.is_file():
        pytest.skip(f"InsectSet32 absent ({listing})")
    report = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval", "insectset32", str(listing), "--split", "validation",
                                      "--device", "cpu", "--report", str(report)])
    assert result.exit_code == 0, result.output
    got = json.loads(report.read_text())
    folder = model_folder("insectset32")
    card = (folder / "README.md").read_text()
    stated = re.search(r"\| accuracy \| (\d\.\d+) \((\d+) / (\d+);", card)
    assert stated, "the card's validation table has no accuracy row"
    assert got["n_items"] == int(stated[3]) and round(got["accuracy"] * got["n_items"]) == int(stated[2])
    assert f"{got['accuracy']:.3f}" == stated[1]
    assert f"| macro-F1 | {got['macro_f1']:.3f} |" in card
    assert f"{got['accuracy']:.2f} accuracy" in demonstration_note(folder)
