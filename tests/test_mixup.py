"""`bmamba train --mixup`: the mixed clips, their loss and the Beta draws, checked against what the
mixing must give (read back from clips that are basis vectors), not against the code's own draws."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_train import cli_app, make_class_folder, make_detection_folder, tiny_config, weights
from typer.testing import CliRunner

from biomamba.training.train import mixup_classification_loss, train


@pytest.fixture
def seed() -> int:
    """A fresh seed each run (printed on failure), set for torch's draws too."""
    value = int(np.random.SeedSequence().entropy % 2**31)
    torch.manual_seed(value)
    print("seed", value)
    return value


class Recorder(torch.nn.Module):
    """Stands in for the model: remembers its input, returns fixed clip logits (B, C)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, audio, lengths):
        self.audio, self.lengths = audio.clone(), lengths.clone()
        return {"clip_logits": self.logits}


def step(k: int) -> SimpleNamespace:
    """The loop's counters the loss reads (biomamba.training.loop.LoopState)."""
    return SimpleNamespace(global_step=k, skipped_steps=0)


def basis_batch(n: int, rng: np.random.Generator) -> dict:
    """Clip i is the unit vector e_i (so a mixed clip shows its two weights and partners); random
    labels of 5 classes and random lengths."""
    return {"audio": torch.eye(n, dtype=torch.float32),
            "lengths": torch.as_tensor(rng.integers(1, n + 1, n)),
            "labels": torch.as_tensor(rng.integers(0, 5, n))}


def test_mixed_clips_and_loss_against_the_mixture_read_back(seed):
    rng = np.random.default_rng(seed)
    n = 7
    for _ in range(20):
        batch = basis_batch(n, rng)
        logits = torch.as_tensor(rng.standard_normal((n, 5)), dtype=torch.float32)
        net = Recorder(logits)
        loss, stats = mixup_classification_loss(0.4, seed)(net, batch, step(int(rng.integers(1000))))
        log_p = torch.log_softmax(logits.double(), -1)
        expected, partners = 0.0, []
        for i, row in enumerate(net.audio.double()):
            # row = lam e_i + (1 - lam) e_j: two non-zero entries (one when j == i)
            assert (row >= 0).all() and math.isclose(float(row.sum()), 1.0, rel_tol=1e-6)
            others = [j for j in torch.nonzero(row).flatten().tolist() if j != i]
            assert len(others) <= 1
            j = others[0] if others else i
            partners.append(j)
            lam = float(row[i]) if j != i else 1.0
            assert int(net.lengths[i]) == max(int(batch["lengths"][i]), int(batch["lengths"][j]))
            expected -= lam * float(log_p[i, batch["labels"][i]]) + (1 - lam) * float(log_p[i, batch["labels"][j]])
        assert float(loss) == pytest.approx(expected / n, rel=1e-5)
        assert 0.0 <= stats["acc"] <= 1.0
        assert sorted(partners) == list(range(n))   # each clip is mixed into one clip: a permutation


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_weights_follow_beta_alpha_alpha(alpha, seed):
    """Var(lam) of Beta(a, a) is 1 / (4 (2a + 1)); the mean is 1/2 (read from the mixed clips).
    Float64 clips: a clip mixed with itself reads as weight 1, and telling it from a weight that
    merely rounds to 1 must not drop the draws near 1 (Beta(0.2, 0.2) puts 3 % of its draws
    within 1e-6 of 1: dropping them biased the mean by 0.017 and failed 1 seed in a few hundred)."""
    n, draws = 64, []
    loss_fn = mixup_classification_loss(alpha, seed)
    for k in range(60):
        net = Recorder(torch.zeros(n, 5))
        batch = {"audio": torch.eye(n, dtype=torch.float64), "lengths": torch.full((n,), n),
                 "labels": torch.zeros(n, dtype=torch.long)}
        loss_fn(net, batch, step(k))
        diagonal = torch.diagonal(net.audio)
        moved = diagonal < 1 - 1e-12          # clips mixed with another (not themselves)
        draws.append(diagonal[moved])
    lam = torch.cat(draws).double()
    variance = 1 / (4 * (2 * alpha + 1))
    standard_error = math.sqrt(2 * variance ** 2 / len(lam)) * 2   # generous: the 4th moment is not normal's
    assert float(lam.mean()) == pytest.approx(0.5, abs=4 * math.sqrt(variance / len(lam)))
    assert float(lam.var()) == pytest.approx(variance, abs=4 * standard_error)


def test_mixup_run_resumes_exactly_and_differs_from_a_plain_run(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=4)
    config = dict(batch_size=4, valid_fraction=0, mixup=0.4)
    straight = train(tiny_config(data, tmp_path / "straight", epochs=3, **config))
    train(tiny_config(data, tmp_path / "split", epochs=1, **config))
    resumed = train(tiny_config(data, tmp_path / "split", epochs=3, resume=True, **config))
    a, b = weights(straight["last"]), weights(resumed["last"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = weights(train(tiny_config(data, tmp_path / "plain", epochs=3, batch_size=4, valid_fraction=0))["last"])
    assert any(not torch.equal(a[k], plain[k]) for k in a)   # the mixing changed the training
    with pytest.raises(ValueError, match="mixup"):   # resuming under another alpha is refused
        train(tiny_config(data, tmp_path / "split", epochs=4, resume=True, **{**config, "mixup": 1.0}))


def test_bad_mixup_options_are_refused(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=2)
    runner = CliRunner()
    for value in ("-0.5", "nan", "1000"):
        result = runner.invoke(cli_app("train"), ["train", str(data), "--mixup", value, "--out", str(tmp_path / "r")])
        assert result.exit_code == 2 and "--mixup" in result.output and "Traceback" not in result.output
    detect_data, _ = make_detection_folder(tmp_path / "det", n=2)
    with pytest.raises(ValueError, match="--mixup"):
        train(tiny_config(detect_data, tmp_path / "d", mixup=0.4))
    with pytest.raises(ValueError, match="--mixup"):
        train(tiny_config(detect_data, tmp_path / "d2", mixup=0.4, task="detect"))


def test_batches_of_one_step_draw_apart_and_steps_repeat(seed):
    """Under --accumulate the batches of one optimizer step get their own draws; the same step
    (a resumed run) gets the same draws."""
    n = 16
    batch = {"audio": torch.eye(n), "lengths": torch.full((n,), n), "labels": torch.zeros(n, dtype=torch.long)}

    def mixed(loss_fn, k):
        net = Recorder(torch.zeros(n, 5))
        loss_fn(net, batch, step(k))
        return net.audio

    first = mixup_classification_loss(0.4, seed)
    a, b = mixed(first, 3), mixed(first, 3)
    assert not torch.equal(a, b)
    again = mixup_classification_loss(0.4, seed)
    assert torch.equal(mixed(again, 3), a) and torch.equal(mixed(again, 3), b)
