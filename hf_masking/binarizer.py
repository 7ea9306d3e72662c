"""Binarizers: turn real-valued scores into a boolean mask.

They carry no autograd logic of their own. The straight-through estimator (the mask's
gradient is passed to the scores unchanged, paper Eq. 2) lives in the fused masked-linear
function in ``layers.py``, which recomputes the mask in backward instead of saving it.
"""

from __future__ import annotations

import torch


class ThresholdBinarizer:
    """The paper's binarizer (Eq. 1): keep a weight where its score is >= the global threshold."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return scores >= self.threshold


class TopKBinarizer:
    """Keep the highest-scoring fraction of each layer, so every layer's sparsity stays fixed.

    This is the sparsification of Radiya-Dixit & Wang ("How fine can fine-tuning be?").
    """

    def __init__(self, sparsity: float) -> None:
        self.sparsity = sparsity

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        n_drop = int(round(self.sparsity * scores.numel()))
        if n_drop == 0:
            return torch.ones_like(scores, dtype=torch.bool)
        cutoff = scores.detach().flatten().float().kthvalue(n_drop).values
        return scores > cutoff


def make_binarizer(name: str, threshold: float, sparsity: float) -> ThresholdBinarizer | TopKBinarizer:
    if name == "threshold":
        return ThresholdBinarizer(threshold)
    if name == "topk":
        return TopKBinarizer(sparsity)
    raise ValueError(f"Unknown binarizer {name!r}; expected 'threshold' or 'topk'.")
