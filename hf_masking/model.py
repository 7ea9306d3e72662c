"""`MaskedModel`: wraps a pretrained model, freezes it, and learns binary masks on its linear layers."""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from . import atomic_save, codec, hub, mixed_batch, model_card, sharding
from . import repo as repo_format
from .analysis import sparsity_report
from .binarizer import binarizer_for, init_scores, make_binarizer, scores_for_mask  # noqa: F401  (public here too)
from .config import MaskingConfig
from .errors import BaseModelMismatchError, MaskRepoError
from .fingerprint import BaseTensors, check_fingerprint, make_fingerprint, non_persistent_buffers, tensor_record
from .fixed_mask import FixedMask, FixedMaskCache
from .layers import MaskedLinear
from .repo import StoredMask
from .targets import (
    ResolvedTargets,
    backbone_prefix,
    check_modules_to_save,
    is_within,
    resolve_targets,
    trained_modules,
)

TRAINABLE_MASK = "default"


@dataclass
class _Task:
    """A task model around the one shared backbone: its head, its masked layers, and what it computes with.

    The wrapped model is the first task; a mask with another head (another label set, or token
    classification next to sequence classification) gets a task model of its own whose backbone is
    the same module, so only its head costs memory.
    """

    model: nn.Module
    targets: ResolvedTargets
    modules_to_save: list[str] | None
    natural: set[str] | None = None  # tensor names the head class has by itself (None: all of them)
    base: BaseTensors | None = None


_SUBCLASSES: dict[type, type] = {}


def _masked_class_for(model_cls: type) -> type:
    """A MaskedModel subclass whose ``forward`` carries the wrapped class's signature.

    The stock Trainer reads label names and the dataset columns to keep from
    ``inspect.signature(type(model).forward)``; a wrapper with ``forward(*args, **kwargs)``
    would silently get batches without labels or without inputs.
    """
    if model_cls not in _SUBCLASSES:

        def forward(self, *args: Any, mask_names: list[str | None] | None = None, **kwargs: Any) -> Any:
            if mask_names is not None:
                return self._forward_rows(mask_names, args, kwargs)
            if self.training and torch.is_grad_enabled():
                self._warn_if_trained_without_callback()
            return self.model(*args, **kwargs)

        forward.__signature__ = _with_mask_names(inspect.signature(model_cls.forward))  # type: ignore[attr-defined]
        forward.__doc__ = (
            f"Calls the wrapped {model_cls.__name__} with masked linear layers; `mask_names` (one per example) "
            "computes each example with its own mask."
        )
        name = f"Masked{model_cls.__name__}"
        _SUBCLASSES[model_cls] = type(name, (MaskedModel,), {"forward": forward, "__module__": __name__})
    return _SUBCLASSES[model_cls]


def _with_mask_names(signature: inspect.Signature) -> inspect.Signature:
    """The wrapped forward's signature plus the keyword-only ``mask_names``."""
    parameters = [p for p in signature.parameters.values() if p.name != "mask_names"]
    position = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters))
    extra = inspect.Parameter("mask_names", inspect.Parameter.KEYWORD_ONLY, default=None)
    return signature.replace(parameters=[*parameters[:position], extra, *parameters[position:]])


class MaskedModel(nn.Module):
    """A pretrained model whose selected linear layers compute with W ⊙ 1[S ≥ τ].

    Every base parameter is frozen; only the fp32 mask scores train. Calls and attribute
    access go through to the wrapped model, so the stock ``transformers.Trainer`` treats it
    like the model it wraps.
    """

    def __new__(cls, model: nn.Module | None = None, *args: Any, **kwargs: Any) -> MaskedModel:
        if cls is MaskedModel and model is not None:
            cls = _masked_class_for(type(model))
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        config: MaskingConfig | None = None,
        trainable: bool = True,
        *,
        masked_modules: list[str] | None = None,
    ) -> None:
        """Wrap `model` (frozen from now on) and mask the layers `config` selects.

        `masked_modules` names the layers exactly instead (a loaded repo's list, which is
        authoritative: its patterns are never matched again).
        """
        if isinstance(model, MaskedModel) or any(isinstance(m, MaskedLinear) for m in model.modules()):
            raise ValueError("This model is already masked: wrap the original model, not a MaskedModel.")
        if config is not None and not isinstance(config, MaskingConfig):
            raise TypeError(f"config must be a MaskingConfig, not {type(config).__name__}.")
        super().__init__()
        config = config or MaskingConfig()
        check_modules_to_save(model, config)
        targets = resolve_targets(model, config, masked_modules)
        self.model = model
        self.masking_config = config
        for param in model.parameters():
            param.requires_grad_(False)
        # The head when it trains, and modules_to_save: trained in full beside the scores (PEFT's meaning).
        self.trained_modules = trained_modules(model, config)
        if trainable:
            for name, param in model.named_parameters():
                if is_within(name, self.trained_modules):
                    param.requires_grad_(True)
        binarize = binarizer_for(config)
        for name in targets.modules:
            original = model.get_submodule(name)
            scores = init_scores(original.weight.shape, name, config).to(original.weight.device) if trainable else None
            model.set_submodule(name, MaskedLinear(original, binarize, scores))
        primary = _Task(model, targets, config.modules_to_save)
        self._primary = _layout(type(model).__name__, self._head_tensors(primary))
        self._tasks: dict[tuple, _Task] = {self._primary: primary}
        self._active_task = self._primary
        self._digests: dict = {}  # base tensor digests, shared by every task: the backbone is one
        # Named masks: the trainable one (scores) and any number loaded for inference.
        self._stored: dict[str, StoredMask] = {}
        self._mask_task: dict[str, tuple] = {}
        self._fixed: dict[str, dict[str, FixedMask]] = {}  # per loaded mask: its share of each masked layer
        # Decoded layer masks, shared by all loaded masks; `fixed_masks.max_bytes` bounds it.
        self.fixed_masks = FixedMaskCache()
        self._trainable = trainable
        self._active = TRAINABLE_MASK if trainable else None
        self._trainable_head: dict[str, torch.Tensor] | None = None
        self._location: tuple[str | None, str | None] | None = None  # the base's id/path and commit
        self._callback_attached = False  # set by MaskingCallback when a Trainer trains this model
        self._warned_no_callback = False

    # ----- passthrough -------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            if name in PEFT_EQUIVALENTS:  # transformers' own adapter methods would answer otherwise
                raise AttributeError(
                    f"{type(self).__name__} has no {name!r} (a PEFT adapter method); with masks use "
                    f"{PEFT_EQUIVALENTS[name]}."
                ) from None
            return getattr(self.model, name)

    def forward(self, *args: Any, mask_names: list[str | None] | None = None, **kwargs: Any) -> Any:
        if mask_names is not None:
            return self._forward_rows(mask_names, args, kwargs)
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, mask_names: list[str | None] | None = None, **kwargs: Any) -> Any:
        """The wrapped model's ``generate``; with `mask_names` (one per prompt) each sequence keeps its own mask."""
        if mask_names is None:
            return self.model.generate(*args, **kwargs)
        with self._rows_masked(mask_names, args, kwargs) as model:
            return model.generate(*args, **kwargs)

    def _warn_if_trained_without_callback(self) -> None:
        if self.training and self._trainable and not self._callback_attached and not self._warned_no_callback:
            self._warned_no_callback = True
            warnings.warn(
                "Training a MaskedModel without MaskingCallback: with transformers.Trainer pass "
                "callbacks=[MaskingCallback()], or weight decay pulls the mask scores below the threshold and no "
                "sparsity is logged. In your own loop, give the scores weight_decay=0.",
                UserWarning,
                stacklevel=3,
            )

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001
        """Moves and casts (``.to``, ``.half()``) also drop the decoded masks, made for the old device and dtype."""
        result = super()._apply(fn, recurse)
        self.fixed_masks.clear()
        return result

    def get_base_model(self) -> nn.Module:
        """The wrapped transformers model (its masked layers included)."""
        return self.model

    @property
    def accepts_loss_kwargs(self) -> bool:
        """Whether the wrapped model's loss uses ``num_items_in_batch``.

        The Trainer multiplies the loss by the world size when this is true, expecting a loss
        summed over the global batch. Classification heads (BERT & co.) return a mean, so
        telling the Trainer "true" there doubles the loss and gradients under DDP.
        """
        explicit = getattr(type(self.model), "accepts_loss_kwargs", None)
        if explicit is not None:
            return bool(explicit)
        return type(self.model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())

    # ----- the masked layers -------------------------------------------------------------
    @property
    def targets(self) -> ResolvedTargets:
        """The masked modules (and block layout) of the active task model."""
        return self._tasks[self._active_task].targets

    def masked_modules(self) -> dict[str, MaskedLinear]:
        """Masked layers by their name in the wrapped model."""
        return {name: self.model.get_submodule(name) for name in self.targets.modules}

    def masks(self) -> dict[str, torch.Tensor]:
        """The current boolean masks by module name."""
        return {name: module.mask() for name, module in self.masked_modules().items()}

    def sparsity(self, mask_name: str | None = None) -> dict[str, Any]:
        """Fraction of masked-out weights: ``{"global": x, "blocks": {i: x}, "modules": {name: x}}``.

        Of the active mask, or of the stored mask `mask_name`.
        """
        if mask_name is None or mask_name == self._active:
            counts = {name: (int(m.numel() - m.count_nonzero()), m.numel()) for name, m in self.masks().items()}
        else:
            counts = {name: codec.masked_out(encoded) for name, encoded in self._stored_mask(mask_name).masks.items()}
        return sparsity_report(counts, self.targets.block_of)

    def num_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts, scores included in both."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.num_trainable_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    # ----- what a checkpoint must hold ---------------------------------------------------
    def head_tensor_names(self) -> list[str]:
        """Tensors (names in the wrapped model) that the repo carries beside the mask.

        Every parameter and buffer outside the pretrained backbone that is not tied to it (the task
        head, whose values the base checkpoint lacks), and those of ``MaskingConfig.modules_to_save``
        (trained in full).
        """
        return self._head_names(self._tasks[self._active_task])

    @staticmethod
    def _head_names(task: _Task) -> list[str]:
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

    def _masking_state_keys(self) -> list[str]:
        scores = [f"{name}.mask_scores" for name, m in self.masked_modules().items() if m.mask_scores is not None]
        return [f"model.{key}" for key in scores + self.head_tensor_names()]

    def state_dict(self, *, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> dict:
        """Only what masking adds to the base: the scores and the task head.

        The frozen base weights are not repeated, so Trainer checkpoints stay small; the full
        base state is ``get_base_model().state_dict()``.
        """
        if self._active_task != self._primary:
            raise RuntimeError(
                f"The active mask {self._active!r} has another head than the wrapped model; state_dict() describes "
                "the wrapped model's own mask: set_active_mask to one of its masks first."
            )
        full = super().state_dict(prefix=prefix, keep_vars=keep_vars)
        out = destination if destination is not None else OrderedDict()
        for key in self._masking_state_keys():
            out[prefix + key] = full[prefix + key]
        # What the mask is on (config, base, head class, fingerprint): a Trainer's model.safetensors
        # of this state dict is then a mask that from_pretrained and --mask_from load.
        out[prefix + repo_format.RECORD_KEY] = repo_format.record_tensor(self._record())
        return out

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> _IncompatibleKeys:
        """Load scores and head; base weights missing from ``state_dict`` are expected, not an error."""
        state_dict = {k: v for k, v in state_dict.items() if k != repo_format.RECORD_KEY}
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        expected = set(self._masking_state_keys())
        missing = [k for k in result.missing_keys if k in expected]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"Error loading a masking state dict: missing keys {missing}, unexpected keys {result.unexpected_keys}."
            )
        return _IncompatibleKeys(missing, result.unexpected_keys)

    # ----- leaving masking ---------------------------------------------------------------
    def merge(self) -> nn.Module:
        """An ordinary transformers model with W ⊙ M baked into the masked weights, independent of this one.

        Masked layers become plain ``nn.Linear``/``Conv1D`` modules with new merged weights and the
        head is copied, so a later `set_active_mask` or training step here does not change the
        merged model. The frozen base tensors that nothing here ever writes (embeddings, LayerNorm,
        biases, unmasked layers) are shared with it rather than copied, to save memory.
        """
        head = set(self.head_tensor_names())
        memo: dict[int, Any] = {}
        for name, tensor in [*self.model.named_parameters(), *self.model.named_buffers()]:
            if name not in head and not name.endswith("mask_scores"):
                memo[id(tensor)] = tensor
        for module in self.masked_modules().values():
            layer = module.merged()
            memo[id(module)] = layer
            memo[id(module.weight)] = layer.weight  # a weight tied elsewhere follows the merged one
            if module.bias is not None:
                memo[id(module.bias)] = layer.bias
        for module in self.model.modules():  # layers only another task's masks use: back to plain ones
            if isinstance(module, MaskedLinear) and id(module) not in memo:
                memo[id(module)] = module.original()
        return copy.deepcopy(self.model, memo)

    def merge_and_unload(self) -> nn.Module:
        """PEFT's name for `merge`: the plain transformers model with the active mask baked in."""
        return self.merge()

    @contextlib.contextmanager
    def disable_masks(self) -> Iterator[MaskedModel]:
        """Compute with the unmasked base inside the block, like PEFT's ``disable_adapter()``.

        The active mask (and the head it came with) is back afterwards, exactly as before.
        """
        modules = self.masked_modules()
        for module in modules.values():
            module.disabled = True
        try:
            yield self
        finally:
            for module in modules.values():
                module.disabled = False

    def unload(self) -> nn.Module:
        """Put the original linear layers back and return the unmasked base model (scores dropped)."""
        for name, layer in [(n, m) for n, m in self.model.named_modules() if isinstance(m, MaskedLinear)]:
            self.model.set_submodule(name, layer.original())
        return self.model

    # ----- named masks -------------------------------------------------------------------
    @property
    def active_mask(self) -> str | None:
        """Name of the mask the model computes with (``"default"`` is the trainable one)."""
        return self._active

    @property
    def mask_names(self) -> list[str]:
        """Every mask this model can switch to."""
        return ([TRAINABLE_MASK] if self._trainable else []) + list(self._stored)

    def _stored_mask(self, name: str) -> StoredMask:
        if name not in self._stored:
            raise KeyError(f"No mask named {name!r}; this model has {self.mask_names}.")
        return self._stored[name]

    def load_mask(
        self,
        repo_or_path: str | os.PathLike | StoredMask,
        name: str,
        revision: str | None = None,
        token: str | bool | None = None,
    ) -> None:
        """Load another mask of the same base, kept compressed until `set_active_mask(name)`.

        A mask may carry another head (another label set, or another task type of the same
        backbone, e.g. token classification next to sequence classification): it then gets a task
        model of its own around the same resident backbone. Refused, with the first mismatch
        named, when the mask was trained on another base.
        """
        if name in self.mask_names:
            raise ValueError(f"A mask named {name!r} is already loaded; delete_mask({name!r}) first.")
        if isinstance(repo_or_path, StoredMask):
            stored = repo_or_path
        else:
            stored = read_mask_repo(repo_or_path, revision, token)
        key = self._task_for(stored)
        try:
            self._check_compatible(stored, self._tasks[key])
        except BaseException:
            self._drop_unused_tasks()
            raise
        self._stored[name] = stored
        self._mask_task[name] = key
        self._fixed[name] = {
            module_name: FixedMask(name, module_name, encoded, self.fixed_masks)
            for module_name, encoded in stored.masks.items()
        }

    def _task_for(self, stored: StoredMask) -> tuple:
        """The task (head layout) a stored mask runs in, building a task model around the backbone if new."""
        key = _layout(stored.record["head_class"], stored.head)
        if key in self._tasks:
            return key
        primary = self._tasks[self._primary].model
        record = stored.record
        if record["head_class"] == type(primary).__name__:
            shapes = dict(self._primary[1])
            if all(shapes.get(n, shape) == shape for n, shape in key[1]):
                return self._primary  # the wrapped model's own head: the checks name anything amiss
        head_cls = head_class_for(record["head_class"])
        prefix = backbone_prefix(primary)
        backbone = getattr(primary, prefix) if prefix else None
        config = copy.deepcopy(primary.config)
        config.problem_type = None
        for field, value in _label_fields(record).items():  # num_labels first: setting it resets id2label
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
        self._tasks[key] = _Task(task_model, targets, stored.config.modules_to_save, natural)
        return key

    def _drop_unused_tasks(self) -> None:
        used = {self._primary, self._active_task, *self._mask_task.values()}
        for key in [k for k in self._tasks if k not in used]:
            del self._tasks[key]

    def _check_compatible(self, stored: StoredMask, task: _Task) -> None:
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
        check_fingerprint(self._base_tensors(task), record["base_fingerprint"])
        own = self._head_tensors(task)
        extra = [name for name in stored.head if name not in own]
        if extra:
            raise BaseModelMismatchError(
                f"The mask's head tensor {extra[0]} is not a head tensor of this {head_class}."
            )
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

    def set_active_mask(self, name: str) -> None:
        """Compute with mask `name` (and its head) from now on.

        No weight is touched: the base stays as loaded and the mask is applied per call, so a switch
        costs copying the head. All or nothing: if anything fails part-way, the model is left
        exactly as it was.
        """
        if name == self._active:
            return
        trainable = self._is_trainable_mask(name)
        stored = None if trainable else self._stored_mask(name)
        current = self._tasks[self._active_task]
        target_key = self._task_key(name)
        target = self._tasks[target_key]
        own = self._head_tensors(current)
        head_before = {n: t.detach().clone() for n, t in own.items()}
        fixed = {} if trainable else self._fixed[name]
        # The target's layers get its mask; the current mask's other layers (it may cover other blocks) none.
        settings = {current.model.get_submodule(n): None for n in current.targets.modules}
        settings.update({target.model.get_submodule(n): fixed.get(n) for n in target.targets.modules})
        fixed_before = {module: module.fixed for module in settings}
        try:
            if target is not current:
                _align_head(target.model)
            new_head = (self._trainable_head or {}) if trainable else stored.head
            target_head = self._head_tensors(target)
            with torch.no_grad():
                for tensor_name, value in new_head.items():
                    target_head[tensor_name].copy_(value)
            for module, setting in settings.items():
                module.use_fixed_mask(setting)
        except BaseException:
            for module, before in fixed_before.items():
                module.fixed = before
            with torch.no_grad():
                for tensor_name, value in head_before.items():
                    own[tensor_name].copy_(value)
            raise
        self.model = target.model
        if self._is_trainable_mask(self._active):
            self._trainable_head = head_before
        self._active = name
        self._active_task = target_key

    def delete_mask(self, name: str) -> None:
        """Forget a loaded mask (not the active one), and its head's task model if no other mask uses it."""
        if name == self._active:
            raise ValueError(f"Mask {name!r} is active; switch to another with set_active_mask first.")
        if self._is_trainable_mask(name):
            raise ValueError("The trainable mask cannot be deleted.")
        self._stored_mask(name)  # a clear KeyError for unknown names
        del self._stored[name]
        del self._mask_task[name]
        del self._fixed[name]
        self.fixed_masks.drop(name)
        self._drop_unused_tasks()

    # ----- each row with its own mask ----------------------------------------------------
    def group_mask_names(self, mask_names: list[str | None]) -> list[list[int]]:
        """Indices of `mask_names` grouped so that each group can be one mixed batch (masks of one head layout).

        A server collecting requests for many tasks runs one forward per group; ``None`` (no mask) goes
        with the active mask's head.
        """
        groups: dict[tuple, list[int]] = {}
        for index, name in enumerate(mask_names):
            groups.setdefault(self._task_key(name), []).append(index)
        return list(groups.values())

    def mask_labels(self, name: str | None = None) -> list[str]:
        """The label names of mask `name`'s head (the active mask's by default), by label id.

        Masks sharing one head layout may name their labels differently; ``LABEL_i`` where none is given.
        """
        name = name or self._active
        if self._is_trainable_mask(name):
            config = self._tasks[self._primary].model.config
            id2label = {str(k): str(v) for k, v in (config.id2label or {}).items()}
            count = int(config.num_labels)
        else:
            labels = self._stored_mask(name).record["label_config"]
            id2label, count = labels.get("id2label") or {}, labels["num_labels"]
        return [id2label.get(str(i), f"LABEL_{i}") for i in range(count)]

    def _is_trainable_mask(self, name: str | None) -> bool:
        """Whether `name` is the trainable mask (computed from its scores), not a loaded one."""
        return name == TRAINABLE_MASK and self._trainable

    def _task_key(self, name: str | None) -> tuple:
        """The task (head layout) mask `name` runs in; None (no mask) runs in the active one."""
        if name is None:
            return self._active_task
        if self._is_trainable_mask(name):
            return self._primary
        self._stored_mask(name)  # a clear KeyError for unknown names
        return self._mask_task[name]

    def _forward_rows(self, mask_names: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        with self._rows_masked(mask_names, args, kwargs) as model:
            return model(*args, **kwargs)

    @contextlib.contextmanager
    def _rows_masked(self, mask_names: Any, args: tuple, kwargs: dict[str, Any]) -> Iterator[nn.Module]:
        """The task model to call, set up so that example i computes with mask ``mask_names[i]``.

        Inference only. ``None`` names the base without a mask (with the active mask's head, as in
        `disable_masks`). All named masks must share one head layout: one output tensor has one shape.
        """
        if self.training:
            raise RuntimeError("mask_names is for inference: call model.eval() first (training uses one mask).")
        names = _check_mask_names(mask_names, _batch_size(args, kwargs))
        unknown = [n for n in names if n is not None and n not in self.mask_names]
        if unknown:
            raise KeyError(f"No mask named {unknown[0]!r}; this model has {self.mask_names} (None: no mask).")
        task_of = {n: self._task_key(n) for n in names if n is not None}
        keys = list(dict.fromkeys(task_of.values()))
        if len(keys) > 1:
            first, other = (next(n for n in names if n is not None and task_of[n] == k) for k in keys[:2])
            raise ValueError(
                f"mask_names mixes masks with different heads ({first!r}: {keys[0][0]}, {other!r}: {keys[1][0]} with "
                "other head shapes); one batch gives one output tensor, so batch such masks separately."
            )
        key = keys[0] if keys else self._active_task
        if None in names and key != self._active_task:
            raise ValueError(
                "Rows without a mask (None) use the active mask's head, but the named masks have another head: "
                "set_active_mask to one of them first."
            )
        task = self._tasks[key]
        head = set(self._head_names(task))
        head_layers = [n for n in task.targets.modules if f"{n}.weight" in head]
        backbone = [n for n in task.targets.modules if n not in head_layers]
        sources: dict[str | None, Any] = {}
        for name in set(names):
            if name is None:
                sources[name] = None
            elif self._is_trainable_mask(name):
                sources[name] = mixed_batch.SCORES
            else:
                sources[name] = {task.model.get_submodule(m): self._fixed[name][m] for m in backbone}
        rows = mixed_batch.RowMasks(names, sources, self.fixed_masks.kernel)
        layers = {task.model.get_submodule(m): m for m in head_layers}
        active_is_trainable = self._is_trainable_mask(self._active)

        def head_state(name: str | None) -> tuple[dict[str, torch.Tensor], dict[nn.Module, Any]]:
            if name is None:  # the active head, unmasked
                return {}, {layer: "off" for layer in layers}
            if sources[name] is mixed_batch.SCORES:
                return ({} if active_is_trainable else self._trainable_head or {}), {layer: None for layer in layers}
            return self._stored[name].head, {layer: self._fixed[name][m] for layer, m in layers.items()}

        if task.model is not self.model:
            _align_head(task.model)
        owners = _head_owners(task.model, sorted(head))
        with (
            torch.no_grad(),
            mixed_batch.rows_masked([task.model.get_submodule(m) for m in backbone], owners, rows, head_state),
        ):
            yield task.model

    def _head_tensors(self, task: _Task | None = None) -> dict[str, torch.Tensor]:
        task = task or self._tasks[self._active_task]
        own = dict([*task.model.named_parameters(), *task.model.named_buffers()])
        return {name: own[name] for name in self._head_names(task)}

    # ----- the tiny repo -----------------------------------------------------------------
    @contextlib.contextmanager
    def _gathered(self) -> Iterator[None]:
        """Whole tensors of an FSDP2-sharded model for the duration (a collective: every rank enters)."""
        if not sharding.is_sharded(self):
            yield
            return
        for task in self._tasks.values():  # views of the sharded tensors would outlive them: rebuild inside
            task.base = None
        try:
            with sharding.gathered(self):
                yield
        finally:
            for task in self._tasks.values():
                task.base = None  # the gathered tensors are freed on exit; the digests stay cached

    def _base_tensors(self, task: _Task | None = None) -> BaseTensors:
        """The base tensors a fingerprint covers (head excluded), digests cached: the base is frozen."""
        task = task or self._tasks[self._active_task]
        if task.base is None:
            task.base = BaseTensors(task.model, set(self._head_names(task)), task.natural, self._digests)
        return task.base

    def _base_location(self, fingerprint: dict[str, Any]) -> tuple[str | None, str | None]:
        """(id or path, commit) of the base, resolved once: the base is frozen, and finding its commit in
        the HF cache reads files (state_dict() asks again at every Trainer checkpoint)."""
        if self._location is None:
            name_or_path = getattr(self.model, "name_or_path", None) or None
            cached = hub.hub_id_from_cache_path(name_or_path) if name_or_path and os.path.isdir(name_or_path) else None
            if cached is not None:  # a snapshot folder of the HF cache: record the portable id and commit
                self._location = cached
                return self._location
            revision = None
            first = next(
                (f"{name}.weight" for name in self.targets.modules if f"{name}.weight" in fingerprint["tensors"]), None
            )
            if first is not None:
                prefix = backbone_prefix(self.model)
                names = [first]
                if prefix and first.startswith(prefix + "."):
                    names.append(first[len(prefix) + 1 :])  # a checkpoint of the bare backbone
                digests = tensor_record(fingerprint["tensors"][first])["sha256"].values()
                revision = hub.find_cached_revision(name_or_path, names, digests)
            self._location = (name_or_path, revision)
        return self._location

    def _record(self) -> dict[str, Any]:
        from . import __version__

        config = self.model.config
        fingerprint = make_fingerprint(self._base_tensors())
        name_or_path, revision = self._base_location(fingerprint)
        labels: dict[str, Any] = {"num_labels": int(config.num_labels)}
        if getattr(config, "id2label", None):
            labels["id2label"] = {str(k): str(v) for k, v in config.id2label.items()}
        if getattr(config, "label2id", None):
            labels["label2id"] = {str(k): int(v) for k, v in config.label2id.items()}
        if getattr(config, "problem_type", None):
            labels["problem_type"] = config.problem_type
        return {
            "format_version": repo_format.FORMAT_VERSION,
            "hf_masking_version": __version__,
            "masking_config": self.masking_config.to_dict(),
            "base_model_name_or_path": name_or_path,
            "base_model_revision": revision,
            "model_type": getattr(config, "model_type", None),
            "head_class": type(self.model).__name__,
            "label_config": labels,
            "masked_modules": list(self.targets.modules),
            "base_fingerprint": fingerprint,
        }

    def to_stored_mask(self, mask_name: str | None = None) -> StoredMask:
        """The repo contents of a mask: the active one unless `mask_name` says otherwise."""
        name = mask_name or self._active
        if name in self._stored:
            return self._stored[name]
        if not self._is_trainable_mask(name):
            raise KeyError(f"No mask named {name!r}; this model has {self.mask_names}.")
        if self._active != TRAINABLE_MASK:
            raise ValueError("Activate the trainable mask before saving it: set_active_mask('default').")
        config = self.masking_config
        masks = {
            module: codec.encode(mask, repo_format.init_context(config, module))
            for module, mask in self.masks().items()
        }
        head = {n: t.detach().cpu().clone() for n, t in self._head_tensors().items()}
        return StoredMask(record=self._record(), masks=masks, head=head)

    def _repo_files(
        self,
        stored: StoredMask,
        mask_name: str | None,
        card_info: dict[str, Any] | None,
        repo_id: str | None = None,
        existing_card: str | bool | None = None,
    ) -> dict[str, bytes]:
        """The repo's files by name. `existing_card`: the folder's README text, None if it has none, or
        False if it is not text we can edit (then it is left out, so the user's file stays as it is)."""
        config_bytes, weights_bytes = repo_format.encode_repo(stored)
        files = {repo_format.CONFIG_NAME: config_bytes, repo_format.WEIGHTS_NAME: weights_bytes}
        if existing_card is not False:
            generated = model_card.generated_card(
                stored.record, self.sparsity(mask_name), stored.nbytes, repo_id, card_info
            )
            files[repo_format.CARD_NAME] = model_card.updated_card(existing_card, generated, stored.record).encode()
        return files

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        mask_name: str | None = None,
        *,
        safe_serialization: bool = True,
        is_main_process: bool = True,
        push_to_hub: bool = False,
        card_info: dict[str, Any] | None = None,
        **push_kwargs: Any,
    ) -> None:
        """Write the tiny mask repo (config, compressed mask + head, model card) as one atomic change.

        `card_info` adds what the model card can say beyond the mask itself: ``task``, ``dataset``,
        ``pipeline_tag``, ``metrics`` and ``hyperparameters`` (the example scripts pass them after
        evaluating).

        Interrupted at any instant, the folder holds the complete old repo or the complete new one.
        A README.md the user wrote is kept, with only the Hub metadata added. ``push_to_hub=True``
        then uploads it (``repo_id`` and the other `push_to_hub` arguments go in `push_kwargs`).
        """
        if safe_serialization is not True:
            raise ValueError("hf-masking saves safetensors only (safe_serialization=False is not supported).")
        if push_kwargs and not push_to_hub:
            raise TypeError(f"save_pretrained() got unexpected keyword arguments {sorted(push_kwargs)}.")
        directory = atomic_save.check_target(os.fspath(save_directory))
        text: str | bool | None = None
        if is_main_process:
            existing = atomic_save.read_current(directory, repo_format.CARD_NAME) if os.path.isdir(directory) else None
            try:
                text = existing.decode("utf-8") if existing is not None else None
            except UnicodeDecodeError:
                text = False  # not text we can edit: the user's file stays as it is
        with self._gathered():  # FSDP: a collective, so every rank gets here; only the main one writes
            stored = self.to_stored_mask(mask_name)
            files = self._repo_files(stored, mask_name, card_info, existing_card=text) if is_main_process else {}
        if is_main_process:
            atomic_save.save_files(directory, files)
        if push_to_hub:
            repo_id = push_kwargs.pop("repo_id", None) or os.path.basename(directory)
            self.push_to_hub(repo_id, mask_name=mask_name, card_info=card_info, **push_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        private: bool = False,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        mask_name: str | None = None,
        card_info: dict[str, Any] | None = None,
    ) -> str:
        """Upload the tiny mask repo to the Hub; returns the commit URL."""
        if sharding.is_sharded(self):
            raise RuntimeError(
                "This model is sharded with FSDP: call save_pretrained(folder, is_main_process=...) on every rank, "
                "then push the folder from the main one (huggingface_hub.upload_folder)."
            )
        files = self._repo_files(self.to_stored_mask(mask_name), mask_name, card_info, repo_id=repo_id)
        with tempfile.TemporaryDirectory() as folder:
            for file_name, data in files.items():
                with open(os.path.join(folder, file_name), "wb") as handle:
                    handle.write(data)
            return hub.upload_folder(folder, repo_id, private, token, revision, commit_message, files)

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_path: str | os.PathLike,
        revision: str | None = None,
        token: str | bool | None = None,
        base_model: str | nn.Module | None = None,
        is_trainable: bool = False,
        **base_kwargs: Any,
    ) -> MaskedModel:
        """Rebuild a masked model from a mask repo (Hub id or folder), ready for inference.

        With ``is_trainable=True`` (as in PEFT) the mask trains on from exactly where it was saved:
        a repo keeps the mask, not the scores, so scores are re-derived from it (see
        `scores_for_mask`), and the first step starts from the saved mask. A Trainer checkpoint
        keeps the fp32 scores themselves: ``resume_from_checkpoint`` continues from those.

        The base comes from the repo's recorded base id at its pinned revision, unless
        `base_model` names another copy (a local folder, another id) or passes a loaded model;
        either way every tensor must match the fingerprint of the base the mask was trained on.
        `base_kwargs` go to the base's ``from_pretrained``: only loading options (``dtype``,
        ``device_map``, ``cache_dir``, ``trust_remote_code``…); nothing in the repo reaches it
        but the label fields its head needs.
        """
        unknown = sorted(set(base_kwargs) - BASE_LOADING_KWARGS)
        if unknown:
            raise TypeError(
                f"from_pretrained() got unexpected keyword argument {unknown[0]!r}; the base's loading options it "
                f"passes on are {sorted(BASE_LOADING_KWARGS)}."
            )
        stored = read_mask_repo(repo_id_or_path, revision, token)
        if isinstance(base_model, nn.Module):
            base = base_model
            if type(base).__name__ != stored.record["head_class"]:
                raise BaseModelMismatchError(
                    f"The mask was trained on a {stored.record['head_class']}; base_model is a {type(base).__name__}."
                )
        else:
            base = _load_base(stored.record, base_model, token, base_kwargs)
        try:
            masked = cls(base, stored.config, trainable=is_trainable, masked_modules=stored.record["masked_modules"])
        except BaseModelMismatchError:
            raise
        except ValueError as err:  # a selection in the repo's config that this base does not have
            raise MaskRepoError(
                f"{repo_format.CONFIG_NAME}: field 'masking_config' does not fit this base: {err}"
            ) from err
        if is_trainable:
            masked._continue_from(stored)
            return masked
        masked.load_mask(stored, TRAINABLE_MASK)
        masked.set_active_mask(TRAINABLE_MASK)
        return masked.eval()

    def _continue_from(self, stored: StoredMask) -> None:
        """Make the trainable mask and head those of `stored` (checked like any loaded mask)."""
        self._check_compatible(stored, self._tasks[self._primary])
        binarize = binarizer_for(self.masking_config)
        for name, module in self.masked_modules().items():
            saved = codec.decode(stored.masks[name]).to(module.weight.device)
            if stored.scores is not None:  # a Trainer checkpoint: its exact fp32 scores
                scores = stored.scores[name].to(module.weight.device)
            else:
                scores = scores_for_mask(module.mask_scores.detach(), saved, self.masking_config)
            if not torch.equal(binarize(scores), saved):
                raise MaskRepoError(
                    f"The saved mask of {name} cannot be continued with binarizer {self.masking_config.binarizer!r} "
                    "(a top-k mask must keep its fixed fraction of weights)."
                )
            with torch.no_grad():
                module.mask_scores.copy_(scores)
        own = self._head_tensors()
        with torch.no_grad():
            for tensor_name, value in stored.head.items():
                own[tensor_name].copy_(value)


# PEFT methods a MaskedModel has no equivalent of by that name, and what to use instead.
PEFT_EQUIVALENTS = {
    "set_adapter": "set_active_mask(name)",
    "load_adapter": "load_mask(repo_or_path, name)",
    "add_adapter": "load_mask(repo_or_path, name) for a trained mask, or a new MaskedModel to train one",
    "delete_adapter": "delete_mask(name)",
    "disable_adapter": "the context manager disable_masks()",
    "disable_adapters": "the context manager disable_masks()",
    "enable_adapters": "the end of a disable_masks() block",
    "active_adapter": "active_mask",
    "active_adapters": "active_mask",
    "get_nb_trainable_parameters": "num_trainable_parameters()",
    "peft_config": "masking_config",
    "get_adapter_state_dict": "to_stored_mask()",
    "add_weighted_adapter": "MaskEnsemble(model, names, combine=...)",
}

# Options of a base's `from_pretrained` that say how to load it, never what to load.
BASE_LOADING_KWARGS = frozenset(
    {
        "dtype",
        "torch_dtype",
        "device_map",
        "max_memory",
        "offload_folder",
        "low_cpu_mem_usage",
        "attn_implementation",
        "cache_dir",
        "local_files_only",
        "force_download",
        "trust_remote_code",
    }
)


def _label_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A record's validated label fields (id2label, label2id, num_labels, problem_type) as config values."""
    labels = dict(record["label_config"])
    if "id2label" in labels:
        labels["id2label"] = {int(k): v for k, v in labels["id2label"].items()}
    order = ("num_labels", "id2label", "label2id", "problem_type")
    return {field: labels[field] for field in order if field in labels}


def _layout(head_class: str, head: dict[str, torch.Tensor]) -> tuple:
    """What decides whether two masks can share a task model: the head class and its tensors' shapes."""
    return (head_class, tuple(sorted((name, tuple(t.shape)) for name, t in head.items())))


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


def _align_head(model: nn.Module) -> None:
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


def read_mask_repo(repo_id_or_path: str | os.PathLike, revision: str | None, token: str | bool | None) -> StoredMask:
    """A mask repo from a folder (an interrupted save's journal included) or the Hub, fully checked."""
    folder, _ = hub.resolve_repo(os.fspath(repo_id_or_path), revision, token)
    return repo_format.read_folder(folder)


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


def _load_base(record: dict[str, Any], base_model: str | None, token: Any, base_kwargs: dict[str, Any]) -> nn.Module:
    import transformers

    head_class = head_class_for(record["head_class"])
    source = os.fspath(base_model) if base_model is not None else record["base_model_name_or_path"]
    if source is None:
        raise ValueError("The mask repo names no base model; pass base_model=... to from_pretrained.")
    hub.check_base_source(source)
    kwargs = dict(base_kwargs)
    if base_model is None and record.get("base_model_revision") and not os.path.isdir(source):
        kwargs["revision"] = record["base_model_revision"]
    labels = _label_fields(record)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the head is "newly initialised": expected, it is replaced
    try:
        return head_class.from_pretrained(source, token=token, **labels, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
