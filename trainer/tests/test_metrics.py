"""Metrics against hand-computed cases, and BMA against the official ISIC scorer."""

import math

import numpy as np
import pytest

from dermaedge_train import metrics
from dermaedge_train.data import CLASSES
from dermaedge_train.evaluate import write_predictions, write_truth


def test_balanced_accuracy_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 0, 1, 1, 0, 2])
    # recalls 3/4, 1/2, 1/1
    assert metrics.balanced_accuracy(y, p) == pytest.approx((0.75 + 0.5 + 1) / 3)


def test_per_class_sensitivity_specificity_auc():
    y = np.array([0, 0, 1, 1])
    probs = np.zeros((4, 8))
    probs[:, 0] = [0.9, 0.4, 0.3, 0.1]
    probs[:, 1] = 1 - probs[:, 0]
    pc = metrics.per_class(y, probs)
    assert pc[0]["sensitivity"] == 0.5 and pc[0]["specificity"] == 1.0
    assert pc[1]["sensitivity"] == 1.0 and pc[1]["specificity"] == 0.5
    assert pc[0]["auc"] == 1.0
    assert math.isnan(pc[2]["auc"]) and pc[2]["support"] == 0


def test_sensitivity_at_specificity_picks_the_operating_point():
    pos = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    score = np.array([0.9, 0.8, 0.35, 0.1, 0.7, 0.3, 0.2, 0.05])
    sens, spec, thr = metrics.sensitivity_at_specificity(pos, score, 0.75)
    assert (sens, spec, thr) == (0.75, 0.75, 0.35)
    assert ((score >= thr) & pos).sum() / pos.sum() == sens


def test_ece_of_perfect_calibration_and_of_overconfidence():
    y = np.array([0, 1, 0, 1])
    exact = np.array([[0.5, 0.5]] * 4)
    assert metrics.expected_calibration_error(y, exact) == pytest.approx(0.0)
    sure = np.array([[1.0, 0.0]] * 4)  # always 100% sure, right half the time
    assert metrics.expected_calibration_error(y, sure) == pytest.approx(0.5)


def test_temperature_fit_recovers_the_true_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 8))
    y = np.array([rng.choice(8, p=p) for p in metrics.softmax(true_logits)])
    # an overconfident model: logits 3x too large
    t = metrics.fit_temperature(true_logits * 3, y)
    assert t == pytest.approx(3.0, rel=0.1)


def test_jaccard_dice_and_thresholded_jaccard():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True
    b[:, :4] = True
    assert metrics.jaccard(a, b) == pytest.approx(0.8)
    assert metrics.dice(a, b) == pytest.approx(2 * 40 / 90)
    rep = metrics.segmentation_report([0.8, 0.6], [0.9, 0.7])
    assert rep["jaccard"] == pytest.approx(0.7)
    assert rep["thresholded_jaccard"] == pytest.approx(0.4)  # 0.6 < 0.65 counts as 0


def test_json_safe_turns_nan_into_null():
    assert metrics.json_safe({"a": [float("nan"), np.float32(1.5)], "b": np.int64(2)}) == {
        "a": [None, 1.5],
        "b": 2,
    }


def test_bma_equals_the_official_isic_scorer(tmp_path):
    scoring = pytest.importorskip("isic_challenge_scoring")
    rng = np.random.default_rng(1)
    y = np.concatenate([np.arange(8), rng.integers(0, 8, 192)])
    logits = rng.normal(0, 1, (200, 8))
    logits[np.arange(200), y] += rng.uniform(0, 2.5, 200)  # better than chance, not perfect
    probs = metrics.softmax(logits)
    ids = [f"ISIC_{i:07d}" for i in range(200)]
    write_predictions(tmp_path / "pred.csv", ids, probs)
    write_truth(tmp_path / "truth.csv", ids, y)
    score = scoring.ClassificationScore.from_file(
        tmp_path / "truth.csv",
        tmp_path / "pred.csv",
        scoring.ClassificationMetric.BALANCED_ACCURACY,
    )
    ours = metrics.classification_report(y, probs)
    assert 0.3 < ours["balanced_accuracy"] < 0.95
    assert ours["balanced_accuracy"] == pytest.approx(score.overall, abs=1e-9)
    for c, name in enumerate(CLASSES):
        assert ours["per_class"][c]["auc"] == pytest.approx(
            score.per_category.loc[name, "auc"], abs=1e-6
        ), name
