"""Each row of a batch with its own mask, on one resident base.

`MaskedModel.forward(..., mask_names=[...])` names one mask per example. The masked layers of the
backbone share one weight, so each computes every row from it (see `MaskedLinear`); the head's
tensors differ per mask, so each module that holds them runs once per mask in the batch, on that
mask's rows, with that mask's head values and mask.

Inside a model a layer's input can have more rows than the batch has examples: multiple choice
flattens the choices of each example into rows, and ``generate`` repeats each example for beams and
returned sequences. Both repeat an example's rows in place, so its mask is repeated the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

# The rows of the trainable mask compute with its current scores (never cached: they change).
SCORES = "scores"


class RowMasks:
    """Which mask each row uses: ``sources`` maps each name to None (no mask), `SCORES`, or
    ``{layer: FixedMask}``; `groups` gives the rows of each name for a layer's input."""

    def __init__(self, names: list[str | None], sources: dict[str | None, Any], kernel: str) -> None:
        self.names = list(names)
        self.sources = sources
        self.kernel = kernel
        self._unique = list(dict.fromkeys(self.names))
        self._ids = torch.tensor([self._unique.index(name) for name in self.names], dtype=torch.long)
        self._groups: dict[tuple[int, str], list[tuple[str | None, torch.Tensor | None]]] = {}

    def groups(self, rows: int, device: torch.device) -> list[tuple[str | None, torch.Tensor | None]]:
        """(name, row indices) per mask for an input of `rows` rows; indices are None when one mask has them all."""
        key = (rows, str(device))
        if key not in self._groups:
            examples = len(self.names)
            if rows % examples:
                raise ValueError(
                    f"A masked layer got an input of {rows} rows for {examples} mask names; mask_names needs one "
                    "name per example, and the model must keep each example's rows together."
                )
            ids = self._ids.repeat_interleave(rows // examples) if rows != examples else self._ids
            if len(self._unique) == 1:
                self._groups[key] = [(self._unique[0], None)]
            else:
                self._groups[key] = [
                    (name, torch.nonzero(ids == index).view(-1).to(device)) for index, name in enumerate(self._unique)
                ]
        return self._groups[key]


HeadState = Callable[[str | None], tuple[dict[str, torch.Tensor], dict[nn.Module, Any]]]


@contextlib.contextmanager
def rows_masked(
    backbone_layers: list[nn.Module],
    head_owners: dict[nn.Module, dict[str, str]],
    rows: RowMasks,
    head_state: HeadState,
) -> Iterator[None]:
    """Set up a forward with per-row masks, and undo it afterwards (also when it fails).

    `head_owners` maps each module holding head tensors to their names (relative to it -> in the
    model); `head_state(name)` gives a mask's head values (by name in the model) and, per head
    layer, the fixed mask to use (None: its scores; "off": unmasked).
    """
    patched: list[tuple[nn.Module, bool, Any]] = []
    try:
        for layer in backbone_layers:
            layer.rows = rows
        for owner, tensor_names in head_owners.items():
            had_own = "forward" in owner.__dict__  # e.g. an accelerate hook
            original = owner.forward
            owner.forward = _per_mask_head(owner, original, tensor_names, rows, head_state)
            patched.append((owner, had_own, original))
        yield
    finally:
        for layer in backbone_layers:
            layer.rows = None
        for owner, had_own, original in patched:
            if had_own:
                owner.forward = original
            else:
                del owner.forward


def _per_mask_head(
    owner: nn.Module, original: Callable, tensor_names: dict[str, str], rows: RowMasks, head_state: HeadState
) -> Callable:
    """`owner`'s forward run once per mask of the batch on its rows, with that mask's head."""
    tensors = dict([*owner.named_parameters(), *owner.named_buffers()])
    layers = [m for m in owner.modules() if hasattr(m, "use_fixed_mask")]

    def forward(*args: Any, **kwargs: Any) -> Any:
        x = args[0]
        saved = {name: tensors[name].detach().clone() for name in tensor_names}
        saved_layers = {layer: (layer.fixed, layer.disabled) for layer in layers}
        out = None
        try:
            for name, indices in rows.groups(x.shape[0], x.device):
                values, layer_masks = head_state(name)
                with torch.no_grad():
                    for tensor_name, full_name in tensor_names.items():
                        tensors[tensor_name].copy_(values.get(full_name, saved[tensor_name]))
                for layer in layers:
                    setting = layer_masks.get(layer)
                    layer.disabled = setting == "off"
                    layer.use_fixed_mask(None if setting in (None, "off") else setting)
                if indices is None:
                    return original(*args, **kwargs)
                part = [
                    a.index_select(0, indices) if isinstance(a, torch.Tensor) and a.shape[:1] == x.shape[:1] else a
                    for a in args
                ]
                result = original(*part, **kwargs)
                if not isinstance(result, torch.Tensor):
                    raise TypeError(f"mask_names: the head module {type(owner).__name__} returned a non-tensor.")
                if out is None:
                    out = result.new_empty((x.shape[0], *result.shape[1:]))
                out.index_copy_(0, indices, result)
            return out
        finally:
            with torch.no_grad():
                for tensor_name, value in saved.items():
                    tensors[tensor_name].copy_(value)
            for layer, (fixed, disabled) in saved_layers.items():
                layer.use_fixed_mask(fixed)
                layer.disabled = disabled

    return forward
