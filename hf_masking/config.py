"""`MaskingConfig`: every knob of the method, validated once, serialised as JSON."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

BINARIZERS = ("threshold", "topk")
# bfloat16 halves the scores, their gradients and Adam's states; float16 is refused, since its
# 5 exponent bits lose Adam's small updates (and the Trainer's fp16 scaler refuses fp16 parameters).
SCORE_DTYPES = ("float32", "bfloat16")
# How the task head (the modules the base checkpoint lacks) learns; "auto" picks per head kind (targets.head_mode).
HEAD_MODES = ("auto", "mask", "train")
# Scores are fp32: keep the threshold and initial range far inside its range (3.4e38).
_SCORE_LIMIT = 1e30


ALL_LINEAR = "all-linear"


def _check_regex(name: str, pattern: str, bad: Any) -> None:
    import re

    try:
        re.compile(pattern)
    except re.error as err:
        raise bad(name, pattern, f"not a regular expression ({err})") from err


@dataclass
class MaskingConfig:
    """What to mask and how (Zhao et al., 2020, §3). Defaults follow the paper."""

    threshold: float = field(
        default=0.01, metadata={"help": "Global threshold tau: a weight is kept where its score is >= tau."}
    )
    initial_sparsity: float = field(
        default=0.05,
        metadata={
            "help": "Fraction of zeros in the initial mask (paper: 5%). With binarizer='topk' this fraction "
            "stays fixed in every layer throughout training."
        },
    )
    init_scale: float = field(
        default=0.02,
        metadata={
            "help": "c in the score initialisation U[-c, (c + tau) / p - c], which puts exactly a fraction p "
            "of the scores below tau."
        },
    )
    binarizer: str = field(
        default="threshold",
        metadata={"help": f"How scores become a mask: one of {BINARIZERS}."},
    )
    layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "Indices of the transformer blocks to mask. Default: all but the bottom two "
            "(2-11 for BERT/RoBERTa-base, 2-5 for DistilBERT)."
        },
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Which linear modules to mask, as in PEFT: names inside a block, each matching a module's name "
            "relative to its block or a suffix of it ('query' matches 'attention.self.query'); 'all-linear' for "
            "every linear module of a block; or one regular expression matched against full module names "
            "(re.fullmatch). Default: the paper's six for BERT, RoBERTa and DistilBERT; every linear module of a "
            "block for other architectures."
        },
    )
    mask_pooler: bool = field(default=True, metadata={"help": "Mask the pooler's dense layer, if there is one."})
    mask_classifier: bool = field(
        default=True,
        metadata={
            "help": "With head='mask': mask the linear layers of the task head (BERT's classifier, RoBERTa's "
            "classifier.dense and out_proj, DistilBERT's pre_classifier and classifier), which stay at their "
            "random initialisation. False leaves them random and unmasked."
        },
    )
    head: str = field(
        default="auto",
        metadata={
            "help": f"How the task head learns: one of {HEAD_MODES}. 'mask' is the paper's: the random head is "
            "masked, never trained. 'train' trains it in full precision beside the scores (saved in the repo as "
            "the head always is): a mask can only zero a random projection's entries, so it cannot learn an "
            "output's scale and offset. 'auto' trains the heads whose output scale matters (regression, "
            "multi-label) and those where training measured better (see BENCHMARKS.md), and masks the others."
        },
    )
    extra_patterns: list[str] | None = field(
        default=None,
        metadata={
            "help": "Regular expressions matched against full module names (re.fullmatch); every linear "
            "module that matches is masked too. Use them for any architecture without built-in defaults."
        },
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "As in PEFT: modules trained in full precision (not masked) and saved in the repo, e.g. "
            "['classifier'] or a backbone layer. The task head's tensors are saved whatever this says, since its "
            "values are not in the base; whether the head trains is `head`'s choice."
        },
    )
    score_dtype: str = field(
        default="float32",
        metadata={
            "help": f"Dtype of the trainable scores: one of {SCORE_DTYPES}. bfloat16 halves their memory (scores, "
            "gradients and optimizer states: ~8 instead of ~16 bytes per masked weight with Adam) at the cost of "
            "coarser updates; the saved mask is binary either way."
        },
    )
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the score initialisation: the same config and seed give the same initial mask."},
    )

    def __setattr__(self, name: str, value: Any) -> None:
        """A field set after construction is checked like one given to the constructor (and kept only if valid)."""
        checked = self.__dict__.get("_checked", False)
        if not checked or name not in self.__dataclass_fields__:
            object.__setattr__(self, name, value)
            return
        before = self.__dict__[name]
        object.__setattr__(self, name, value)
        object.__setattr__(self, "_checked", False)
        try:
            self.__post_init__()
        except BaseException:
            object.__setattr__(self, name, before)
            raise
        finally:
            object.__setattr__(self, "_checked", True)

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, allowed: str) -> ValueError:
            return ValueError(f"MaskingConfig.{name}={value!r} is invalid: {allowed}.")

        for name in ("threshold", "initial_sparsity", "init_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(name, value, "expected a finite number")
            setattr(self, name, float(value))
        if not 0.0 < self.initial_sparsity < 1.0:
            raise bad("initial_sparsity", self.initial_sparsity, "expected a fraction strictly between 0 and 1")
        if self.init_scale <= 0:
            raise bad("init_scale", self.init_scale, "expected a positive number")
        if self.threshold + self.init_scale <= 0:
            raise bad("threshold", self.threshold, f"threshold + init_scale must be > 0 (init_scale={self.init_scale})")
        if not isinstance(self.score_dtype, str) or self.score_dtype not in SCORE_DTYPES:
            raise bad("score_dtype", self.score_dtype, f"expected one of {list(SCORE_DTYPES)}")
        if not isinstance(self.head, str) or self.head not in HEAD_MODES:
            raise bad("head", self.head, f"expected one of {list(HEAD_MODES)}")
        if not isinstance(self.binarizer, str) or self.binarizer not in BINARIZERS:
            raise bad("binarizer", self.binarizer, f"expected one of {list(BINARIZERS)}")
        if abs(self.threshold) >= _SCORE_LIMIT:
            raise bad("threshold", self.threshold, f"scores are fp32: keep it within +-{_SCORE_LIMIT:.0e}")
        if self.init_scale >= _SCORE_LIMIT:
            raise bad("init_scale", self.init_scale, f"scores are fp32: keep it below {_SCORE_LIMIT:.0e}")
        try:
            high = self.init_range[1]
        except (OverflowError, ZeroDivisionError):
            high = math.inf
        if not (math.isfinite(high) and abs(high) < _SCORE_LIMIT):
            raise bad(
                "initial_sparsity",
                self.initial_sparsity,
                f"with init_scale={self.init_scale:g} and threshold={self.threshold:g} the initial scores would reach "
                f"(init_scale + threshold) / initial_sparsity - init_scale = {high:.3g}, beyond fp32's safe "
                f"+-{_SCORE_LIMIT:.0e}: use a larger initial_sparsity",
            )
        if self.layers is not None:
            if not isinstance(self.layers, (list, tuple)):
                raise bad("layers", self.layers, "expected a list of non-negative block indices")
            self.layers = list(self.layers)
            if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 100_000 for i in self.layers):
                raise bad("layers", self.layers, "expected a list of non-negative block indices")
            if len(set(self.layers)) != len(self.layers):
                raise bad("layers", self.layers, "block indices must not repeat")
        if isinstance(self.target_modules, str):
            if not self.target_modules:
                raise bad("target_modules", self.target_modules, "an empty string selects nothing; use None")
            if self.target_modules != ALL_LINEAR:
                _check_regex("target_modules", self.target_modules, bad)
        for name in ("target_modules", "extra_patterns", "modules_to_save"):
            value = getattr(self, name)
            if value is None or (name == "target_modules" and isinstance(value, str)):
                continue
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                raise bad(name, value, "expected a list of non-empty strings")
            if not value:
                raise bad(name, value, "an empty list selects nothing; use None for the default")
            setattr(self, name, list(value))
        for pattern in self.extra_patterns or []:
            _check_regex("extra_patterns", pattern, bad)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise bad("seed", self.seed, "expected an integer from 0 to 2**63 - 1")
        for name in ("mask_pooler", "mask_classifier"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, getattr(self, name), "expected true or false")
        object.__setattr__(self, "_checked", True)

    @property
    def init_range(self) -> tuple[float, float]:
        """Bounds (low, high) of the uniform score initialisation, P(score < threshold) = initial_sparsity."""
        low = -self.init_scale
        high = (self.init_scale + self.threshold) / self.initial_sparsity - self.init_scale
        return low, high

    @property
    def torch_score_dtype(self) -> Any:
        import torch

        return getattr(torch, self.score_dtype)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskingConfig:
        if not isinstance(data, dict):
            raise ValueError(f"A MaskingConfig is a JSON object of fields, not {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown MaskingConfig field(s) {unknown}; known fields are {sorted(known)}.")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> MaskingConfig:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))
