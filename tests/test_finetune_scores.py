"""mlm_jax/finetuning/metrics.py's scores against scikit-learn and the textbook formulas."""

import numpy as np
import pytest

from mlm_jax.finetuning import metrics


def _reference_scores(labels, predicted, num_labels):
    """Accuracy, F1 of class 1 and Matthews correlation from their textbook definitions
    (precision and recall; the binary phi formula; R_K as covariances of one-hot codes), written
    apart from mlm_jax/finetuning/metrics.py's confusion-matrix arithmetic."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    out = {"accuracy": float(np.mean(labels == predicted))}
    if num_labels == 2:
        tp = np.sum((predicted == 1) & (labels == 1))
        tn = np.sum((predicted == 0) & (labels == 0))
        fp = np.sum((predicted == 1) & (labels == 0))
        fn = np.sum((predicted == 0) & (labels == 1))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        out["f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        denominator = np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
        out["mcc"] = float(tp * tn - fp * fn) / denominator if denominator else 0.0
    else:
        x = np.eye(num_labels)[labels]
        y = np.eye(num_labels)[predicted]

        def cov(a, b):
            return float(np.sum((a - a.mean(0)) * (b - b.mean(0))))

        scale = np.sqrt(cov(x, x) * cov(y, y))
        out["mcc"] = cov(x, y) / scale if scale else 0.0
    return out


@pytest.mark.filterwarnings("ignore:A single label was found")  # (sklearn, on a constant case)
@pytest.mark.parametrize("num_labels", [2, 3])
def test_scores_match_sklearn_and_the_textbook_formulas(num_labels):
    rng = np.random.default_rng(num_labels)
    cases = []
    for n in (7, 50, 301):
        labels = rng.integers(0, num_labels, n)
        noisy = np.where(rng.random(n) < 0.7, labels, rng.integers(0, num_labels, n))
        cases += [(labels, noisy), (labels, rng.integers(0, num_labels, n))]
    cases += [(np.array([0, 1, 1, 0]), np.zeros(4, int)), (np.zeros(5, int), np.zeros(5, int))]
    try:
        from sklearn import metrics as sk
    except ImportError:
        sk = None
    for labels, predicted in cases:
        got = metrics.scores(labels, predicted, num_labels)
        want = _reference_scores(labels, predicted, num_labels)
        assert got.keys() == want.keys()
        for name in want:
            assert got[name] == pytest.approx(want[name], abs=1e-12), (name, labels, predicted)
        if sk is not None:
            assert got["mcc"] == pytest.approx(sk.matthews_corrcoef(labels, predicted), abs=1e-12)
            assert got["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
            if num_labels == 2:
                f1 = sk.f1_score(labels, predicted, pos_label=1, zero_division=0.0)
                assert got["f1"] == pytest.approx(f1, abs=1e-12)
