"""recipes/ensemble_check.py on tiny data: each member's accuracy equals `evaluate`'s (the oracle,
`bmamba eval`'s code) on the same whole recordings, a group of one scores as its member, and the
"right by any / by all" shares bound the members' accuracies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from test_train import make_class_folder

from biomamba import BioMamba
from biomamba.training.evaluate import classification_items, evaluate
from conftest import perturb_

REPO = Path(__file__).resolve().parents[1]


def test_ensemble_check_members_match_eval_and_ensembles_average(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=3, seconds=1.5, seed=int(np.random.SeedSequence().entropy % 2**31))
    classes = sorted(p.name for p in data.iterdir())
    checkpoints = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = perturb_(BioMamba.from_preset("tiny", task="classify", classes=classes), 0.3, seed=seed)
        model.save(tmp_path / f"ck{seed}")
        checkpoints.append(tmp_path / f"ck{seed}")
    out = tmp_path / "e.json"
    run = subprocess.run([sys.executable, str(REPO / "recipes" / "ensemble_check.py"), str(data),
                          "--group", "a", str(checkpoints[0]), "--group", "b", str(checkpoints[1]),
                          "--json", str(out)], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    for checkpoint, name in zip(checkpoints, "ab"):
        oracle = evaluate(checkpoint, data, device="cpu")
        assert result["members"][str(checkpoint)]["accuracy"] == oracle["accuracy"]
        assert result["ensembles"][name]["accuracy"] == oracle["accuracy"]   # a group of one is its member
    items, _ = classification_items(data)
    both = result["ensembles"]["all"]
    assert both["members"] == 2 and result["n_items"] == len(items)
    assert both["right_by_all"] <= min(result["members"][str(c)]["accuracy"] for c in checkpoints) + 1e-12
    assert both["right_by_any"] >= max(result["members"][str(c)]["accuracy"] for c in checkpoints) - 1e-12
