"""Binarizers: turn real-valued scores into a boolean mask.

They carry no autograd logic of their own. The straight-through estimator (the mask's
gradient is passed to the scores unchanged, paper Eq. 2) lives in the fused masked-linear
function in ``layers.py``, which recomputes the mask in backward instead of saving it.
"""

from __future__ import annotations

import math
import zlib

import torch

from .config import MaskingConfig


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


def binarizer_for(config: MaskingConfig) -> ThresholdBinarizer | TopKBinarizer:
    """The binarizer a config describes."""
    return make_binarizer(config.binarizer, config.threshold, config.initial_sparsity)


def init_draw(
    shape: torch.Size | tuple[int, ...], module_name: str, seed: int, low: float, high: float
) -> torch.Tensor:
    """The fp32 uniform draw behind a module's initial scores: the same on every device, run and dtype.

    Drawn on the CPU from a generator seeded by the seed and the module's name, so it depends on
    neither the device nor the order in which modules are visited. Saved masks are coded given it
    (`codec.InitContext`), so a loader regenerates it exactly from the repo's config.
    """
    generator = torch.Generator(device="cpu").manual_seed(
        (seed * 1_000_003 + zlib.crc32(module_name.encode())) % (2**63)
    )
    return torch.empty(shape, dtype=torch.float32).uniform_(low, high, generator=generator)


def init_scores(shape: torch.Size, module_name: str, config: MaskingConfig) -> torch.Tensor:
    """Uniform scores with exactly P(score < threshold) = initial_sparsity, in the config's score dtype.

    Always drawn in fp32 (`init_draw`) and then rounded, so a bfloat16 run starts from the fp32
    run's mask up to the scores that rounding moves across the threshold.
    """
    low, high = config.init_range
    return init_draw(shape, module_name, config.seed, low, high).to(config.torch_score_dtype)


def scores_for_mask(initial: torch.Tensor, mask: torch.Tensor, config: MaskingConfig) -> torch.Tensor:
    """Scores that binarize to exactly `mask`, as close as possible to the initial scores.

    Threshold binarizer: each initial score stays, except where it falls on the wrong side of τ;
    there it moves to τ (kept) or to the float just below τ (masked out), so training picks up
    at the decision boundary of exactly those weights. Top-k: kept scores are lifted above every
    masked-out one by the initial range, preserving their order within each group.
    """
    dtype = config.torch_score_dtype
    scores = initial.detach().to(dtype).clone()
    if config.binarizer == "topk":
        span = float(scores.max() - scores.min()) + 1.0
        return torch.where(mask, scores + span, scores - span)
    # In the scores' own dtype: that is the threshold the binarizer compares against.
    threshold = torch.tensor(config.threshold, dtype=dtype)
    below = torch.nextafter(threshold, torch.tensor(-math.inf, dtype=dtype))
    scores[mask & (scores < threshold)] = threshold
    scores[~mask & (scores >= threshold)] = below
    return scores
