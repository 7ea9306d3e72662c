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
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .row_masks import SCORES, RowMasks
from .tasks import align_head, head_names, head_tensors


def _with_rows(rows: RowMasks):  # noqa: ANN202
    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        return args, {**kwargs, "rows": rows}

    return hook


class _PerMaskHead(nn.Module):
    """Stands in for a head module during one mixed forward: runs it once per mask on that mask's rows,
    with that mask's head tensors passed in (`torch.func.functional_call`), never written into it."""

    def __init__(self, owner: nn.Module, inside: dict[str, str], rows: RowMasks, values_of) -> None:  # noqa: ANN001
        super().__init__()
        self.owner = owner
        self.inside = inside  # tensor name relative to the owner -> name in the task model
        self.rows = rows
        self.values_of = values_of

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        x = args[0]
        out = None
        for name, indices in self.rows.groups(x.shape[0], x.device):
            values = self.values_of(name)
            tensors = {relative: values[full] for relative, full in self.inside.items()}
            if indices is None:
                return torch.func.functional_call(self.owner, tensors, args, kwargs)
            part = tuple(
                a.index_select(0, indices) if isinstance(a, torch.Tensor) and a.shape[:1] == x.shape[:1] else a
                for a in args
            )
            result = torch.func.functional_call(self.owner, tensors, part, kwargs)
            if not isinstance(result, torch.Tensor):
                raise TypeError(f"mask_names: the head module {type(self.owner).__name__} returned a non-tensor.")
            if out is None:
                out = result.new_empty((x.shape[0], *result.shape[1:]))
            out.index_copy_(0, indices, result)
        return out


@contextlib.contextmanager
def _routed(
    model: nn.Module,
    backbone_layers: list[nn.Module],
    head_layers: list[nn.Module],
    head_owners: dict[str, dict[str, str]],
    rows: RowMasks,
    values_of,  # noqa: ANN001
) -> Iterator[None]:
    """For one forward: each backbone layer gets the rows' masks through a forward pre-hook; each head module
    is stood in for by a `_PerMaskHead`, whose masked layers compute with the weights it passes (already
    masked). Hooks and stand-ins are removed afterwards, also when the forward fails."""
    handles = [layer.register_forward_pre_hook(_with_rows(rows), with_kwargs=True) for layer in backbone_layers]
    unmasked = RowMasks([None], {None: None}, rows.kernel)
    handles += [layer.register_forward_pre_hook(_with_rows(unmasked), with_kwargs=True) for layer in head_layers]
    swapped: dict[str, nn.Module] = {}
    try:
        for path, inside in head_owners.items():
            owner = model.get_submodule(path)
            model.set_submodule(path, _PerMaskHead(owner, inside, rows, values_of))
            swapped[path] = owner
        yield
    finally:
        for path, owner in swapped.items():
            model.set_submodule(path, owner)
        for handle in handles:
            handle.remove()


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
    active_is_trainable = masked._is_trainable_mask(masked._active)
    live = head_tensors(task)  # the active mask's head values, where they are
    layer_of = {name: task.model.get_submodule(name) for name in head_layers}  # before the stand-ins go in
    cache: dict[str | None, dict[str, torch.Tensor]] = {}

    def values_of(name: str | None) -> dict[str, torch.Tensor]:
        """The head tensors rows named `name` compute with, each masked head layer's weight times its mask."""
        if name not in cache:
            if name is None:  # the active head, unmasked
                own: dict[str, torch.Tensor] = {}
            elif sources[name] is SCORES:
                own = {} if active_is_trainable else masked._trainable_head or {}
            else:
                own = masked._stored[name].head
            values = {full: own.get(full, tensor).to(tensor.device, tensor.dtype) for full, tensor in live.items()}
            for layer_name in head_layers:
                layer = layer_of[layer_name]
                weight = values[f"{layer_name}.weight"]
                if name is None or (sources[name] is SCORES and layer.mask_scores is None):
                    continue
                if sources[name] is SCORES:
                    mask = layer.binarize(layer.mask_scores)
                else:
                    mask = masked._fixed[name][layer_name].decoded(weight.device).to_bool(weight.shape)
                values[f"{layer_name}.weight"] = weight * mask
            cache[name] = values
        return cache[name]

    if task.model is not masked.model:
        align_head(task.model)
    owners = _head_owners(task.model, sorted(head))
    backbone_layers = [task.model.get_submodule(m) for m in backbone]
    layers = list(layer_of.values())
    with torch.no_grad(), _routed(task.model, backbone_layers, layers, owners, rows, values_of):
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
    if batch_size is None:
        raise ValueError(
            "mask_names names a mask per example, but this call has no inputs to count examples in: pass input_ids "
            "(or inputs_embeds) with it."
        )
    if len(mask_names) != batch_size:
        raise ValueError(f"mask_names has {len(mask_names)} names for a batch of {batch_size} examples; give one each.")
    return list(mask_names)


def _head_owners(model: nn.Module, names: list[str]) -> dict[str, dict[str, str]]:
    """The outermost modules holding the head's tensors, by path, each with {name relative to it: name in the model}."""
    paths = sorted({name.rsplit(".", 1)[0] if "." in name else "" for name in names})
    if "" in paths:
        raise NotImplementedError("mask_names: this model has head tensors directly on the model, not in a module.")
    outermost = [p for p in paths if not any(p.startswith(q + ".") for q in paths if q != p)]
    return {path: {name[len(path) + 1 :]: name for name in names if name.startswith(path + ".")} for path in outermost}
