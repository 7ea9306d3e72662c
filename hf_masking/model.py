"""`MaskedModel`: wraps a pretrained model, freezes it, and learns binary masks on its linear layers."""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from . import codec, mixed_batch, sharding
from . import repo as repo_format
from .analysis import sparsity_report
from .binarizer import binarizer_for, init_scores, make_binarizer, scores_for_mask  # noqa: F401  (public here too)
from .config import MaskingConfig
from .fingerprint import BaseTensors
from .fixed_mask import FixedMask, FixedMaskCache
from .layers import MaskedLinear
from .persistence import BASE_LOADING_KWARGS, MaskRepoMixin, read_mask_repo  # noqa: F401  (public here too)
from .repo import StoredMask
from .signature import subclass_for
from .targets import (
    ResolvedTargets,
    check_modules_to_save,
    is_within,
    resolve_targets,
    trained_modules,
)
from .tasks import (  # head_class_for: public here too
    TRAINABLE_MASK,
    Task,
    align_head,
    build_task,
    check_compatible,
    head_names,
    head_tensors,
    layout,
    task_key,
)


class MaskedModel(MaskRepoMixin, nn.Module):
    """A pretrained model whose selected linear layers compute with W ⊙ 1[S ≥ τ].

    Every base parameter is frozen; only the fp32 mask scores train. Calls and attribute
    access go through to the wrapped model, so the stock ``transformers.Trainer`` treats it
    like the model it wraps.
    """

    def __new__(cls, model: nn.Module | None = None, *args: Any, **kwargs: Any) -> MaskedModel:
        if cls is MaskedModel and isinstance(model, nn.Module):  # anything else: __init__ says what is wrong
            cls = subclass_for(MaskedModel, type(model))
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
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"MaskedModel wraps a loaded model (an nn.Module), not {type(model).__name__} {model!r}: load it first "
                "(e.g. AutoModelForSequenceClassification.from_pretrained(...)), or rebuild a saved mask with "
                "MaskedModel.from_pretrained(mask_repo)."
            )
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
        primary = Task(model, targets, config.modules_to_save)
        self._primary = layout(type(model).__name__, self._head_tensors(primary))
        self._tasks: dict[tuple, Task] = {self._primary: primary}
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
        self._consumed: str | None = None  # what took the wrapped model away (unload, merge_and_unload)
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

    def _check_usable(self) -> None:
        """A clear error for a wrapper whose model `unload` or `merge_and_unload` handed out."""
        if getattr(self, "_consumed", None):
            raise RuntimeError(
                f"This MaskedModel was consumed by {self._consumed}(): its model now belongs to the caller and has no "
                "masks. Use the model it returned, or MaskedModel.from_pretrained(mask_repo) for a masked one again."
            )

    def forward(self, *args: Any, mask_names: list[str | None] | None = None, **kwargs: Any) -> Any:
        """The wrapped model's forward with masked layers; `mask_names` (one per example) gives each its own mask."""
        self._check_usable()
        if mask_names is not None:
            return self._forward_rows(mask_names, args, kwargs)
        if self.training and torch.is_grad_enabled():
            self._check_trainable_now()
            self._warn_if_trained_without_callback()
        return self.model(*args, **kwargs)

    def _check_trainable_now(self) -> None:
        """Training with a loaded (fixed) mask active trains nothing: say so instead of a gradient error later."""
        if self._is_trainable_mask(self._active) or any(p.requires_grad for p in self.parameters()):
            return
        raise RuntimeError(
            f"Training with the loaded mask {self._active!r} active: a loaded mask is fixed and nothing else here "
            "trains. To train it further, load it with MaskedModel.from_pretrained(repo, is_trainable=True); to "
            "train this model's own mask, set_active_mask('default') (when it was built trainable). For inference, "
            "call model.eval() or use torch.no_grad()."
        )

    def generate(self, *args: Any, mask_names: list[str | None] | None = None, **kwargs: Any) -> Any:
        """The wrapped model's ``generate``; with `mask_names` (one per prompt) each sequence keeps its own mask."""
        self._check_usable()
        if mask_names is None:
            return self.model.generate(*args, **kwargs)
        with mixed_batch.rows_masked(self, mask_names, args, kwargs) as model:
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
        self._check_usable()
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
        return head_names(self._tasks[self._active_task])

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
        """An ordinary transformers model with W ⊙ M baked into the masked weights, sharing nothing with this one.

        Masked layers become plain ``nn.Linear``/``Conv1D`` modules with merged weights; every other
        tensor is copied, so training the merged model leaves this one (and its base) as it was, and
        a later `set_active_mask` or training step here leaves the merged model as it is. Costs a
        copy of the model; `merge_and_unload` costs none and consumes this wrapper instead.
        """
        self._check_usable()
        memo: dict[int, Any] = {}
        for module in self.masked_modules().values():
            layer = module.merged()
            memo[id(module)] = layer
            memo[id(module.weight)] = layer.weight  # a weight tied elsewhere follows the merged one
            if module.bias is not None:
                memo[id(module.bias)] = layer.bias
        for module in self.model.modules():  # layers only another task's masks use: back to plain ones
            if isinstance(module, MaskedLinear) and id(module) not in memo:
                memo[id(module)] = module.original()
        merged = copy.deepcopy(self.model, memo)
        for param in merged.parameters():
            param.requires_grad_(True)  # a plain model, trainable as any loaded one
        return merged

    def merge_and_unload(self) -> nn.Module:
        """As PEFT's: bake the active mask into the wrapped model in place and hand that model out.

        No copy is made: the masked layers become plain layers with merged weights inside the
        wrapped model, which is returned. This wrapper is consumed: using it afterwards is an
        error (load the mask again with `from_pretrained`). Use `merge` to keep both.
        """
        self._check_usable()
        merged = {name: module.merged() for name, module in self.masked_modules().items()}
        plain = {
            name: module.original()
            for name, module in self.model.named_modules()
            if isinstance(module, MaskedLinear) and name not in merged
        }
        model = self.model
        for name, layer in [*merged.items(), *plain.items()]:
            model.set_submodule(name, layer)
        for param in model.parameters():
            param.requires_grad_(True)
        self._consumed = "merge_and_unload"
        self.fixed_masks.clear()
        return model

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
        """Put the original linear layers back and return the unmasked base model (scores dropped), as PEFT's.

        The wrapper is consumed: using it afterwards is an error.
        """
        self._check_usable()
        for name, layer in [(n, m) for n, m in self.model.named_modules() if isinstance(m, MaskedLinear)]:
            self.model.set_submodule(name, layer.original())
        self._consumed = "unload"
        self.fixed_masks.clear()
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
        self._check_usable()
        if name in self.mask_names:
            raise ValueError(f"A mask named {name!r} is already loaded; delete_mask({name!r}) first.")
        if isinstance(repo_or_path, StoredMask):
            stored = repo_or_path
        else:
            stored = read_mask_repo(repo_or_path, revision, token)
        key = task_key(stored, self._tasks, self._primary)
        if key is None:
            key = layout(stored.record["head_class"], stored.head)
            self._tasks[key] = build_task(stored, self._tasks[self._primary].model)
        try:
            check_compatible(stored, self._tasks[key], self._base_tensors(self._tasks[key]))
        except BaseException:
            self._drop_unused_tasks()
            raise
        self._stored[name] = stored
        self._mask_task[name] = key
        self._fixed[name] = {
            module_name: FixedMask(name, module_name, encoded, self.fixed_masks)
            for module_name, encoded in stored.masks.items()
        }

    def _drop_unused_tasks(self) -> None:
        used = {self._primary, self._active_task, *self._mask_task.values()}
        for key in [k for k in self._tasks if k not in used]:
            del self._tasks[key]

    def set_active_mask(self, name: str) -> None:
        """Compute with mask `name` (and its head) from now on.

        No weight is touched: the base stays as loaded and the mask is applied per call, so a switch
        costs copying the head. All or nothing: if anything fails part-way, the model is left
        exactly as it was.
        """
        self._check_usable()
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
                align_head(target.model)
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
        if isinstance(mask_names, str) or not isinstance(mask_names, (list, tuple)):
            raise TypeError(f"group_mask_names takes a list of mask names (or None), one per row; not {mask_names!r}.")
        groups: dict[tuple, list[int]] = {}
        for index, name in enumerate(mask_names):
            groups.setdefault(self._task_key(name), []).append(index)
        return list(groups.values())

    def mask_head_class(self, name: str | None = None) -> str:
        """The transformers class mask `name` computes with (the active mask's by default), e.g. for routing."""
        return self._task_key(name or self._active)[0]

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
        with mixed_batch.rows_masked(self, mask_names, args, kwargs) as model:
            return model(*args, **kwargs)

    def _head_tensors(self, task: Task | None = None) -> dict[str, torch.Tensor]:
        return head_tensors(task or self._tasks[self._active_task])

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

    def _base_tensors(self, task: Task | None = None) -> BaseTensors:
        """The base tensors a fingerprint covers (head excluded), digests cached: the base is frozen."""
        task = task or self._tasks[self._active_task]
        if task.base is None:
            task.base = BaseTensors(task.model, set(head_names(task)), task.natural, self._digests)
        return task.base


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
