"""`MaskingArguments`: every `MaskingConfig` knob as a command-line flag for the example scripts.

Generated from `MaskingConfig`'s fields, so a new knob is a new flag without a second list to
keep in sync. Flags are prefixed ``mask_`` (``--mask_initial_sparsity 0.05``) because
``TrainingArguments`` already owns names such as ``--seed``.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any

from .config import MaskingConfig


def _flag_name(name: str) -> str:
    return name if name.startswith("mask_") else f"mask_{name}"


_REGEX_CHARACTERS = set("*+?[](){}|^$\\")


def _to_masking_config(self: Any, default_seed: int | None = None) -> MaskingConfig:
    values = {f.name: getattr(self, _flag_name(f.name)) for f in fields(MaskingConfig)}
    targets = values["target_modules"]
    if targets and len(targets) == 1 and (targets[0] == "all-linear" or _REGEX_CHARACTERS & set(targets[0])):
        values["target_modules"] = targets[0]  # one regex, or all-linear: PEFT's string forms
    if values["seed"] is None:
        values["seed"] = default_seed if default_seed is not None else 0
    return MaskingConfig(**values)


def _build() -> type:
    specs: list[tuple[str, Any, Any]] = [
        ("no_masking", bool, field(default=False, metadata={"help": "Plain finetuning instead of masking."})),
        (
            "mask_from",
            str | None,
            field(
                default=None,
                metadata={
                    "help": "A mask repo (folder, Hub id, or a Trainer checkpoint of a mask) to evaluate "
                    "(--do_eval/--do_predict) or to train further (--do_train) instead of a new mask."
                },
            ),
        ),
    ]
    specs += [
        (
            "head_learning_rate",
            float | None,
            field(
                default=None,
                metadata={
                    "help": "Learning rate of what masking trains in full (a head with --mask_head train or auto, "
                    "--mask_modules_to_save); the scores keep --learning_rate. Default: --learning_rate."
                },
            ),
        ),
        (
            "mask_learning_rate",
            float | None,
            field(
                default=None,
                metadata={
                    "help": "Learning rate of the mask scores alone; everything else (a trained head, "
                    "--mask_modules_to_save) keeps --learning_rate (or --head_learning_rate). Default: "
                    "--learning_rate. Masking needs rates 10-100x finetuning's; a warning at the start of "
                    "training says when the planned training cannot move the mask."
                },
            ),
        ),
        (
            "lora_r",
            int | None,
            field(
                default=None,
                metadata={
                    "help": "Instead of masking, train a PEFT LoRA adapter of this rank on the attention query and "
                    "value (with a trained head): the parameter-efficient baseline to compare masking with."
                },
            ),
        ),
        ("lora_alpha", int, field(default=16, metadata={"help": "LoRA scaling numerator (with --lora_r)."})),
        ("lora_dropout", float, field(default=0.1, metadata={"help": "LoRA dropout (with --lora_r)."})),
    ]
    for f in fields(MaskingConfig):
        default = f.default if f.default is not MISSING else None
        annotation = f.type
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help strings with %
        if f.name == "target_modules":  # a list on the command line; one regex or all-linear becomes a string
            annotation = "list[str] | None"
            help_text += " On the command line: names, all-linear, or one regex."
        if f.name == "seed":  # follows --seed unless given
            annotation, default = "int | None", None
            help_text += " Default: the training --seed."
        specs.append((_flag_name(f.name), annotation, field(default=default, metadata={"help": help_text})))
    cls = make_dataclass(
        "MaskingArguments",
        specs,
        namespace={"to_masking_config": _to_masking_config, "__module__": __name__},
    )
    cls.__doc__ = "Masking flags of the example scripts; `to_masking_config()` turns them into a `MaskingConfig`."
    return cls


MaskingArguments = _build()


@dataclass
class ModelArguments:
    """Which model, config and tokenizer the example scripts start from (the originals' flags)."""

    model_name_or_path: str = field(metadata={"help": "Path to a pretrained model or its id on the Hub."})
    config_name: str | None = field(default=None, metadata={"help": "Config name or path, if not the model's."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer name or path, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store models downloaded from the Hub."})
    use_fast_tokenizer: bool = field(default=True, metadata={"help": "Use a fast (Rust) tokenizer."})
    model_revision: str = field(default="main", metadata={"help": "Model version: branch, tag or commit id."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow models defined on the Hub in code."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Allow a checkpoint whose head has another number of labels."}
    )

    def hub_kwargs(self) -> dict[str, Any]:
        """The keyword arguments every ``from_pretrained`` call of a script shares."""
        return {
            "cache_dir": self.cache_dir,
            "revision": self.model_revision,
            "token": self.token,
            "trust_remote_code": self.trust_remote_code,
        }
