"""Metrics against scikit-learn and against hand-computed cases."""
import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score, jaccard_score

from lovlanet.metrics import ConfusionMatrix, metrics_table


def test_matches_scikit_learn_on_random_labels():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (3, 37, 41))
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(rng.random(target.shape) < 0.6, np.clip(target, 0, 4), rng.integers(0, 5, target.shape))
    cm = ConfusionMatrix(5, class_names=list("abcde"))
    for t, p in zip(target, pred):  # streamed image by image
        cm.update(torch.from_numpy(p), torch.from_numpy(t))
    got = cm.compute()
    valid = target != 255
    y, yhat = target[valid], pred[valid]
    np.testing.assert_array_equal(cm.matrix.numpy(), confusion_matrix(y, yhat, labels=range(5)))
    np.testing.assert_allclose(list(got["IoU"].values()), jaccard_score(y, yhat, average=None) * 100, atol=1e-3)
    np.testing.assert_allclose(list(got["F1"].values()), f1_score(y, yhat, average=None) * 100, atol=1e-3)
    assert got["mIoU"] == pytest.approx(jaccard_score(y, yhat, average="macro") * 100, abs=1e-3)
    assert got["mF1"] == pytest.approx(f1_score(y, yhat, average="macro") * 100, abs=1e-3)
    assert got["OA"] == pytest.approx((y == yhat).mean() * 100, abs=1e-3)
    assert got["Kappa"] == pytest.approx(cohen_kappa_score(y, yhat) * 100, abs=1e-3)
    assert got["pixels"] == valid.sum()


def test_hand_computed_case():
    # truth: 0 0 1 1 | pred: 0 1 1 1   → tp0=1, fn0=1; tp1=2, fp1=1
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]))
    m = cm.compute()
    assert m["IoU"] == {"0": 50.0, "1": pytest.approx(66.6667)}
    assert m["F1"] == {"0": pytest.approx(66.6667), "1": 80.0}
    assert m["OA"] == 75.0
    # p_o = 3/4, p_e = (2·1 + 2·3)/16 = 1/2 → κ = 0.5
    assert m["Kappa"] == 50.0


def test_exclude_drops_ground_truth_rows_and_means():
    cm = ConfusionMatrix(3, class_names=["background", "a", "b"], exclude=[0])
    # background pixels (truth 0) vanish; an 'a' pixel predicted background stays a miss of 'a'
    cm.update(torch.tensor([0, 1, 0, 1, 2, 2]), torch.tensor([0, 0, 1, 1, 2, 2]))
    m = cm.compute()
    assert list(m["IoU"]) == ["a", "b"]
    assert m["IoU"]["a"] == 50.0 and m["IoU"]["b"] == 100.0  # a: tp 1, fn 1 (pred bg), fp 0
    assert m["OA"] == 75.0 and m["pixels"] == 4


def test_bad_predictions_and_table():
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        cm.update(torch.tensor([5]), torch.tensor([1]))
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    table = metrics_table(cm.compute(), "t")
    assert "| 0 | 1 | mIoU | mF1 | OA | Kappa |" in table and "100.00" in table
