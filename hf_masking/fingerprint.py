"""Base-model fingerprint: proves that a base is, tensor for tensor, the one a mask was trained on.

A mask is only meaningful on the exact weights it was learned on, so the repo records a sha256 of
every tensor the masked model computes with (parameters and persistent buffers, the head that
travels with the mask excluded) and the config fields that change the computation. A float32
base also records the digests of its tensors rounded to float16 and bfloat16, so a half-precision
copy of the right base is accepted exactly when it equals the original rounded to that dtype.
Hashing is cheap (sha256 runs at ~1.5 GB/s here: 0.06 s for MiniLM's 91 MB).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import torch
from torch import nn

from .errors import BaseModelMismatchError

FINGERPRINT_VERSION = 2
# Hex characters of a per-tensor digest (64 bits): enough to name the first tensor that differs. The
# fingerprint's "sha256" covers every tensor's full digest, so the whole base is checked at full strength.
SHORT_DIGEST = 16
HALF_DTYPES = (torch.float16, torch.bfloat16)
_DTYPES = {str(d).replace("torch.", ""): d for d in (torch.float32, torch.float64, *HALF_DTYPES)}

# Config fields that do not change what the model computes in inference: labels (they travel with
# the mask), bookkeeping, output switches, generation and tokenizer ids, dropout and initialisation.
_NOT_COMPUTATION = re.compile(
    r"^(_.*|id2label|label2id|num_labels|problem_type|finetuning_task|architectures|transformers_version|dtype|"
    r"torch_dtype|use_cache|return_dict|output_hidden_states|output_attentions|torchscript|use_return_dict|"
    r"tokenizer_class|prefix|task_specific_params|chunk_size_feed_forward|initializer_range|initializer_factor|"
    r"gradient_checkpointing|layerdrop|.*dropout.*|.*_dropout_prob|.*_token_id|.*_token_ids|"
    r"attn_implementation|tie_encoder_decoder|pruned_heads)$"
)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and raw bytes (hashed in place when it is on the CPU)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest = hashlib.sha256(f"{_dtype_name(flat.dtype)}:{list(tensor.shape)}:".encode())
    if flat.numel():
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def computation_config(model: nn.Module) -> dict[str, Any]:
    """The JSON-serialisable config fields that change what `model` computes."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    out = {}
    for key, value in config.to_dict().items():
        if _NOT_COMPUTATION.match(key):
            continue
        try:
            out[key] = json.loads(json.dumps(value))  # as it will read back from the JSON file
        except (TypeError, ValueError):
            continue
    return out


def non_persistent_buffers(model: nn.Module) -> set[str]:
    """Names of the buffers a checkpoint does not hold (recomputed, like position ids, or masking state)."""
    names = set()
    for module_name, module in model.named_modules():
        for buffer_name in getattr(module, "_non_persistent_buffers_set", ()):
            names.add(f"{module_name}.{buffer_name}" if module_name else buffer_name)
    return names


class BaseTensors:
    """The tensors of a frozen base that a fingerprint covers, with their digests computed once.

    Every parameter and persistent buffer (tied ones once), minus `exclude` (the head that travels
    with the mask) and the masking state. Masked layers count with their weight, which no
    mask ever writes.
    """

    def __init__(
        self,
        model: nn.Module,
        exclude: set[str],
        only: set[str] | None = None,
        digests: dict[tuple[str, torch.dtype], str] | None = None,
    ) -> None:
        """`only`: the tensor names to cover (a head class built around a shared backbone does not use all
        of it); `digests`: a cache shared between views of the same frozen tensors."""
        non_persistent = non_persistent_buffers(model)
        self.tensors: dict[str, torch.Tensor] = {}
        for name, tensor in model.named_parameters():
            if not name.endswith("mask_scores") and name not in exclude:
                self.tensors[name] = tensor
        for name, tensor in model.named_buffers():
            if name not in non_persistent and name not in exclude and tensor is not None:
                self.tensors[name] = tensor
        if only is not None:
            self.tensors = {name: t for name, t in self.tensors.items() if name in only}
        self.config = computation_config(model)
        self._digests = digests if digests is not None else {}

    def value(self, name: str) -> torch.Tensor:
        return self.tensors[name].detach()

    def digest(self, name: str, dtype: torch.dtype | None = None) -> str:
        """Digest of tensor `name`, rounded to `dtype` if given; cached, since the base never changes."""
        dtype = dtype or self.tensors[name].dtype
        key = (name, dtype)
        if key not in self._digests:
            self._digests[key] = tensor_digest(self.value(name).to(dtype))
        return self._digests[key]


def _combined_digest(names: list[str], digest_of) -> str:  # noqa: ANN001
    combined = hashlib.sha256()
    for name in sorted(names):  # the JSON file sorts its keys
        combined.update(f"{name}:{digest_of(name)}\n".encode())
    return combined.hexdigest()


def make_fingerprint(base: BaseTensors) -> dict[str, Any]:
    """The fingerprint recorded in a mask repo, compact: per tensor its shape, dtype and short digests (of its
    own dtype, and for float32 of its float16 and bfloat16 roundings); one full digest over all of them."""
    tensors = {}
    for name, tensor in base.tensors.items():
        entry = [list(tensor.shape), _dtype_name(tensor.dtype), base.digest(name)[:SHORT_DIGEST]]
        if tensor.dtype == torch.float32:
            entry += [base.digest(name, half)[:SHORT_DIGEST] for half in HALF_DTYPES]
        tensors[name] = entry
    return {
        "version": FINGERPRINT_VERSION,
        "config": base.config,
        "tensors": tensors,
        "sha256": _combined_digest(list(base.tensors), base.digest),
    }


def tensor_record(entry: Any) -> dict[str, Any]:
    """One tensor's fingerprint entry as {"shape", "dtype", "sha256": {dtype: digest}}, from either version."""
    if isinstance(entry, dict):  # version 1: full digests
        return entry
    shape, dtype, *digests = entry
    names = [dtype] + ([_dtype_name(h) for h in HALF_DTYPES] if len(digests) > 1 else [])
    return {"shape": shape, "dtype": dtype, "sha256": dict(zip(names, digests, strict=True))}


def same_tensor(entry_a: Any, entry_b: Any) -> bool:
    """Whether two fingerprint entries (of either version) record the same tensor, as far as both tell."""
    a, b = tensor_record(entry_a), tensor_record(entry_b)
    if a["shape"] != b["shape"] or a["dtype"] != b["dtype"]:
        return False
    first, second = a["sha256"][a["dtype"]], b["sha256"][b["dtype"]]
    size = min(len(first), len(second))
    return first[:size] == second[:size]


def _matches(full: str, recorded: str) -> bool:
    return full[: len(recorded)] == recorded


def _check_tensor(base: BaseTensors, name: str, record: dict[str, Any]) -> bool:
    """Raise if tensor `name` differs; True when it was compared in the dtype it was trained in."""
    tensor = base.tensors[name]
    if list(tensor.shape) != record["shape"]:
        raise BaseModelMismatchError(
            f"{name} has shape {list(tensor.shape)} in the base model but {record['shape']} in the one the mask was "
            "trained on."
        )
    current, trained = _dtype_name(tensor.dtype), record["dtype"]
    digests = record["sha256"]
    if current in digests:
        if _matches(base.digest(name), digests[current]):
            return current == trained
        detail = "" if current == trained else f" (compared with the {trained} original rounded to {current})"
        raise BaseModelMismatchError(
            f"{name} differs from the tensor the mask was trained on{detail}: this is a different or modified base "
            "model."
        )
    trained_dtype = _DTYPES.get(trained)
    if (
        trained_dtype is not None
        and tensor.is_floating_point()
        and torch.finfo(tensor.dtype).bits > torch.finfo(trained_dtype).bits
    ):
        # A wider copy of a half-precision base: equal only if it holds exactly the original values.
        value = base.value(name)
        narrowed = value.to(trained_dtype)
        if torch.equal(narrowed.to(value.dtype), value) and _matches(tensor_digest(narrowed), digests[trained]):
            return False
        raise BaseModelMismatchError(
            f"{name} ({current}) is not the {trained} tensor the mask was trained on: this is a different or modified "
            "base model."
        )
    raise BaseModelMismatchError(
        f"{name} is {current} in the base model, but the mask was trained on {trained} and records no {current} "
        f"digest for it; load the base in {trained} (dtype=torch.{trained})."
    )


def check_fingerprint(base: BaseTensors, expected: dict[str, Any]) -> None:
    """Raise `BaseModelMismatchError` naming the first config field or tensor that differs from `expected`."""
    recorded = expected["config"]
    for key in sorted(set(recorded) & set(base.config)):
        if recorded[key] != base.config[key]:
            raise BaseModelMismatchError(
                f"The base model's config has {key}={base.config[key]!r}, but the mask was trained on a base with "
                f"{key}={recorded[key]!r}."
            )
    records = {name: tensor_record(entry) for name, entry in expected["tensors"].items()}
    missing = [name for name in records if name not in base.tensors]
    if missing:
        raise BaseModelMismatchError(
            f"The base model has no tensor {missing[0]!r}, which the mask's base has: it is another architecture or "
            "another head."
        )
    extra = [name for name in base.tensors if name not in records]
    if extra:
        raise BaseModelMismatchError(
            f"The base model has a tensor {extra[0]!r} that the mask's base did not have: it is another architecture "
            "or another head."
        )
    # Hashed on this thread: a thread pool halved the hashing (53 -> 29 ms on MiniLM) but left glibc's
    # allocator handing later large allocations fresh pages, tripling mask switch times.
    in_trained_dtype = [_check_tensor(base, name, records[name]) for name in base.tensors]
    # Every tensor matched its short digest; where all are in the dtype they were trained in, the full one
    # over all of them is checkable too (a base loaded in another dtype is checked per tensor only).
    if "sha256" in expected and all(in_trained_dtype):
        if _combined_digest(list(expected["tensors"]), base.digest) != expected["sha256"]:
            raise BaseModelMismatchError(
                "The base model's tensors differ from those the mask was trained on (the full digest over all of "
                "them does not match): this is a different or modified base model."
            )
