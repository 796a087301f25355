"""Models shipped in the package are found by name (`bmamba detect --model NAME`, `bmamba eval NAME`)."""

from __future__ import annotations

from pathlib import Path

from biomamba.runtime.manifest import MANIFEST
from biomamba.runtime.models import default_model_dir, describe_model, model_folder

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
