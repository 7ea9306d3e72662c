"""Whether a planned training can move a mask at all: how far scores can travel against how far they are from τ.

With Adam a score moves at most about one learning rate per step, so over a run it travels at most
the sum of the scheduled rates, its *reach*. Scores start uniform on [low, high] around τ
(`MaskingConfig.init_range`); only those within reach of τ can cross it. When that is a small
fraction of the scores, the mask ends where it started whatever the data says, which is what
a finetuning rate (1e-5-1e-4) does to masking. `check` says so before training, with a rate that
would reach.
"""

from __future__ import annotations

from typing import Any

from .config import MaskingConfig

# Below this fraction of scores within reach of τ, the planned training cannot change the mask much.
# Measured on MiniLM-L6 SST-2, 125 steps (bench/lr_reach.py; BENCHMARKS.md): 2.1% and 6.3% within reach
# (1e-4, 3e-4) changed 0.17% and 0.5% of the mask and stayed at chance; 15.5% (1e-3) changed 1.8%: 79%.
MIN_MOVABLE = 0.10
# The fraction a suggested rate aims at.
TARGET_MOVABLE = 0.25


def schedule_sum(args: Any, max_steps: int, learning_rate: float) -> float:
    """The sum of the learning rates the Trainer's scheduler will use over `max_steps` steps."""
    if max_steps <= 0:
        return 0.0
    import torch
    from transformers import get_scheduler

    try:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        scheduler = get_scheduler(
            args.lr_scheduler_type,
            optimizer,
            num_warmup_steps=args.get_warmup_steps(max_steps),
            num_training_steps=max_steps,
            scheduler_specific_kwargs=getattr(args, "lr_scheduler_kwargs", None) or {},
        )
        factors = scheduler.lr_lambdas[0]
        return learning_rate * sum(factors(step) for step in range(max_steps))
    except (AttributeError, TypeError, ValueError, IndexError):  # a scheduler without a factor function
        return learning_rate * max_steps


def movable_fraction(config: MaskingConfig, reach: float) -> float:
    """The fraction of initial scores within `reach` of τ (on either side): an upper bound on what can flip."""
    if config.binarizer != "threshold":
        return 1.0  # top-k masks follow the scores' order, which any step can change
    low, high = config.init_range
    tau = config.threshold
    reach = max(reach, 0.0)
    return (min(reach, high - tau) + min(reach, tau - low)) / (high - low)


def reach_for(config: MaskingConfig, fraction: float) -> float:
    """The smallest reach that puts `fraction` of the initial scores within reach of τ."""
    low, high = config.init_range
    tau = config.threshold
    near, far = sorted((high - tau, tau - low))
    span = fraction * (high - low)
    if span <= 2 * near:
        return span / 2
    return min(span - near, far)


def check(config: MaskingConfig, args: Any, max_steps: int, learning_rate: float) -> str | None:
    """A warning when the planned training cannot move more than `MIN_MOVABLE` of the scores across τ."""
    if config.binarizer != "threshold" or max_steps <= 0 or learning_rate <= 0:
        return None
    reach = schedule_sum(args, max_steps, learning_rate)
    fraction = movable_fraction(config, reach)
    if fraction >= MIN_MOVABLE:
        return None
    suggested = learning_rate * reach_for(config, TARGET_MOVABLE) / max(reach, 1e-30)
    suggested = float(f"{suggested:.1g}")
    low, high = config.init_range
    schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    return (
        f"The mask can barely change in this training: at a mask learning rate of {learning_rate:g} over "
        f"{max_steps} steps ({schedule} schedule) a score moves at most {reach:.3g} in all, and only "
        f"{100 * fraction:.2g}% of the initial scores (uniform on [{low:.3g}, {high:.3g}], threshold "
        f"{config.threshold:g}) lie that close to the threshold, so the mask stays near its random start. "
        f"A mask learning rate of about {suggested:g} reaches {100 * TARGET_MOVABLE:.0f}% of them: pass "
        f"--mask_learning_rate {suggested:g} to the example scripts (the rest keeps --learning_rate), or "
        f"masking_optimizer(args, mask_learning_rate={suggested:g}) to the Trainer; or train for more steps."
    )
