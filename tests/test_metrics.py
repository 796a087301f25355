"""Metrics against brute-force oracles written here."""

from __future__ import annotations

import itertools
import math
from collections import namedtuple

import numpy as np
import pytest

from biomamba import metrics

# --------------------------------------------------------------------------- classification


def test_accuracy_and_confusion_against_loops():
    rng = np.random.default_rng()
    n_classes = 5
    y_true = rng.integers(0, n_classes, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, n_classes, 200))
    cm = np.zeros((n_classes, n_classes), dtype=int)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[t, p] += 1
    np.testing.assert_array_equal(metrics.confusion_matrix(y_true, y_pred, n_classes), cm)
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / 200)
    assert metrics.accuracy([], []) == 0.0


def test_macro_f1_against_per_class_counts():
    rng = np.random.default_rng()
    n_classes = 6  # class 5 never occurs: F1 0, still in the mean
    y_true = rng.integers(0, 5, 300)
    y_pred = np.where(rng.random(300) < 0.5, y_true, rng.integers(0, 5, 300))
    f1s = []
    for c in range(n_classes):
        tp = sum((t == c) and (p == c) for t, p in zip(y_true, y_pred, strict=True))
        fp = sum((t != c) and (p == c) for t, p in zip(y_true, y_pred, strict=True))
        fn = sum((t == c) and (p != c) for t, p in zip(y_true, y_pred, strict=True))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    assert metrics.macro_f1(y_true, y_pred, n_classes) == pytest.approx(np.mean(f1s))


def test_bad_class_indices_rejected():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metrics.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="items"):
        metrics.accuracy([0, 1], [0])


# --------------------------------------------------------------------------- mAP


def brute_ap(scores, targets):
    """AP as the mean of precision@rank over positives, by explicit ranking (ties: input order)."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    positives = sum(targets)
    if positives == 0:
        return 0.0
    hits, total = 0, 0.0
    for rank, i in enumerate(ranked, start=1):
        if targets[i]:
            hits += 1
            total += hits / rank
    return total / positives


def test_average_precision_matches_brute_force():
    rng = np.random.default_rng()
    for _ in range(20):
        n = int(rng.integers(1, 60))
        scores = rng.random(n).round(int(rng.integers(1, 4)))  # rounding makes ties
        targets = (rng.random(n) < 0.3).astype(int)
        assert metrics.average_precision(scores, targets) == pytest.approx(brute_ap(list(scores), list(targets)))


def test_map_is_mean_over_classes_with_no_positive_class_zero():
    rng = np.random.default_rng()
    scores = rng.random((50, 4))
    targets = (rng.random((50, 4)) < 0.3).astype(int)
    targets[:, 2] = 0
    expected = np.mean([brute_ap(list(scores[:, c]), list(targets[:, c])) for c in range(4)])
    assert metrics.average_precision(scores[:, 2], targets[:, 2]) == 0.0
    assert metrics.mean_average_precision(scores, targets) == pytest.approx(expected)


def test_perfect_and_worst_rankings():
    targets = np.array([1, 1, 0, 0, 0])
    assert metrics.average_precision([5, 4, 3, 2, 1], targets) == 1.0
    # positives last: precision 1/4 and 2/5
    assert metrics.average_precision([1, 2, 3, 4, 5], targets) == pytest.approx((1 / 4 + 2 / 5) / 2)


def test_map_rejects_nan_and_non_binary():
    with pytest.raises(ValueError, match="finite"):
        metrics.average_precision([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.average_precision([0.1, 0.2], [0, 2])


# --------------------------------------------------------------------------- events

Event = namedtuple("Event", "start_s end_s label")


def brute_max_matching(preds, refs, tol):
    """Maximum matching by trying every assignment (tiny sizes only)."""
    best = 0
    for r in range(min(len(preds), len(refs)), 0, -1):
        for ps in itertools.permutations(range(len(preds)), r):
            for rs in itertools.combinations(range(len(refs)), r):
                if all(preds[p][2] == refs[q][2] and abs(preds[p][0] - refs[q][0]) <= tol
                       for p, q in zip(ps, rs, strict=True)):
                    return r
    return best


def test_event_prf_exact_matches():
    ref = [(1.0, 2.0, "a"), (5.0, 6.0, "b")]
    out = metrics.event_prf(ref, ref)
    assert (out["tp"], out["fp"], out["fn"]) == (2, 0, 0)
    assert out["precision"] == out["recall"] == out["f1"] == 1.0


def test_event_prf_tolerance_boundaries():
    ref = [Event(10.0, 11.0, "a")]
    inside = metrics.event_prf([Event(10.5, 12.0, "a")], ref, onset_tolerance_s=0.5)
    assert inside["tp"] == 1  # |10.5 - 10.0| = 0.5 exactly: inclusive
    outside = metrics.event_prf([Event(10.5 + 1e-9, 12.0, "a")], ref, onset_tolerance_s=0.5)
    assert (outside["tp"], outside["fp"], outside["fn"]) == (0, 1, 1)
    early = metrics.event_prf([Event(9.5, 10.0, "a")], ref, onset_tolerance_s=0.5)
    assert early["tp"] == 1


def test_event_prf_wrong_label_and_duplicates():
    ref = [(1.0, 2.0, "a")]
    wrong = metrics.event_prf([(1.0, 2.0, "b")], ref)
    assert (wrong["tp"], wrong["fp"], wrong["fn"]) == (0, 1, 1)
    assert wrong["f1"] == 0.0
    dup = metrics.event_prf([(1.0, 2.0, "a"), (1.1, 2.0, "a")], ref)
    assert (dup["tp"], dup["fp"], dup["fn"]) == (1, 1, 0)
    assert dup["precision"] == 0.5 and dup["recall"] == 1.0
    assert dup["f1"] == pytest.approx(2 * 0.5 / 1.5)


def test_event_prf_empty_sets_follow_sed_eval():
    none = metrics.event_prf([], [])
    assert math.isnan(none["precision"]) and math.isnan(none["recall"]) and math.isnan(none["f1"])
    no_pred = metrics.event_prf([], [(0, 1, "a")])
    assert math.isnan(no_pred["precision"]) and no_pred["recall"] == 0.0
    no_ref = metrics.event_prf([(0, 1, "a")], [])
    assert no_ref["precision"] == 0.0 and math.isnan(no_ref["recall"])


def test_greedy_matching_equals_maximum_matching():
    rng = np.random.default_rng()
    for _ in range(300):
        n_pred, n_ref = int(rng.integers(0, 6)), int(rng.integers(0, 5))
        # onsets on a coarse grid so that many fall at exactly the tolerance
        preds = [(float(rng.integers(0, 12)) * 0.25, 99.0, str(rng.choice(["a", "b"]))) for _ in range(n_pred)]
        refs = [(float(rng.integers(0, 12)) * 0.25, 99.0, str(rng.choice(["a", "b"]))) for _ in range(n_ref)]
        out = metrics.event_prf(preds, refs, onset_tolerance_s=0.5)
        assert out["tp"] == brute_max_matching(preds, refs, 0.5)
        assert out["fp"] == n_pred - out["tp"] and out["fn"] == n_ref - out["tp"]


def test_greedy_needs_order_case():
    # A naive "closest reference first" match would pair pred 1.0 with ref 1.2 and leave ref
    # 0.6 unmatched; the maximum matching pairs both.
    preds = [(1.0, 2, "a"), (1.6, 2, "a")]
    refs = [(0.6, 2, "a"), (1.2, 2, "a")]
    assert metrics.event_prf(preds, refs, onset_tolerance_s=0.45)["tp"] == 2


# --------------------------------------------------------------------------- plots


def test_plots_write_files(tmp_path):
    rng = np.random.default_rng()
    cm = rng.integers(0, 20, (3, 3))
    p = metrics.plot_confusion(cm, ["a", "b", "c"], tmp_path / "cm.png")
    assert p.stat().st_size > 1000
    scores = rng.random((40, 2))
    targets = (rng.random((40, 2)) < 0.4).astype(int)
    q = metrics.plot_precision_recall(scores, targets, ["x", "y"], tmp_path / "pr.png")
    assert q.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, biomamba.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
