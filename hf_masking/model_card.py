"""The mask repo's README.md: a generated model card, or the user's own README with our metadata added."""

from __future__ import annotations

import os
import re
from typing import Any

from .hub import looks_like_local_path

# The first line of every card this package writes: a README without it is the user's and is kept.
GENERATED_MARKER = "<!-- hf-masking: generated model card, rewritten on every save. Delete this line to keep edits. -->"
_PIPELINE_TAGS = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForMultipleChoice": "multiple-choice",
    "ForQuestionAnswering": "question-answering",
    "ForCausalLM": "text-generation",
    "LMHeadModel": "text-generation",
}


def is_hub_id(name: str | None) -> bool:
    """Whether a recorded base names a Hub repo (what the card's ``base_model`` may link to), not a folder."""
    return bool(name) and not looks_like_local_path(name)


def _metadata(record: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    base = record.get("base_model_name_or_path")
    data: dict[str, Any] = {"library_name": "hf-masking", "tags": ["hf-masking", "masking"]}
    if record.get("model_type"):
        data["tags"].append(record["model_type"])
    if is_hub_id(base):
        data["base_model"] = base
    pipeline = info.get("pipeline_tag") or next(
        (tag for suffix, tag in _PIPELINE_TAGS.items() if record["head_class"].endswith(suffix)), None
    )
    if pipeline:
        data["pipeline_tag"] = pipeline
    if info.get("dataset"):
        data["datasets"] = [info["dataset"]]
    return data


def _task_title(record: dict[str, Any], info: dict[str, Any]) -> str:
    if info.get("task"):
        return str(info["task"])
    words = re.sub(r"([a-z])([A-Z])", r"\1 \2", record["head_class"].split("For", 1)[-1]).lower()
    return words[0].upper() + words[1:] if words else "Binary"


def _table(rows: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else f"`{value}`"

    return "\n".join(f"| {key} | {show(value)} |" for key, value in rows.items())


def generated_card(
    record: dict[str, Any],
    sparsity: dict[str, Any],
    nbytes: int,
    repo_id: str | None = None,
    info: dict[str, Any] | None = None,
) -> str:
    """A model card: what the mask is for and on, how well it did, how sparse it is, how to load it."""
    from huggingface_hub import ModelCardData

    info = info or {}
    base = record["base_model_name_or_path"]
    revision = record.get("base_model_revision")
    front = ModelCardData(**_metadata(record, info)).to_yaml()
    if is_hub_id(base):
        base_line = f"[`{base}`](https://huggingface.co/{base}) at revision `{revision or 'main'}`"
        load_note = "the base is downloaded at that revision"
    else:
        base_line = f"`{os.path.basename(str(base).rstrip('/')) if base else 'unknown'}`, a local folder when saved"
        load_note = "pass `base_model=` with the path or Hub id of that base"
    title_base = base.rsplit("/", 1)[-1] if base else "its base"
    labels = record["label_config"].get("id2label") or {}
    label_line = ", ".join(f"{k}: {v}" for k, v in list(labels.items())[:20]) + (" …" if len(labels) > 20 else "")
    blocks = "\n".join(f"| {block} | {value:.2%} |" for block, value in sparsity["blocks"].items())
    sections = []
    if info.get("metrics"):
        sections.append("## Evaluation\n\n| metric | value |\n|---|---|\n" + _table(info["metrics"]))
    if info.get("hyperparameters"):
        sections.append("## Training\n\n| hyperparameter | value |\n|---|---|\n" + _table(info["hyperparameters"]))
    extra = "\n\n".join(sections) + ("\n\n" if sections else "")
    load_id = repo_id or "path/to/this/folder"
    masked_out = f"{sparsity['global']:.2%}"
    dataset = f" trained on {info['dataset']}" if info.get("dataset") else ""
    return f"""---
{front}
---
{GENERATED_MARKER}

# {_task_title(record, info)} mask for {title_base}

A learned binary mask{dataset} (Zhao et al., 2020, *Masking as an Efficient Alternative to
Finetuning for Pretrained Language Models*) over the frozen weights of {base_line}, plus the small
task head: {nbytes / 1024:,.0f} KiB in all. The base weights are not copied: {load_note}, and it
is checked against a fingerprint of every tensor.

- head: `{record["head_class"]}`{f"; labels {label_line}" if label_line else ""}
- masked weights: {sparsity["masked_weights"]:,} in {len(record["masked_modules"])} layers, {masked_out} masked out

{extra}## Sparsity per block

| block | masked out |
|---|---|
{blocks}

## Use

```python
from hf_masking import MaskedModel

model = MaskedModel.from_pretrained("{load_id}")
```

`transformers`' `AutoModel…from_pretrained` and `pipeline` cannot load this repo: it holds a mask,
not weights. For plain `transformers`, save the merged model once:
`MaskedModel.from_pretrained("{load_id}").merge().save_pretrained("merged")`.
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
    wanted = _metadata(record, {})
    card.data.library_name = wanted["library_name"]
    tags = list(card.data.tags or [])
    card.data.tags = tags + [t for t in wanted["tags"] if t not in tags]
    if "base_model" in wanted and not card.data.base_model:
        card.data.base_model = wanted["base_model"]
    return str(card)
