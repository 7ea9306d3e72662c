"""`MaskedModel`: wraps a pretrained model, freezes it, and learns binary masks on its linear layers."""

from __future__ import annotations

import copy
import inspect
import zlib
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .binarizer import make_binarizer
from .config import MaskingConfig
from .layers import MaskedLinear
from .targets import ResolvedTargets, backbone_prefix, resolve_targets

_SUBCLASSES: dict[type, type] = {}


def _masked_class_for(model_cls: type) -> type:
    """A MaskedModel subclass whose ``forward`` carries the wrapped class's signature.

    The stock Trainer reads label names and the dataset columns to keep from
    ``inspect.signature(type(model).forward)``; a wrapper with ``forward(*args, **kwargs)``
    would silently get batches without labels or without inputs.
    """
    if model_cls not in _SUBCLASSES:

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.model(*args, **kwargs)

        forward.__signature__ = inspect.signature(model_cls.forward)  # type: ignore[attr-defined]
        forward.__doc__ = f"Calls the wrapped {model_cls.__name__} with masked linear layers."
        name = f"Masked{model_cls.__name__}"
        _SUBCLASSES[model_cls] = type(name, (MaskedModel,), {"forward": forward, "__module__": __name__})
    return _SUBCLASSES[model_cls]


def init_scores(shape: torch.Size, module_name: str, config: MaskingConfig) -> torch.Tensor:
    """Uniform scores with exactly P(score < threshold) = initial_sparsity.

    Drawn on the CPU from a generator seeded by the config's seed and the module's name, so the
    initial mask depends on neither the device nor the order in which modules are visited.
    """
    generator = torch.Generator(device="cpu").manual_seed(
        (config.seed * 1_000_003 + zlib.crc32(module_name.encode())) % (2**63)
    )
    low, high = config.init_range
    return torch.empty(shape, dtype=torch.float32).uniform_(low, high, generator=generator)


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

    def __init__(self, model: nn.Module, config: MaskingConfig | None = None) -> None:
        if isinstance(model, MaskedModel) or any(isinstance(m, MaskedLinear) for m in model.modules()):
            raise ValueError("This model is already masked: wrap the original model, not a MaskedModel.")
        if config is not None and not isinstance(config, MaskingConfig):
            raise TypeError(f"config must be a MaskingConfig, not {type(config).__name__}.")
        super().__init__()
        config = config or MaskingConfig()
        targets = resolve_targets(model, config)
        self.model = model
        self.masking_config = config
        self.targets: ResolvedTargets = targets
        for param in model.parameters():
            param.requires_grad_(False)
        binarize = make_binarizer(config.binarizer, config.threshold, config.initial_sparsity)
        for name in targets.modules:
            original = model.get_submodule(name)
            scores = init_scores(original.weight.shape, name, config).to(original.weight.device)
            model.set_submodule(name, MaskedLinear(original, binarize, scores))

    # ----- passthrough -------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

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
    def masked_modules(self) -> dict[str, MaskedLinear]:
        """Masked layers by their name in the wrapped model."""
        return {name: self.model.get_submodule(name) for name in self.targets.modules}

    def masks(self) -> dict[str, torch.Tensor]:
        """The current boolean masks by module name."""
        return {name: module.mask() for name, module in self.masked_modules().items()}

    def sparsity(self) -> dict[str, Any]:
        """Fraction of masked-out weights: ``{"global": x, "blocks": {i: x}, "modules": {name: x}}``."""
        zeros_total = count_total = 0
        per_block: dict[int, list[int]] = {}
        per_module: dict[str, float] = {}
        for name, mask in self.masks().items():
            zeros, count = int(mask.numel() - mask.count_nonzero()), mask.numel()
            per_module[name] = zeros / count
            zeros_total += zeros
            count_total += count
            block = self.targets.block_of(name)
            if block is not None:
                acc = per_block.setdefault(block, [0, 0])
                acc[0] += zeros
                acc[1] += count
        return {
            "global": zeros_total / count_total,
            "blocks": {block: z / n for block, (z, n) in sorted(per_block.items())},
            "modules": per_module,
            "masked_weights": count_total,
        }

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
        """Tensors (names in the wrapped model) that the base checkpoint lacks: the task head.

        Defaults to every parameter and buffer outside the pretrained backbone that is not tied to
        it; ``MaskingConfig.modules_to_save`` names the modules explicitly instead.
        """
        explicit = self.masking_config.modules_to_save
        prefix = backbone_prefix(self.model)
        backbone_ids = {id(t) for t in getattr(self.model, prefix).parameters()} if prefix else set()
        names = []
        for name, tensor in [*self.model.named_parameters(), *self.model.named_buffers()]:
            if name.endswith("mask_scores"):
                continue
            if explicit is not None:
                if any(name.startswith(m + ".") for m in explicit):
                    names.append(name)
            elif name.split(".", 1)[0] in self.targets.head_prefixes and id(tensor) not in backbone_ids:
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
        full = super().state_dict(prefix=prefix, keep_vars=keep_vars)
        out = destination if destination is not None else OrderedDict()
        for key in self._masking_state_keys():
            out[prefix + key] = full[prefix + key]
        return out

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> _IncompatibleKeys:
        """Load scores and head; base weights missing from ``state_dict`` are expected, not an error."""
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
        """An ordinary transformers model with W ⊙ M baked into the masked weights.

        The result shares every unmasked tensor with this model (no copy of the base), and its
        masked layers are plain ``nn.Linear``/``Conv1D`` modules holding new merged weights.
        """
        memo: dict[int, Any] = {id(t): t for t in [*self.model.parameters(), *self.model.buffers()]}
        merged_layers = {name: module.merged() for name, module in self.masked_modules().items()}
        for module in merged_layers.values():
            memo.update({id(t): t for t in module.parameters()})
        skeleton = copy.deepcopy(self.model, memo)
        for name, layer in merged_layers.items():
            skeleton.set_submodule(name, layer)
        return skeleton
