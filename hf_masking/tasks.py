"""Which head each mask computes with: task models around the one shared backbone.

The wrapped model is the first task; a mask with another head (another label set, or token
classification next to sequence classification) gets a task model of its own whose backbone is
the same module, so only its head costs memory. Masks whose heads have one layout share a task.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import repo as repo_format
from .binarizer import make_binarizer
from .errors import BaseModelMismatchError, MaskRepoError
from .fingerprint import BaseTensors, check_fingerprint, non_persistent_buffers
from .layers import MaskedLinear
from .repo import StoredMask
from .targets import ResolvedTargets, backbone_prefix, is_within, resolve_targets

# The name of the trainable mask (computed from its scores), as PEFT names its first adapter.
TRAINABLE_MASK = "default"


@dataclass
class Task:
    """A task model around the one shared backbone: its head, its masked layers, and what it computes with."""

    model: nn.Module
    targets: ResolvedTargets
    modules_to_save: list[str] | None
    natural: set[str] | None = None  # tensor names the head class has by itself (None: all of them)
    base: BaseTensors | None = None


def layout(head_class: str, head: dict[str, torch.Tensor]) -> tuple:
    """What decides whether two masks can share a task model: the head class and its tensors' shapes."""
    return (head_class, tuple(sorted((name, tuple(t.shape)) for name, t in head.items())))


def head_tensors(task: Task) -> dict[str, torch.Tensor]:
    own = dict([*task.model.named_parameters(), *task.model.named_buffers()])
    return {name: own[name] for name in head_names(task)}


def head_names(task: Task) -> list[str]:
    """Tensors (names in the task model) the repo carries beside the mask: the head, and `modules_to_save`."""
    model = task.model
    prefix = backbone_prefix(model)
    backbone_ids = {id(t) for t in getattr(model, prefix).parameters()} if prefix else set()
    transient = non_persistent_buffers(model)
    names = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name.endswith("mask_scores") or name in transient:
            continue
        if is_within(name, task.modules_to_save or []) or (
            name.split(".", 1)[0] in task.targets.head_prefixes and id(tensor) not in backbone_ids
        ):
            names.append(name)
    return names


def task_key(stored: StoredMask, tasks: dict[tuple, Task], primary_key: tuple) -> tuple | None:
    """The task (head layout) a stored mask runs in, if one of `tasks` fits it; None if it needs a new one."""
    key = layout(stored.record["head_class"], stored.head)
    if key in tasks:
        return key
    if stored.record["head_class"] == primary_key[0]:
        shapes = dict(primary_key[1])
        if all(shapes.get(n, shape) == shape for n, shape in key[1]):
            return primary_key  # the wrapped model's own head: the checks name anything amiss
    return None


def build_task(stored: StoredMask, primary: nn.Module) -> Task:
    """A task model of the stored mask's head class around `primary`'s backbone: only its head costs memory."""
    record = stored.record
    head_cls = head_class_for(record["head_class"])
    prefix = backbone_prefix(primary)
    backbone = getattr(primary, prefix) if prefix else None
    config = copy.deepcopy(primary.config)
    config.problem_type = None
    for field, value in label_fields(record).items():  # num_labels first: setting it resets id2label
        setattr(config, field, value)
    try:
        with torch.device("meta"):
            task_model = head_cls(config)
    except Exception as err:  # a head class whose config this base's config cannot be
        raise BaseModelMismatchError(
            f"The mask was trained on a {record['head_class']}, which cannot be built on this "
            f"{type(primary).__name__}'s base ({type(err).__name__}: {err})."
        ) from err
    if (
        backbone is None
        or backbone_prefix(task_model) != prefix
        or type(getattr(task_model, prefix)) is not type(backbone)
    ):
        raise BaseModelMismatchError(
            f"The mask was trained on a {record['head_class']} ({record.get('model_type')}); this model is a "
            f"{type(primary).__name__} ({getattr(primary.config, 'model_type', None)}), with another backbone."
        )
    natural = {n for n, _ in task_model.named_parameters()} | {n for n, _ in task_model.named_buffers()}
    setattr(task_model, prefix, backbone)
    present = {n for n, _ in task_model.named_parameters()} | {n for n, _ in task_model.named_buffers()}
    if natural - present:
        raise BaseModelMismatchError(
            f"A {record['head_class']} needs {sorted(natural - present)[0]}, which this base lacks: load the mask "
            "on its own base model."
        )
    reference = next(backbone.parameters())
    for child_name, child in task_model.named_children():
        if child_name != prefix:  # the head: real (uninitialised) memory now, its values come with the mask
            child.to_empty(device=reference.device)
            if reference.is_floating_point():
                child.to(dtype=reference.dtype)
    task_model.eval()
    targets = resolve_targets(task_model, stored.config, record["masked_modules"])
    binarize = make_binarizer("threshold", 0.0, 0.5)  # unused: loaded masks are fixed
    for module_name in targets.modules:
        module = task_model.get_submodule(module_name)
        if not isinstance(module, MaskedLinear):  # the head's layers, or backbone layers masked only here
            task_model.set_submodule(module_name, MaskedLinear(module, binarize, None))
    return Task(task_model, targets, stored.config.modules_to_save, natural)


def check_compatible(stored: StoredMask, task: Task, base: BaseTensors) -> None:
    """Refuse a stored mask that does not fit `task` (whose base tensors are `base`), naming the first mismatch."""
    record = stored.record
    head_class = type(task.model).__name__
    if record["head_class"] != head_class:
        raise BaseModelMismatchError(
            f"The mask was trained on a {record['head_class']} ({record.get('model_type')}); this model is a "
            f"{head_class} ({getattr(task.model.config, 'model_type', None)})."
        )
    difference = sorted(set(record["masked_modules"]) ^ set(task.targets.modules))
    if difference:
        raise BaseModelMismatchError(
            f"The mask covers other layers than this model masks (first difference: {difference[0]}); "
            "the base model has another number of blocks or another masking config."
        )
    check_fingerprint(base, record["base_fingerprint"])
    own = head_tensors(task)
    extra = [name for name in stored.head if name not in own]
    if extra:
        raise BaseModelMismatchError(f"The mask's head tensor {extra[0]} is not a head tensor of this {head_class}.")
    missing = [name for name in own if name not in stored.head]
    if missing:
        raise MaskRepoError(
            f"The mask has no head tensor {missing[0]!r}, which this {head_class} needs (it is not in the base "
            "checkpoint, so it would stay at a random initialisation)."
        )
    for tensor_name, target in own.items():  # in model order, so the first difference named is stable
        value = stored.head[tensor_name]
        if tuple(target.shape) != tuple(value.shape):
            raise BaseModelMismatchError(
                f"The mask's head tensor {tensor_name} has shape {list(value.shape)} but this model's has "
                f"{list(target.shape)}."
            )
        if target.is_floating_point() != value.is_floating_point() or (
            not target.is_floating_point() and target.dtype != value.dtype
        ):
            raise MaskRepoError(
                f"The mask's head tensor {tensor_name} is {value.dtype}; this model's is {target.dtype}."
            )
    modules = {name: task.model.get_submodule(name) for name in task.targets.modules}
    for name, encoded in stored.masks.items():
        if tuple(encoded.shape) != tuple(modules[name].weight.shape):
            raise BaseModelMismatchError(
                f"The mask of {name} has shape {list(encoded.shape)}, but the weight it masks in this model has "
                f"shape {list(modules[name].weight.shape)}."
            )


def label_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A record's validated label fields (id2label, label2id, num_labels, problem_type) as config values."""
    labels = dict(record["label_config"])
    if "id2label" in labels:
        labels["id2label"] = {int(k): v for k, v in labels["id2label"].items()}
    order = ("num_labels", "id2label", "label2id", "problem_type")
    return {field: labels[field] for field in order if field in labels}


def align_head(model: nn.Module) -> None:
    """Move a task model's head to its backbone's device and dtype (the model may have moved since)."""
    prefix = backbone_prefix(model)
    reference = next(getattr(model, prefix).parameters())
    for child_name, child in model.named_children():
        if child_name == prefix:
            continue
        for tensor in child.parameters():
            if tensor.device != reference.device or tensor.dtype != reference.dtype:
                child.to(device=reference.device, dtype=reference.dtype)
                break


def head_class_for(name: str) -> type:
    """The concrete transformers model class a repo names: never an Auto class, never remote code."""
    import transformers
    from transformers import PreTrainedModel

    cls = None
    if not name.startswith("Auto"):
        try:
            cls = getattr(transformers, name, None)
        except Exception:  # a lazy import of a backend that is not installed
            cls = None
    if not isinstance(cls, type) or not issubclass(cls, PreTrainedModel) or cls is PreTrainedModel:
        raise MaskRepoError(
            f"{repo_format.CONFIG_NAME}: field 'head_class' is {name!r}, which is not a concrete model class of "
            f"transformers {transformers.__version__}."
        )
    return cls
