"""hf-masking: learn binary masks on a frozen pretrained model instead of finetuning it."""

from typing import Any

from .config import MaskingConfig
from .ensemble import MaskEnsemble
from .errors import BaseModelMismatchError, MaskRepoError
from .layers import MaskedLinear
from .model import MaskedModel
from .optimization import masking_optimizer
from .version import __version__

__all__ = [
    "BaseModelMismatchError",
    "MaskEnsemble",
    "MaskRepoError",
    "MaskedLinear",
    "MaskedModel",
    "MaskingCallback",
    "MaskingConfig",
    "__version__",
    "masking_optimizer",
]


def __getattr__(name: str) -> Any:
    # The callback pulls in the Trainer stack (~150 MB resident); a server that only loads
    # masks for inference should not pay for it.
    if name == "MaskingCallback":
        from .callback import MaskingCallback

        return MaskingCallback
    raise AttributeError(f"module 'hf_masking' has no attribute {name!r}")
