"""Classification scores as GLUE reports them: accuracy; F1 of the positive class (label 1) on
binary tasks (MRPC, QQP); Matthews correlation (CoLA's score; the multiclass form for more).

Ten lines of numpy on a confusion matrix rather than scikit-learn, which the project does not
otherwise need; tests/test_finetune.py checks them against scikit-learn where it is installed
and against independently written formulas where it is not. An undefined score (no positive
prediction and no positive label for F1; a constant prediction or label for MCC) is 0, as in
scikit-learn.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels, predictions, num_labels: int) -> np.ndarray:
    """int64 [C, C]: entry [true, predicted] counts the examples."""
    counts = np.zeros((num_labels, num_labels), np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
    return counts


def accuracy(confusion: np.ndarray) -> float:
    return float(np.trace(confusion) / max(confusion.sum(), 1))


def binary_f1(confusion: np.ndarray, positive: int = 1) -> float:
    """2 TP / (2 TP + FP + FN) for class `positive`."""
    tp = confusion[positive, positive]
    fp = confusion[:, positive].sum() - tp
    fn = confusion[positive, :].sum() - tp
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else 0.0


def matthews(confusion: np.ndarray) -> float:
    """Matthews correlation (Gorodkin's R_K for more than two classes) from the confusion."""
    c = confusion.astype(np.float64)
    n, correct = c.sum(), np.trace(c)
    true_k, predicted_k = c.sum(axis=1), c.sum(axis=0)
    covariance = correct * n - true_k @ predicted_k
    scale = np.sqrt((n * n - predicted_k @ predicted_k) * (n * n - true_k @ true_k))
    return float(covariance / scale) if scale else 0.0


def scores(labels, predictions, num_labels: int) -> dict[str, float]:
    """{"accuracy", "mcc"} and, for two classes, "f1" (of class 1)."""
    confusion = confusion_matrix(labels, predictions, num_labels)
    out = {"accuracy": accuracy(confusion), "mcc": matthews(confusion)}
    if num_labels == 2:
        out["f1"] = binary_f1(confusion, positive=1)
    return out
