"""The paper's analyses of masks (§6), as functions of mask repos: what a mask is, how two masks differ.

Both work from the repos alone, without loading the base: a repo records its masked modules, the
shapes and digests of the base's tensors, and the config and seed its initial mask came from.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import codec, targets
from .binarizer import binarizer_for, init_scores
from .errors import BaseModelMismatchError
from .fingerprint import same_tensor, tensor_record
from .repo import REPO_FILES, StoredMask


def split_block(module_name: str) -> tuple[int | None, str]:
    """Deprecated: `block_layout` splits a repo's names in the block list they share (as `MaskedModel` does)."""
    warnings.warn("analysis.split_block is deprecated; use analysis.block_layout(names)", DeprecationWarning, 2)
    return block_layout([module_name])[module_name]


def block_layout(names: list[str]) -> dict[str, tuple[int | None, str]]:
    """(block index, module type) of each masked module, split as `MaskedModel.sparsity` splits them
    (`targets.split_block`), in the block list most of them sit in."""
    prefix = targets.block_prefix_of(names)
    return {name: targets.split_block(name, prefix) for name in names}


def sparsity_report(counts: dict[str, tuple[int, int]], block_of: Callable[[str], int | None]) -> dict[str, Any]:
    """Fraction masked out, from (masked-out, size) per module: {"global", "blocks", "modules", "masked_weights"}."""
    per_block: dict[int, list[int]] = {}
    for name, (zeros, numel) in counts.items():
        block = block_of(name)
        if block is not None:
            acc = per_block.setdefault(block, [0, 0])
            acc[0] += zeros
            acc[1] += numel
    zeros_total = sum(z for z, _ in counts.values())
    total = sum(n for _, n in counts.values())
    return {
        "global": zeros_total / total if total else 0.0,
        "blocks": {block: z / n for block, (z, n) in sorted(per_block.items())},
        "modules": {name: z / n for name, (z, n) in counts.items()},
        "masked_weights": total,
    }


@dataclass
class MaskReport:
    """What `hf-masking inspect` prints: the repo's base and head, sizes, and sparsity by block and module."""

    base_model: str | None
    base_revision: str | None
    head_class: str
    model_type: str | None
    codec: str
    global_sparsity: float
    blocks: dict[int, float]
    modules: dict[str, float]
    bytes: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_model": self.base_model,
            "base_revision": self.base_revision,
            "head_class": self.head_class,
            "model_type": self.model_type,
            "codec": self.codec,
            "global_sparsity": self.global_sparsity,
            "blocks": {str(k): v for k, v in self.blocks.items()},
            "modules": self.modules,
            "bytes": self.bytes,
        }


def inspect_mask(stored: StoredMask, folder: str | None = None) -> MaskReport:
    """Sparsity per module and per block (fraction of weights masked out) and the repo's size against the
    full model's (every base tensor in its recorded dtype; the head in the mask)."""
    counts = {name: codec.masked_out(encoded) for name, encoded in stored.masks.items()}
    layout = block_layout(list(counts))
    report = sparsity_report(counts, lambda name: layout[name][0])
    tensors = [tensor_record(t) for t in stored.record["base_fingerprint"]["tensors"].values()]
    base_bytes = sum(
        math.prod(int(n) for n in t["shape"]) * torch.empty(0, dtype=_dtype(t["dtype"])).element_size() for t in tensors
    )
    head_bytes = sum(t.numel() * t.element_size() for t in stored.head.values())
    sizes = {"mask_in_memory": stored.nbytes, "full_model": base_bytes + head_bytes}
    if folder is not None:  # the repo's own files (a script's output folder also holds a tokenizer, logs…)
        paths = [os.path.join(folder, name) for name in REPO_FILES]
        sizes["repo_on_disk"] = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
    return MaskReport(
        base_model=stored.record.get("base_model_name_or_path"),
        base_revision=stored.record.get("base_model_revision"),
        head_class=stored.record["head_class"],
        model_type=stored.record.get("model_type"),
        codec=f"{codec.CODEC_NAME} v{codec.CODEC_VERSION}",
        global_sparsity=report["global"],
        blocks=report["blocks"],
        modules=report["modules"],
        bytes=sizes,
    )


def _dtype(name: str) -> torch.dtype:
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in the base fingerprint")
    return value


def initial_mask(stored: StoredMask, module_name: str) -> torch.Tensor:
    """The mask training started from: regenerated from the repo's config and seed (as `MaskedModel` drew it)."""
    config = stored.config
    shape = torch.Size(stored.masks[module_name].shape)
    binarize = binarizer_for(config)
    return binarize(init_scores(shape, module_name, config).float())


def dissimilarity(a: StoredMask, b: StoredMask) -> dict[str, float | None]:
    """§6.2's s = ‖M_A − M_B‖₁ / (‖M_A − M_A,init‖₁ + ‖M_B − M_B,init‖₁) per masked module of both.

    0: the same mask; about 1 or more: the two masks moved away from their starts in unrelated ways.
    None where neither mask moved from its start (s is undefined). Head layers that only one mask
    has, or that have other shapes (another label set), are left out: see `comparable_modules`.
    """
    out: dict[str, float | None] = {}
    for name in comparable_modules(a, b):
        mask_a, mask_b = codec.decode(a.masks[name]), codec.decode(b.masks[name])
        moved = int((mask_a != initial_mask(a, name)).sum()) + int((mask_b != initial_mask(b, name)).sum())
        out[name] = int((mask_a != mask_b).sum()) / moved if moved else None
    return out


def comparable_modules(a: StoredMask, b: StoredMask) -> list[str]:
    """The masked modules two masks can be compared on, entry by entry: the base layers both mask.

    Refused, naming the first difference, when the masks are of different bases or cover different
    base layers. Head layers (whose weights travel with the mask, not the base) are compared where
    both masks have them in one shape, and left out otherwise (e.g. 2 labels vs 6).
    """
    tensors_a = a.record["base_fingerprint"]["tensors"]
    tensors_b = b.record["base_fingerprint"]["tensors"]

    def in_base(name: str) -> bool:
        return f"{name}.weight" in tensors_a or f"{name}.weight" in tensors_b

    only = sorted(n for n in set(a.masks) ^ set(b.masks) if in_base(n))
    if only:
        raise BaseModelMismatchError(
            f"The two masks cover different layers (first difference: {only[0]}); compare masks of one base "
            "and one masking config."
        )
    names = []
    for name in [n for n in a.masks if n in b.masks]:
        weight = f"{name}.weight"
        if weight in tensors_a and weight in tensors_b and not same_tensor(tensors_a[weight], tensors_b[weight]):
            raise BaseModelMismatchError(
                f"The two masks were trained on different bases: the weight {weight} differs "
                f"({a.record.get('base_model_name_or_path')} vs {b.record.get('base_model_name_or_path')})."
            )
        if a.masks[name].shape == b.masks[name].shape:
            names.append(name)
        elif in_base(name):
            raise BaseModelMismatchError(
                f"The masks of {name} have shapes {list(a.masks[name].shape)} and {list(b.masks[name].shape)}."
            )
    return names
