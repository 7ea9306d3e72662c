"""Task metrics computed locally (``evaluate.load`` fetches scripts from the Hub and fails offline)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float((np.asarray(predictions) == np.asarray(labels)).mean())}


def glue_metrics(task: str | None, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE's metric for `task`: accuracy; F1 and accuracy for MRPC/QQP; Matthews for CoLA; Pearson/Spearman for STS-B.

    Without a task: accuracy for classification, Pearson/Spearman/MSE for regression (float labels).
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef

    predictions, labels = np.asarray(predictions), np.asarray(labels)
    regression = task == "stsb" or (task is None and labels.dtype.kind == "f")
    if regression:
        out = {
            "pearson": float(pearsonr(predictions, labels)[0]),
            "spearmanr": float(spearmanr(predictions, labels)[0]),
        }
        if task is None:
            out["mse"] = float(((predictions - labels) ** 2).mean())
        return out
    if task == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(labels, predictions))}
    if task in ("mrpc", "qqp"):
        return {**accuracy(predictions, labels), "f1": float(f1_score(labels, predictions))}
    return accuracy(predictions, labels)


def seqeval_metrics(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (conlleval semantics, IOB1 and IOB2 alike) plus token accuracy."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    predictions, references = [list(p) for p in predictions], [list(r) for r in references]
    return {
        "precision": float(precision_score(references, predictions, zero_division=0)),
        "recall": float(recall_score(references, predictions, zero_division=0)),
        "f1": float(f1_score(references, predictions, zero_division=0)),
        "accuracy": float(accuracy_score(references, predictions)),
    }


def majority_label(labels: Sequence) -> object:
    """The most frequent label (ties: the smallest), the prediction of a majority-class baseline."""
    counts = Counter(labels)
    best = max(counts.values())
    return min(label for label, count in counts.items() if count == best)
