"""Per wrapped class, a `MaskedModel` subclass whose ``forward`` carries that class's signature.

The stock Trainer reads label names and the dataset columns to keep from
``inspect.signature(type(model).forward)``; a wrapper with ``forward(*args, **kwargs)`` would
silently get batches without labels or without inputs.
"""

from __future__ import annotations

import inspect
from typing import Any

_SUBCLASSES: dict[tuple[type, type], type] = {}


def subclass_for(base: type, model_cls: type) -> type:
    """``Masked<ModelClass>``: `base` with a ``forward`` of `model_cls`'s signature plus ``mask_names``."""
    key = (base, model_cls)
    if key not in _SUBCLASSES:

        def forward(self, *args: Any, mask_names: list[str | None] | None = None, **kwargs: Any) -> Any:
            return base.forward(self, *args, mask_names=mask_names, **kwargs)

        forward.__signature__ = with_mask_names(inspect.signature(model_cls.forward))  # type: ignore[attr-defined]
        forward.__doc__ = (
            f"Calls the wrapped {model_cls.__name__} with masked linear layers; `mask_names` (one per example) "
            "computes each example with its own mask."
        )
        name = f"Masked{model_cls.__name__}"
        _SUBCLASSES[key] = type(name, (base,), {"forward": forward, "__module__": base.__module__})
    return _SUBCLASSES[key]


def with_mask_names(signature: inspect.Signature) -> inspect.Signature:
    """The wrapped forward's signature plus the keyword-only ``mask_names``."""
    parameters = [p for p in signature.parameters.values() if p.name != "mask_names"]
    position = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters))
    extra = inspect.Parameter("mask_names", inspect.Parameter.KEYWORD_ONLY, default=None)
    return signature.replace(parameters=[*parameters[:position], extra, *parameters[position:]])
