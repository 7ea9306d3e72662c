"""Optimizer parameter groups for masking: the scores at the masking rate, trained modules at their own.

Masking's scores want rates 10-100x a head's, and never weight decay (it pulls them below τ). The
stock Trainer puts every trainable parameter in two groups at one rate; `masking_optimizer` gives it
groups that keep the scores, the trained weights and their biases apart, through the Trainer's own
``optimizer_cls_and_kwargs`` hook, so the optimizer stays the one ``--optim`` chose.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn


def find_masked_model(model: nn.Module | None) -> Any:
    """The MaskedModel inside `model` (itself, or under DDP-style ``.module`` wrappers); None if there is none."""
    from .model import MaskedModel

    while model is not None and not isinstance(model, MaskedModel):
        model = getattr(model, "module", None)  # DDP and similar wrappers
    return model


def param_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float = 0.0,
    head_learning_rate: float | None = None,
    mask_learning_rate: float | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups of a MaskedModel: scores (no decay, at `mask_learning_rate`, default `learning_rate`);
    trained modules' weights (`weight_decay`) and their biases and norms (no decay), both at
    `head_learning_rate` (default: `learning_rate`).

    Empty groups are left out. Built from the model as it is when called, so a sharded or moved
    model's own parameters are the ones grouped.
    """
    masked = find_masked_model(model)
    if masked is None:
        raise TypeError("param_groups needs a hf_masking.MaskedModel (or a wrapper around one).")
    head_lr = learning_rate if head_learning_rate is None else head_learning_rate
    scores, decayed, undecayed = [], [], []
    for name, param in masked.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith("mask_scores"):
            scores.append(param)
        elif param.dim() < 2 or "bias" in name or "norm" in name.lower():
            undecayed.append(param)
        else:
            decayed.append(param)
    groups = [
        {
            "params": scores,
            "lr": learning_rate if mask_learning_rate is None else mask_learning_rate,
            "weight_decay": 0.0,
        },
        {"params": decayed, "lr": head_lr, "weight_decay": weight_decay},
        {"params": undecayed, "lr": head_lr, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


class _GroupedOptimizer:
    """The Trainer's optimizer factory (``optimizer_cls()(model, **kwargs)``): its usual optimizer class, our groups."""

    def __init__(self, args: Any, head_learning_rate: float | None, mask_learning_rate: float | None = None) -> None:
        self.args = args
        self.head_learning_rate = head_learning_rate
        self.mask_learning_rate = mask_learning_rate

    def __call__(self, model: nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
        from transformers import Trainer
        from transformers.trainer_optimizer import is_optimizer_factory

        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        own_grouping = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
        if is_optimizer_factory(optimizer_cls) or own_grouping:
            raise ValueError(
                f"A separate head or mask learning rate needs an optimizer that takes parameter groups; --optim "
                f"{self.args.optim} builds its own. Drop the separate rate, or choose e.g. adamw_torch."
            )
        kwargs = {**optimizer_kwargs, **kwargs}
        groups = param_groups(
            model, kwargs.pop("lr"), self.args.weight_decay, self.head_learning_rate, self.mask_learning_rate
        )
        return optimizer_cls(groups, **kwargs)


def masking_optimizer(
    args: Any, head_learning_rate: float | None = None, mask_learning_rate: float | None = None
) -> tuple[Any, dict[str, Any]]:
    """What to pass as ``Trainer(optimizer_cls_and_kwargs=...)`` to train scores and head at their own rates::

        trainer = Trainer(model=masked, args=args, callbacks=[MaskingCallback()],
                          optimizer_cls_and_kwargs=masking_optimizer(args, mask_learning_rate=8e-3))

    The optimizer is the one ``args.optim`` names; the scores train at `mask_learning_rate`
    (default ``args.learning_rate``) without weight decay, the trained head (and
    `MaskingConfig.modules_to_save`) at `head_learning_rate` (default ``args.learning_rate``)
    with ``args.weight_decay`` on its weights. The scheduler scales both alike.
    """
    for name, value in (("head_learning_rate", head_learning_rate), ("mask_learning_rate", mask_learning_rate)):
        if value is not None and (isinstance(value, bool) or not (value > 0 and value < float("inf"))):
            raise ValueError(f"{name}={value!r} is invalid: expected a positive number.")
    return functools.partial(_GroupedOptimizer, args, head_learning_rate, mask_learning_rate), {}
