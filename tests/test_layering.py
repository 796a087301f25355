"""The import graph points one way (DESIGN.md's Layout): training above the model side, and the
model side a tower ssd -> mamba2 -> model -> {transformer, bidirectional} -> loading.

A static scan of every import statement (module level and inside functions, so lazy imports
count) and of every string naming a ``biomamba.`` module (``importlib.import_module`` targets
such as ``biomamba/__init__.py``'s lazy names).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder -> the package it is installed as (pyproject.toml's package-dir)
PACKAGES = {"biomamba": "biomamba", "export": "biomamba.export", "runtime": "biomamba.runtime",
            "cli": "biomamba.cli"}
TRAINING = "biomamba.training"
# the model side's tower, bottom first: a module may import only those below it
TOWER = [["biomamba.ssd"], ["biomamba.mamba2"], ["biomamba.model"],
         ["biomamba.transformer", "biomamba.bidirectional"], ["biomamba.loading"]]


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(source: str, package: str) -> set[str]:
    """Every module that ``source`` (a module of ``package``) imports, as absolute names
    (``from x import y`` gives x and x.y), and every string constant that looks like a biomamba
    module name."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith("biomamba.") and " " not in node.value:
            found.add(node.value)
    return found


def imports_of(path: Path) -> set[str]:
    name = module_name(path)
    return imported_names(path.read_text(), name if path.name == "__init__.py" else name.rpartition(".")[0])


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def below_training() -> list[Path]:
    """The model side (biomamba/ outside training/), runtime/ and export/: none may import training."""
    model_side = [p for p in sources("biomamba") if "training" not in p.relative_to(REPO).parts]
    return model_side + sources("runtime") + sources("export")


def touches(names: set[str], module: str) -> list[str]:
    return sorted(n for n in names if n == module or n.startswith(module + "."))


def test_the_scan_finds_every_kind_of_import():
    """The oracle for the scan itself: a module of biomamba/ with each way of reaching training."""
    source = ("from .training import loop\n"
              "def f():\n    from .training.pretrain import runner\n    import biomamba.training.train\n"
              "LAZY = {'x': ('biomamba.training.evaluate', 'evaluate')}\n"
              "from . import model\n")
    names = imported_names(source, "biomamba")
    assert touches(names, TRAINING) == ["biomamba.training", "biomamba.training.evaluate", "biomamba.training.loop",
                                        "biomamba.training.pretrain", "biomamba.training.pretrain.runner",
                                        "biomamba.training.train"]
    assert "biomamba.model" in names and not touches(imported_names("from ..model import X\n", "biomamba.training"),
                                                       TRAINING)


@pytest.mark.parametrize("path", below_training(), ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_below_training_imports_it(path):
    bad = touches(imports_of(path), TRAINING)
    assert not bad, f"{path.relative_to(REPO)} imports {', '.join(bad)}: only the CLI may import biomamba.training"


def test_the_model_side_is_a_tower():
    """Each tower module imports only modules of lower floors, never its own floor or above."""
    for floor, modules in enumerate(TOWER):
        above = [m for higher in TOWER[floor:] for m in higher]
        for module in modules:
            path = REPO / (module.replace(".", "/") + ".py")
            bad = [m for m in above if m != module and touches(imports_of(path), m)]
            assert not bad, f"{module} imports {', '.join(bad)}, which stand above it"


def test_training_imports_are_scanned():
    """Guard against a scan that finds nothing: the training wing does import the model side."""
    names = imports_of(REPO / "biomamba" / "training" / "train.py")
    assert "biomamba.loading" in names and "biomamba.training.loop" in names


@pytest.mark.parametrize("path", sources("runtime"), ids=lambda p: str(p.relative_to(REPO)))
def test_runtime_never_imports_export(path):
    """export -> runtime is the only direction (the onnxruntime custom op lives in runtime/)."""
    bad = touches(imports_of(path), "biomamba.export")
    assert not bad, f"{path.relative_to(REPO)} imports {', '.join(bad)}: the runtime must not import export"


@pytest.mark.parametrize("module", ["biomamba.scoring", "biomamba.streaming"])
def test_the_scoring_path_is_torch_free(module):
    """The one scoring path and the streaming core import numpy only (the runtime uses them)."""
    names = imports_of(REPO / (module.replace(".", "/") + ".py"))
    assert not touches(names, "torch") and not touches(names, TRAINING)
