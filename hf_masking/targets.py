"""Which modules of a model get masked: the paper's defaults per architecture, or any model by pattern."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from .config import ALL_LINEAR, MaskingConfig
from .errors import BaseModelMismatchError
from .layers import MASKABLE_TYPES, MaskedLinear

# The six linear layers of a transformer block that the paper masks (W_K, W_Q, W_V, W_AO, W_I, W_O).
_BERT_BLOCK = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
]
DEFAULT_BLOCK_TARGETS: dict[str, list[str]] = {
    "bert": _BERT_BLOCK,
    "roberta": _BERT_BLOCK,
    "xlm-roberta": _BERT_BLOCK,
    "camembert": _BERT_BLOCK,
    "distilbert": [
        "attention.q_lin",
        "attention.k_lin",
        "attention.v_lin",
        "attention.out_lin",
        "ffn.lin1",
        "ffn.lin2",
    ],
}
_BLOCK_LIST_NAME = re.compile(r"(^|\.)(layer|layers|h|block|blocks)$")
_POOLER_NAME = re.compile(r"(^|\.)pooler(\.dense)?$")
NUM_UNMASKED_BOTTOM_BLOCKS = 2


@dataclass(frozen=True)
class ResolvedTargets:
    """The outcome of matching a `MaskingConfig` against one model."""

    modules: list[str]  # full names of the Linear/Conv1D modules to mask, in model order
    block_prefix: str | None  # e.g. "bert.encoder.layer"
    num_blocks: int
    head_prefixes: list[str]  # top-level children outside the pretrained backbone

    def block_of(self, module_name: str) -> int | None:
        return _block_index(module_name, self.block_prefix)


def _block_index(name: str, block_prefix: str | None) -> int | None:
    if block_prefix is None or not name.startswith(block_prefix + "."):
        return None
    return int(name[len(block_prefix) + 1 :].split(".", 1)[0])


def _listing(names: list[str], limit: int = 60) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … and {len(names) - limit} more" if len(names) > limit else "")


def find_blocks(model: nn.Module) -> tuple[str | None, int]:
    """The longest ModuleList of transformer blocks, e.g. ("bert.encoder.layer", 12)."""
    best: tuple[str | None, int] = (None, 0)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and _BLOCK_LIST_NAME.search(name) and len(module) > best[1]:
            best = (name, len(module))
    return best


def backbone_prefix(model: nn.Module) -> str | None:
    """Name of the pretrained backbone inside a task model (``bert`` in BertForSequenceClassification)."""
    prefix = getattr(model, "base_model_prefix", None)
    if prefix and isinstance(getattr(model, prefix, None), nn.Module) and getattr(model, prefix) is not model:
        return prefix
    return None


def is_language_model_head(model: nn.Module) -> bool:
    """Whether the model's head produces vocabulary logits (causal or masked LM): pretrained with the base."""
    get = getattr(model, "get_output_embeddings", None)
    try:
        return get is not None and isinstance(get(), nn.Module)
    except (AttributeError, NotImplementedError):
        return False


def head_prefixes(model: nn.Module) -> list[str]:
    """Top-level children that are not the backbone: the task head that the base checkpoint lacks.

    A language-model head (``lm_head``, tied or not) is in the base checkpoint: it is base, not head.
    """
    prefix = backbone_prefix(model)
    if prefix is None or is_language_model_head(model):
        return []
    return [name for name, child in model.named_children() if name != prefix and any(True for _ in child.parameters())]


def _tied_to_backbone(model: nn.Module, module: nn.Module) -> bool:
    prefix = backbone_prefix(model)
    if prefix is None:
        return False
    backbone_ids = {id(p) for p in getattr(model, prefix).parameters()}
    return id(module.weight) in backbone_ids


def _explicit_targets(model: nn.Module, modules: list[str]) -> list[str]:
    """Check a stored list of module names against `model`: each must exist and be a Linear/Conv1D.

    Used when loading a repo, whose list is authoritative: no pattern from the repo is ever matched.
    """
    maskable = {name for name, m in model.named_modules() if isinstance(m, (*MASKABLE_TYPES, MaskedLinear))}
    for name in modules:
        if name not in maskable:
            try:
                kind = type(model.get_submodule(name)).__name__
            except AttributeError:
                kind = None
            what = f"is a {kind}, not a linear layer" if kind else "does not exist"
            raise BaseModelMismatchError(
                f"The mask masks module {name!r}, which in this {type(model).__name__} {what}: the base model is "
                "another architecture."
            )
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(modules, key=order.__getitem__)


def check_modules_to_save(model: nn.Module, config: MaskingConfig) -> None:
    """Refuse `modules_to_save` entries that name no module, hold no parameter, or share weights with the
    backbone (training a tied ``lm_head`` would change the base's embeddings, which the repo does not carry)."""
    names = {name for name, _ in model.named_modules()}
    for entry in config.modules_to_save or []:
        if entry not in names:
            tops = [name for name, _ in model.named_children()]
            raise ValueError(
                f"MaskingConfig.modules_to_save: {entry!r} is not a module of {type(model).__name__}; its top-level "
                f"modules are: {_listing(tops)}."
            )
        module = model.get_submodule(entry)
        if not any(True for _ in module.parameters()):
            raise ValueError(f"MaskingConfig.modules_to_save: {entry!r} has no parameters to train.")
        elsewhere = {
            id(p) for name, p in model.named_parameters(remove_duplicate=False) if not is_within(name, [entry])
        }
        shared = [name for name, p in module.named_parameters(remove_duplicate=False) if id(p) in elsewhere]
        if shared:
            raise ValueError(
                f"MaskingConfig.modules_to_save: {entry!r} shares {entry}.{shared[0]} with another module (tied "
                "weights); training it would change the base model too. Name a module with weights of its own."
            )


def is_within(name: str, modules: list[str]) -> bool:
    """Whether the module or tensor `name` is one of `modules` or inside one."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def head_kind(model: nn.Module) -> str:
    """What the task head computes, as far as masking cares: ``regression``, ``multi_label_classification``,
    ``sequence_classification``, ``token_classification``, ``multiple_choice``, or ``other``."""
    config = getattr(model, "config", None)
    name = type(model).__name__
    problem = getattr(config, "problem_type", None)
    if name.endswith("ForSequenceClassification"):
        if problem in ("regression", "multi_label_classification"):
            return problem
        # transformers' own rule when problem_type is unset: one label is regression (MSE loss).
        return "regression" if problem is None and getattr(config, "num_labels", 2) == 1 else "sequence_classification"
    for suffix, kind in (("ForTokenClassification", "token_classification"), ("ForMultipleChoice", "multiple_choice")):
        if name.endswith(suffix):
            return kind
    return "other"


# What head='auto' does per head kind. Regression and multi-label heads need their output's scale and offset
# (targets 0-5, sigmoid biases), which masking a random projection cannot learn; the rest follows the
# head benchmark (BENCHMARKS.md, "Heads": bench/accuracy.py --preset cpu_heads).
AUTO_HEAD_MODES = {
    "regression": "train",
    "multi_label_classification": "train",
    "sequence_classification": "mask",
    "token_classification": "mask",
    "multiple_choice": "mask",
    "other": "mask",
}


def head_mode(model: nn.Module, config: MaskingConfig) -> str:
    """``"mask"`` or ``"train"``: the config's `head`, with ``"auto"`` resolved for this model's head."""
    return AUTO_HEAD_MODES[head_kind(model)] if config.head == "auto" else config.head


def trained_modules(model: nn.Module, config: MaskingConfig) -> list[str]:
    """Modules trained in full precision instead of masked: the task head when it trains, and `modules_to_save`."""
    trained = list(head_prefixes(model)) if head_mode(model, config) == "train" else []
    return trained + [m for m in config.modules_to_save or [] if m not in trained]


def resolve_targets(model: nn.Module, config: MaskingConfig, modules: list[str] | None = None) -> ResolvedTargets:
    """Names of the modules `config` selects in `model`; a clear ValueError for anything that matches nothing.

    With `modules` (a stored repo's list), exactly those modules, each checked to exist.
    """
    block_prefix, num_blocks = find_blocks(model)
    if modules is not None:
        return ResolvedTargets(
            modules=_explicit_targets(model, modules),
            block_prefix=block_prefix,
            num_blocks=num_blocks,
            head_prefixes=head_prefixes(model),
        )
    maskable = [name for name, module in model.named_modules() if isinstance(module, MASKABLE_TYPES)]
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    selected: list[str] = []

    if config.layers is not None:
        if num_blocks == 0:
            raise ValueError(
                f"MaskingConfig.layers={config.layers!r} is invalid: no list of transformer blocks was found in "
                f"{type(model).__name__}; use extra_patterns to choose modules by name."
            )
        out_of_range = [i for i in config.layers if i >= num_blocks]
        if out_of_range:
            raise ValueError(
                f"MaskingConfig.layers={config.layers!r} is invalid: block index {out_of_range[0]} is out of range; "
                f"{type(model).__name__} has {num_blocks} blocks (0-{num_blocks - 1})."
            )
        layers = list(config.layers)
    else:
        layers = list(range(min(NUM_UNMASKED_BOTTOM_BLOCKS, num_blocks), num_blocks))

    targets = config.target_modules
    if isinstance(targets, str) and targets != ALL_LINEAR:  # one regex over full names, as in PEFT
        chosen = set(layers)
        for name in maskable:
            if re.fullmatch(targets, name):
                block = _block_index(name, block_prefix)
                if block is None or block in chosen:
                    selected.append(name)
        if not selected:
            raise ValueError(
                f"MaskingConfig.target_modules={targets!r} matches no linear module of {type(model).__name__} in "
                f"blocks {sorted(chosen)}; its linear modules are: {_listing(maskable)}."
            )
    elif num_blocks:
        in_block: list[str] = []
        for name in maskable:
            if name.startswith(f"{block_prefix}.0."):
                in_block.append(name[len(f"{block_prefix}.0.") :])
        if targets == ALL_LINEAR:
            suffixes = in_block
        else:
            suffixes = []
            for entry in targets or DEFAULT_BLOCK_TARGETS.get(model_type or "", in_block):
                matches = [r for r in in_block if r == entry or r.endswith("." + entry)]
                if not matches:
                    raise ValueError(
                        f"MaskingConfig.target_modules: {entry!r} is not a linear module of a {type(model).__name__} "
                        f"block, nor a suffix of one; the linear modules of a block are: {_listing(in_block)}."
                    )
                suffixes += [m for m in matches if m not in suffixes]
        for index in sorted(layers):
            selected += [f"{block_prefix}.{index}.{suffix}" for suffix in suffixes]
    elif targets:
        raise ValueError(
            f"MaskingConfig.target_modules={targets!r} is invalid: no list of transformer blocks was found in "
            f"{type(model).__name__}; use a regular expression over full module names, or extra_patterns: "
            f"{_listing(maskable)}."
        )

    heads = head_prefixes(model)
    for name in maskable:
        top = name.split(".", 1)[0]
        module = model.get_submodule(name)
        if config.mask_pooler and top not in heads and _POOLER_NAME.search(name):
            selected.append(name)
        if config.mask_classifier and top in heads and not _tied_to_backbone(model, module):
            selected.append(name)

    for pattern in config.extra_patterns or []:
        matches = [name for name in maskable if re.fullmatch(pattern, name)]
        if not matches:
            raise ValueError(
                f"MaskingConfig.extra_patterns: {pattern!r} matches no linear module of {type(model).__name__}; "
                f"its linear modules are: {_listing(maskable)}."
            )
        selected += matches

    trained = trained_modules(model, config)
    for pattern in config.extra_patterns or []:
        clash = next((name for name in maskable if re.fullmatch(pattern, name) and is_within(name, trained)), None)
        if clash is not None:
            raise ValueError(
                f"MaskingConfig.extra_patterns: {pattern!r} selects {clash}, which is trained in full instead "
                "(modules_to_save, or head='train'); a module is either masked or trained."
            )
    order = {name: i for i, name in enumerate(maskable)}
    modules = sorted({name for name in selected if not is_within(name, trained)}, key=order.__getitem__)
    if not modules:
        raise ValueError(
            f"MaskingConfig selects no module of {type(model).__name__}; its linear modules are: {_listing(maskable)}."
        )
    return ResolvedTargets(modules=modules, block_prefix=block_prefix, num_blocks=num_blocks, head_prefixes=heads)
