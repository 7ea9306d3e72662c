"""`MaskEnsemble`: several masks of one resident base voting together (paper, Table 2)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from .model import MaskedModel

Combine = Literal["logits", "probs", "labels"]
COMBINES: tuple[Combine, ...] = ("labels", "logits", "probs")


class MaskEnsemble:
    """Runs the base once per mask and combines the predictions; memory is one base plus the masks.

    ``combine``: ``"logits"`` averages logits, ``"probs"`` averages softmax probabilities, and
    ``"labels"`` is a majority vote whose output "logits" are the vote counts (ties go to the
    label with the larger summed probability).
    """

    def __init__(self, model: MaskedModel, mask_names: list[str], combine: Combine = "probs") -> None:
        if combine not in ("logits", "probs", "labels"):
            raise ValueError(f"combine={combine!r} is invalid: expected 'logits', 'probs' or 'labels'.")
        unknown = [name for name in mask_names if name not in model.mask_names]
        if unknown:
            raise KeyError(f"No mask named {unknown[0]!r}; the model has {model.mask_names}.")
        if not mask_names:
            raise ValueError("An ensemble needs at least one mask.")
        layouts = {model._task_key(name) for name in mask_names}
        if len(layouts) > 1:
            raise ValueError(
                f"An ensemble needs masks of one label set and head; {mask_names} have {len(layouts)} different heads."
            )
        self.model = model
        self.mask_names = list(mask_names)
        self.combine = combine

    @torch.no_grad()
    def __call__(self, **inputs: Any) -> SequenceClassifierOutput:
        previous = self.model.active_mask
        logits = []
        try:
            for name in self.mask_names:
                self.model.set_active_mask(name)
                logits.append(self.model(**inputs).logits.float())
        finally:
            if previous is not None:
                self.model.set_active_mask(previous)
        return SequenceClassifierOutput(logits=combine_logits(torch.stack(logits), self.combine))


def combine_logits(stacked: torch.Tensor, combine: Combine) -> torch.Tensor:
    """Combine members' logits ``(members, batch, ..., labels)`` into one prediction per row (see `MaskEnsemble`)."""
    if combine == "logits":
        return stacked.mean(0)
    if combine == "probs":
        return stacked.softmax(-1).mean(0)
    votes = torch.nn.functional.one_hot(stacked.argmax(-1), stacked.shape[-1]).sum(0).float()
    tie_break = stacked.softmax(-1).sum(0) / (stacked.shape[0] + 1)  # < 1: only breaks ties
    return votes + tie_break
