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

from .row_masks import SCORES, RowMasks
from .tasks import align_head, head_names

HeadState = Callable[[str | None], tuple[dict[str, torch.Tensor], dict[nn.Module, Any]]]


@contextlib.contextmanager
def _layers_and_heads_set(
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


@contextlib.contextmanager
def rows_masked(masked: Any, mask_names: Any, args: tuple, kwargs: dict[str, Any]) -> Iterator[nn.Module]:
    """The task model of `masked` (a MaskedModel) to call, set up so that example i computes with mask
    ``mask_names[i]``.

    Inference only. ``None`` names the base without a mask (with the active mask's head, as in
    `disable_masks`). All named masks must share one head layout: one output tensor has one shape.
    """
    if masked.training:
        raise RuntimeError("mask_names is for inference: call model.eval() first (training uses one mask).")
    names = _check_mask_names(mask_names, _batch_size(args, kwargs))
    unknown = [n for n in names if n is not None and n not in masked.mask_names]
    if unknown:
        raise KeyError(f"No mask named {unknown[0]!r}; this model has {masked.mask_names} (None: no mask).")
    task_of = {n: masked._task_key(n) for n in names if n is not None}
    keys = list(dict.fromkeys(task_of.values()))
    if len(keys) > 1:
        first, other = (next(n for n in names if n is not None and task_of[n] == k) for k in keys[:2])
        raise ValueError(
            f"mask_names mixes masks with different heads ({first!r}: {keys[0][0]}, {other!r}: {keys[1][0]} with "
            "other head shapes); one batch gives one output tensor, so batch such masks separately."
        )
    key = keys[0] if keys else masked._active_task
    if None in names and key != masked._active_task:
        raise ValueError(
            "Rows without a mask (None) use the active mask's head, but the named masks have another head: "
            "set_active_mask to one of them first."
        )
    task = masked._tasks[key]
    head = set(head_names(task))
    head_layers = [n for n in task.targets.modules if f"{n}.weight" in head]
    backbone = [n for n in task.targets.modules if n not in head_layers]
    sources: dict[str | None, Any] = {}
    for name in set(names):
        if name is None:
            sources[name] = None
        elif masked._is_trainable_mask(name):
            sources[name] = SCORES
        else:
            sources[name] = {task.model.get_submodule(m): masked._fixed[name][m] for m in backbone}
    rows = RowMasks(names, sources, masked.fixed_masks.kernel)
    layers = {task.model.get_submodule(m): m for m in head_layers}
    active_is_trainable = masked._is_trainable_mask(masked._active)

    def head_state(name: str | None) -> tuple[dict[str, torch.Tensor], dict[nn.Module, Any]]:
        if name is None:  # the active head, unmasked
            return {}, {layer: "off" for layer in layers}
        if sources[name] is SCORES:
            return ({} if active_is_trainable else masked._trainable_head or {}), {layer: None for layer in layers}
        return masked._stored[name].head, {layer: masked._fixed[name][m] for layer, m in layers.items()}

    if task.model is not masked.model:
        align_head(task.model)
    owners = _head_owners(task.model, sorted(head))
    with (
        torch.no_grad(),
        _layers_and_heads_set([task.model.get_submodule(m) for m in backbone], owners, rows, head_state),
    ):
        yield task.model


def _batch_size(args: tuple, kwargs: dict[str, Any]) -> int | None:
    """The number of examples in a forward's inputs (the first dimension of its first input tensor)."""
    for key in ("input_ids", "inputs_embeds"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key].shape[0]
    first = next((a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor) and a.dim() > 0), None)
    return None if first is None else first.shape[0]


def _check_mask_names(mask_names: Any, batch_size: int | None) -> list[str | None]:
    if isinstance(mask_names, str) or not isinstance(mask_names, (list, tuple)):
        raise TypeError(f"mask_names must be a list with one mask name (or None) per example, not {mask_names!r}.")
    bad = [n for n in mask_names if n is not None and not isinstance(n, str)]
    if bad:
        raise TypeError(f"mask_names holds {bad[0]!r}; each entry is a mask name or None.")
    if batch_size is None or len(mask_names) != batch_size:
        raise ValueError(f"mask_names has {len(mask_names)} names for a batch of {batch_size} examples; give one each.")
    return list(mask_names)


def _head_owners(model: nn.Module, head_names: list[str]) -> dict[nn.Module, dict[str, str]]:
    """The outermost modules holding the head's tensors, each with {name relative to it: name in the model}."""
    paths = sorted({name.rsplit(".", 1)[0] if "." in name else "" for name in head_names})
    if "" in paths:
        raise NotImplementedError("mask_names: this model has head tensors directly on the model, not in a module.")
    outermost = [p for p in paths if not any(p.startswith(q + ".") for q in paths if q != p)]
    owners: dict[nn.Module, dict[str, str]] = {}
    for path in outermost:
        inside = {name[len(path) + 1 :]: name for name in head_names if name.startswith(path + ".")}
        owners[model.get_submodule(path)] = inside
    return owners
