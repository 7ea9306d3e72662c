"""`MaskingCallback`: what the stock Trainer needs to train masks well, with no Trainer subclass."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

from . import reach
from .model import MaskedModel
from .optimization import find_masked_model

logger = logging.getLogger(__name__)


def exempt_scores_from_weight_decay(optimizer: Any, model: MaskedModel) -> int:
    """Set weight decay to 0 in every optimizer group that holds mask scores; returns how many groups.

    The Trainer decays every parameter whose name lacks "bias" or "norm", scores included;
    decay would pull scores towards 0 < τ and switch weights off for no task reason. A trained
    head's weights in such a group lose their decay too (said once); `masking_optimizer` keeps
    them apart.
    """
    score_ids = {id(m.mask_scores) for m in model.masked_modules().values() if m.mask_scores is not None}
    changed = 0
    for group in optimizer.param_groups:
        has_scores = [id(p) in score_ids for p in group["params"]]
        if not any(has_scores) or group.get("weight_decay", 0.0) == 0.0:
            continue
        if not all(has_scores):
            logger.warning(
                f"An optimizer group holds mask scores and {has_scores.count(False)} trained head tensor(s) under "
                f"weight decay {group['weight_decay']}: the whole group trains without decay, since decay would "
                "switch masked weights off. Pass Trainer(optimizer_cls_and_kwargs=hf_masking.masking_optimizer("
                "args)) to decay the head's weights alone."
            )
        group["weight_decay"] = 0.0
        changed += 1
    return changed


def reach_warning(optimizer: Any, model: MaskedModel, args: Any, max_steps: int) -> str | None:
    """`reach.check` at the scores' own rate (their optimizer group's), over the Trainer's planned steps."""
    score_ids = {id(m.mask_scores) for m in model.masked_modules().values() if m.mask_scores is not None}
    rates = [
        group.get("initial_lr", group["lr"])
        for group in optimizer.param_groups
        if any(id(p) in score_ids for p in group["params"])
    ]
    if not rates:
        return None
    return reach.check(model.masking_config, args, max_steps, min(rates))


class MaskingCallback(TrainerCallback):
    """Keeps weight decay off the scores and logs mask sparsity with the Trainer's own logs.

    Sparsity goes into the same ``logs`` dict as the loss, so the console, ``log_history`` and
    every ``report_to`` integration see ``mask_sparsity`` and ``mask_sparsity/block_<i>``.
    """

    def __init__(self, log_blocks: bool = True) -> None:
        self.log_blocks = log_blocks

    def on_init_end(self, args, state, control, **kwargs):
        # Integrations (TensorBoard, W&B…) are registered before user callbacks and would log
        # before sparsity is added: move this callback to run right after the default flow.
        frame = inspect.currentframe()
        while frame is not None:
            handler = frame.f_locals.get("self")
            if isinstance(handler, CallbackHandler) and self in handler.callbacks:
                handler.callbacks.remove(self)
                first = 1 if handler.callbacks and isinstance(handler.callbacks[0], DefaultFlowCallback) else 0
                handler.callbacks.insert(first, self)
                break
            frame = frame.f_back
        del frame

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        masked = find_masked_model(model)
        if masked is None:
            raise TypeError("MaskingCallback needs the Trainer's model to be a hf_masking.MaskedModel.")
        masked._callback_attached = True
        if optimizer is not None:
            exempt_scores_from_weight_decay(optimizer, masked)
            warning = reach_warning(optimizer, masked, args, state.max_steps)
            if warning:
                logger.warning(warning)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        masked = find_masked_model(model)
        if masked is None or logs is None or "loss" not in logs:
            return
        report = masked.sparsity()
        extra = {"mask_sparsity": round(report["global"], 6)}
        if self.log_blocks:
            extra.update({f"mask_sparsity/block_{i}": round(v, 6) for i, v in report["blocks"].items()})
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)
