"""Which modules of a model get masked: the paper's defaults per architecture, or any model by pattern."""

from __future__ import annotations

import re
from collections import Counter
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
        return split_block(module_name, self.block_prefix)[0]


def split_block(name: str, block_prefix: str | None) -> tuple[int | None, str]:
    """(block index, name inside the block) of a module: ``bert.encoder.layer.3.attention.self.query`` in
    ``bert.encoder.layer`` is (3, ``attention.self.query``); outside the blocks (pooler, classifier), (None, name)."""
    if block_prefix is None or not name.startswith(block_prefix + "."):
        return None, name
    index, _, rest = name[len(block_prefix) + 1 :].partition(".")
    return (int(index), rest) if index.isdigit() and rest else (None, name)


_BLOCK_IN_NAME = re.compile(r"^(.+?)\.(\d+)\.")


def block_prefix_of(names: list[str]) -> str | None:
    """The block list most of `names` sit in, for a repo read without its model (`find_blocks` needs one)."""
    prefixes = Counter(match.group(1) for name in names if (match := _BLOCK_IN_NAME.match(name)))
    return prefixes.most_common(1)[0][0] if prefixes else None


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


# What head='auto' does per head kind, by measurement (bench/accuracy.py --preset cpu_heads and
# cpu_heads_conll_2000, MiniLM-L6, 3 seeds; BENCHMARKS.md). Regression and multi-label heads need their
# output's scale and offset (STS-B: 17.1 masked, 77.0 trained). A trained tagging head gained on CoNLL at both
# budgets (+1.8 and +2.3 F1, with a third of the seed spread) and on a low-resource NER set by 30 F1. On
# sentence classification and multiple choice the trained head's gains (+0.5 to +1.4) are within seed noise:
# the paper's masked head stays. Heads not measured (question answering, …) keep the paper's too.
AUTO_HEAD_MODES = {
    "regression": "train",
    "multi_label_classification": "train",
    "token_classification": "train",
    "sequence_classification": "mask",
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


@dataclass(frozen=True)
class _Candidates:
    """What selecting modules in one model starts from."""

    model: nn.Module
    maskable: list[str]  # every Linear/Conv1D, in model order
    block_prefix: str | None
    num_blocks: int

    @property
    def kind(self) -> str:
        return type(self.model).__name__


def _masked_blocks(config: MaskingConfig, found: _Candidates) -> list[int]:
    """The block indices `config.layers` names, checked; by default all but the bottom two (the paper's)."""
    if config.layers is None:
        return list(range(min(NUM_UNMASKED_BOTTOM_BLOCKS, found.num_blocks), found.num_blocks))
    if found.num_blocks == 0:
        raise ValueError(
            f"MaskingConfig.layers={config.layers!r} is invalid: no list of transformer blocks was found in "
            f"{found.kind}; use extra_patterns to choose modules by name."
        )
    out_of_range = [i for i in config.layers if i >= found.num_blocks]
    if out_of_range:
        raise ValueError(
            f"MaskingConfig.layers={config.layers!r} is invalid: block index {out_of_range[0]} is out of range; "
            f"{found.kind} has {found.num_blocks} blocks (0-{found.num_blocks - 1})."
        )
    return list(config.layers)


def _by_regex(pattern: str, blocks: list[int], found: _Candidates) -> list[str]:
    """PEFT's string form: one regex over full names, inside the chosen blocks (or outside any block)."""
    chosen = set(blocks)
    selected = [
        name
        for name in found.maskable
        if re.fullmatch(pattern, name) and split_block(name, found.block_prefix)[0] in (None, *chosen)
    ]
    if not selected:
        raise ValueError(
            f"MaskingConfig.target_modules={pattern!r} matches no linear module of {found.kind} in "
            f"blocks {sorted(chosen)}; its linear modules are: {_listing(found.maskable)}."
        )
    return selected


def _in_blocks(suffixes_of_block, blocks: list[int], found: _Candidates) -> list[str]:  # noqa: ANN001
    """The same modules in every chosen block, picked among the linear modules of block 0."""
    first = f"{found.block_prefix}.0."
    in_block = [name[len(first) :] for name in found.maskable if name.startswith(first)]
    suffixes = suffixes_of_block(in_block)
    return [f"{found.block_prefix}.{index}.{suffix}" for index in sorted(blocks) for suffix in suffixes]


def _by_names(entries: list[str], found: _Candidates):  # noqa: ANN202
    """Names inside a block, or suffixes of them ('query' matches 'attention.self.query'), each required to match."""

    def pick(in_block: list[str]) -> list[str]:
        suffixes: list[str] = []
        for entry in entries:
            matches = [r for r in in_block if r == entry or r.endswith("." + entry)]
            if not matches:
                raise ValueError(
                    f"MaskingConfig.target_modules: {entry!r} is not a linear module of a {found.kind} block, nor a "
                    f"suffix of one; the linear modules of a block are: {_listing(in_block)}."
                )
            suffixes += [m for m in matches if m not in suffixes]
        return suffixes

    return pick


def _paper_defaults(found: _Candidates):  # noqa: ANN202
    """The paper's six per block for the architectures it names; every linear module of a block otherwise."""
    model_type = getattr(getattr(found.model, "config", None), "model_type", None) or ""
    if model_type in DEFAULT_BLOCK_TARGETS:
        return _by_names(DEFAULT_BLOCK_TARGETS[model_type], found)
    return lambda in_block: in_block


def _block_targets(config: MaskingConfig, found: _Candidates) -> list[str]:
    """What `target_modules` selects: a regex, names, 'all-linear', or the defaults."""
    targets = config.target_modules
    blocks = _masked_blocks(config, found)
    if isinstance(targets, str) and targets != ALL_LINEAR:
        return _by_regex(targets, blocks, found)
    if not found.num_blocks:
        if targets:
            raise ValueError(
                f"MaskingConfig.target_modules={targets!r} is invalid: no list of transformer blocks was found in "
                f"{found.kind}; use a regular expression over full module names, or extra_patterns: "
                f"{_listing(found.maskable)}."
            )
        return []
    if targets == ALL_LINEAR:
        return _in_blocks(lambda in_block: in_block, blocks, found)
    return _in_blocks(_by_names(targets, found) if targets else _paper_defaults(found), blocks, found)


def _pooler_and_head(config: MaskingConfig, found: _Candidates, heads: list[str]) -> list[str]:
    """The pooler's dense layer (`mask_pooler`) and the task head's linear layers (`mask_classifier`)."""
    selected = []
    for name in found.maskable:
        top = name.split(".", 1)[0]
        if config.mask_pooler and top not in heads and _POOLER_NAME.search(name):
            selected.append(name)
        if (
            config.mask_classifier
            and top in heads
            and not _tied_to_backbone(found.model, found.model.get_submodule(name))
        ):
            selected.append(name)
    return selected


def _by_extra_patterns(config: MaskingConfig, found: _Candidates, trained: list[str]) -> list[str]:
    selected = []
    for pattern in config.extra_patterns or []:
        matches = [name for name in found.maskable if re.fullmatch(pattern, name)]
        if not matches:
            raise ValueError(
                f"MaskingConfig.extra_patterns: {pattern!r} matches no linear module of {found.kind}; "
                f"its linear modules are: {_listing(found.maskable)}."
            )
        clash = next((name for name in matches if is_within(name, trained)), None)
        if clash is not None:
            raise ValueError(
                f"MaskingConfig.extra_patterns: {pattern!r} selects {clash}, which is trained in full instead "
                "(modules_to_save, or head='train'); a module is either masked or trained."
            )
        selected += matches
    return selected


def resolve_targets(model: nn.Module, config: MaskingConfig, modules: list[str] | None = None) -> ResolvedTargets:
    """Names of the modules `config` selects in `model`; a clear ValueError for anything that matches nothing.

    With `modules` (a stored repo's list), exactly those modules, each checked to exist.
    """
    block_prefix, num_blocks = find_blocks(model)
    heads = head_prefixes(model)
    if modules is not None:
        return ResolvedTargets(_explicit_targets(model, modules), block_prefix, num_blocks, heads)
    maskable = [name for name, module in model.named_modules() if isinstance(module, MASKABLE_TYPES)]
    found = _Candidates(model, maskable, block_prefix, num_blocks)
    trained = trained_modules(model, config)
    selected = [
        *_block_targets(config, found),
        *_pooler_and_head(config, found, heads),
        *_by_extra_patterns(config, found, trained),
    ]
    order = {name: i for i, name in enumerate(maskable)}
    modules = sorted({name for name in selected if not is_within(name, trained)}, key=order.__getitem__)
    if not modules:
        raise ValueError(
            f"MaskingConfig selects no module of {type(model).__name__}; its linear modules are: {_listing(maskable)}."
        )
    return ResolvedTargets(modules, block_prefix, num_blocks, heads)
