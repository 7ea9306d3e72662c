"""The mask repo's README.md: a generated model card, or the user's own README with our metadata added."""

from __future__ import annotations

import os
from typing import Any

# The first line of every card this package writes: a README without it is the user's and is kept.
GENERATED_MARKER = "<!-- hf-masking: generated model card, rewritten on every save. Delete this line to keep edits. -->"


def _metadata(record: dict[str, Any]) -> dict[str, Any]:
    base = record.get("base_model_name_or_path")
    data: dict[str, Any] = {"library_name": "hf-masking", "tags": ["hf-masking", "masking"]}
    if record.get("model_type"):
        data["tags"].append(record["model_type"])
    if base and not os.path.isabs(base) and not base.startswith("."):
        data["base_model"] = base
    return data


def generated_card(record: dict[str, Any], sparsity: dict[str, Any], nbytes: int, repo_id: str | None = None) -> str:
    """A model card for a mask repo: what it is, how sparse each block is, how to load it."""
    from huggingface_hub import ModelCardData

    base = record["base_model_name_or_path"]
    revision = record.get("base_model_revision")
    front = ModelCardData(**_metadata(record)).to_yaml()
    blocks = "\n".join(f"| {block} | {value:.2%} |" for block, value in sparsity["blocks"].items())
    load_id = repo_id or "path/to/this/folder"
    return f"""---
{front}
---
{GENERATED_MARKER}

# Binary mask for `{base}`

This repo holds a learned binary mask (Zhao et al., 2020, *Masking as an Efficient Alternative to
Finetuning for Pretrained Language Models*) over the frozen weights of `{base}`
(revision `{revision or "not pinned"}`), plus the small task head, {nbytes / 1024:,.0f} KiB in all.
The base weights are not copied: the base is loaded from its own repo or folder and checked
against a fingerprint of every tensor.

- head: `{record["head_class"]}`
- masked weights: {sparsity["masked_weights"]:,} in {len(record["masked_modules"])} layers
- masked out: {sparsity["global"]:.2%} of them

| block | masked out |
|---|---|
{blocks}

## Use

```python
from hf_masking import MaskedModel

model = MaskedModel.from_pretrained("{load_id}")
```
"""


def updated_card(existing: str | None, generated: str, record: dict[str, Any]) -> str:
    """The README to save: `generated` unless the folder has a README the user wrote.

    A user's README keeps its text; only the metadata the Hub needs to list the repo as an
    hf-masking mask (library name, tags, base model) is added to its front matter, as PEFT does.
    """
    if existing is None or GENERATED_MARKER in existing:
        return generated
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(existing, ignore_metadata_errors=True)
    except ValueError:
        return existing  # front matter we cannot parse: leave the user's file exactly as it is
    wanted = _metadata(record)
    card.data.library_name = wanted["library_name"]
    tags = list(card.data.tags or [])
    card.data.tags = tags + [t for t in wanted["tags"] if t not in tags]
    if "base_model" in wanted and not card.data.base_model:
        card.data.base_model = wanted["base_model"]
    return str(card)
