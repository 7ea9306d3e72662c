"""hf-masking: learn binary masks on a frozen pretrained model instead of finetuning it."""

from .callback import MaskingCallback
from .config import MaskingConfig
from .ensemble import MaskEnsemble
from .hub import BaseModelMismatchError, MaskRepoError
from .layers import MaskedLinear
from .model import MaskedModel

__version__ = "0.1.0"

__all__ = [
    "BaseModelMismatchError",
    "MaskEnsemble",
    "MaskRepoError",
    "MaskedLinear",
    "MaskedModel",
    "MaskingCallback",
    "MaskingConfig",
    "__version__",
]
