"""The errors hf-masking raises for bad repos and wrong bases, importable without torch."""

from __future__ import annotations


class MaskRepoError(ValueError):
    """A mask repo is incomplete, truncated, corrupted, malformed, or written in an unknown format.

    The message names the file and, where one is at fault, the field or tensor.
    """


class BaseModelMismatchError(ValueError):
    """The base model given for a mask is not the one the mask was trained on (first difference named)."""
