"""Masks on labelled data (paper Tables 2 and 3): each mask alone, their ensembles, the majority baseline,
and a mask applied to another dataset of its task type through a label map.

Files are read by the example scripts' readers (GLUE files as distributed, csv/tsv/json(l)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data import GLUE, DataFileError, load_files
from .ensemble import combine_logits
from .metrics import majority_label


@dataclass
class LabelledTexts:
    """Sentences (or sentence pairs) with their gold labels, as label names."""

    first: list[str]
    second: list[str] | None
    labels: list[str]

    def head(self, rows: int) -> LabelledTexts:
        """The first `rows` rows."""
        second = self.second[:rows] if self.second is not None else None
        return LabelledTexts(self.first[:rows], second, self.labels[:rows])


def read_labelled(
    path: str, task_name: str | None = None, label_column: str = "label", text_columns: list[str] | None = None
) -> LabelledTexts:
    """A classification file: GLUE's own format with `task_name`, else csv/tsv/json(l) with a label column."""
    if task_name is not None and task_name not in GLUE:
        raise ValueError(f"task_name {task_name!r} is not a GLUE task {sorted(GLUE)}.")
    column = "label" if task_name else label_column
    data = load_files({"validation": path}, task_name, column, flags={"validation": "data"})["validation"]
    column = "label" if task_name else label_column
    if column not in data.column_names:
        raise DataFileError(f"{path!r} has no label column {column!r} (columns: {data.column_names}).")
    if task_name is not None:
        names = GLUE[task_name].labels
        if names is None:
            raise ValueError("evaluate handles classification; stsb is a regression task.")
        labels = [names[i] for i in data[column]]
        keys = [k for k in GLUE[task_name].keys if k is not None]
    else:
        labels = [str(v) for v in data[column]]
        keys = text_columns or [c for c in data.column_names if c != column][:2]
    missing = [k for k in keys if k not in data.column_names]
    if not keys or missing:
        raise DataFileError(f"{path!r} has no text column {missing[0] if missing else ''!r} to read.")
    return LabelledTexts(data[keys[0]], data[keys[1]] if len(keys) > 1 else None, labels)


def gold_ids(labels: list[str], id2label: dict[int, str], label_map: dict[str, str] | None = None) -> np.ndarray:
    """The model's label ids of the gold labels: by name (after `label_map`, data label -> model label), or
    an integer label read as an id when the model's labels are unnamed (LABEL_0…)."""
    by_name = {name: i for i, name in id2label.items()}
    out = []
    for label in labels:
        name = (label_map or {}).get(label, label)
        if name in by_name:
            out.append(by_name[name])
        elif name.lstrip("-").isdigit() and int(name) in id2label and id2label[int(name)] == f"LABEL_{int(name)}":
            out.append(int(name))
        else:
            raise ValueError(
                f"The data's label {label!r} is not one of the mask's labels {list(id2label.values())}; map it with "
                "--label-map data_label=mask_label,..."
            )
    return np.asarray(out)


def _batches(data: LabelledTexts, tokenizer: Any, batch_size: int, max_length: int, device: torch.device):
    for start in range(0, len(data.labels), batch_size):
        first = data.first[start : start + batch_size]
        second = data.second[start : start + batch_size] if data.second is not None else None
        batch = tokenizer(first, second, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        yield batch.to(device)


def model_logits(
    model: Any, data: LabelledTexts, tokenizer: Any, batch_size: int = 32, max_length: int = 128
) -> torch.Tensor:
    """A model's logits on every row (any sequence-classification model: plain, merged or masked)."""
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        parts = [model(**b).logits.float().cpu() for b in _batches(data, tokenizer, batch_size, max_length, device)]
    return torch.cat(parts)


def mask_logits(
    model: Any, names: list[str], data: LabelledTexts, tokenizer: Any, batch_size: int = 32, max_length: int = 128
) -> dict[str, torch.Tensor]:
    """Each mask's logits on every row, with that mask active alone."""
    previous = model.active_mask
    try:
        out = {}
        for name in names:
            model.set_active_mask(name)
            out[name] = model_logits(model, data, tokenizer, batch_size, max_length)
    finally:
        model.set_active_mask(previous)
    return out


def interpolate(
    start: torch.nn.Module, end: torch.nn.Module, gammas: list[float], score: Any
) -> list[tuple[float, float]]:
    """§6.3's mode connectivity: score(W(γ)) for W(γ) = W_start + γ (W_end − W_start), on a copy of `start`.

    Every floating-point tensor is interpolated, the head included; the two models must have the
    same tensors (names and shapes).
    """
    import copy

    first = dict(start.state_dict())
    last = dict(end.state_dict())
    difference = sorted(set(first) ^ set(last))
    if difference:
        raise ValueError(f"The two models have different tensors (first difference: {difference[0]}).")
    mismatch = [n for n in first if first[n].shape != last[n].shape]
    if mismatch:
        raise ValueError(
            f"{mismatch[0]} has shape {list(first[mismatch[0]].shape)} in one model and "
            f"{list(last[mismatch[0]].shape)} in the other: interpolate models of one task's label set."
        )
    work = copy.deepcopy(start).eval()
    own = work.state_dict()
    results = []
    with torch.no_grad():
        for gamma in gammas:
            for name, value in first.items():
                if value.is_floating_point():
                    own[name].copy_(value + gamma * (last[name].to(value.dtype) - value))
            results.append((float(gamma), float(score(work))))
    return results


def evaluate(logits: dict[str, torch.Tensor], gold: np.ndarray, ensembles: tuple[str, ...] = ()) -> dict[str, Any]:
    """Accuracy of each mask and of each ensemble, and the majority baseline of the evaluated labels."""
    majority = majority_label(gold.tolist())
    baseline = float((gold == majority).mean())
    results: dict[str, Any] = {
        "rows": int(gold.size),
        "majority_baseline": {"label_id": int(majority), "accuracy": baseline},
    }

    def score(predictions: np.ndarray) -> dict[str, float]:
        accuracy = float((predictions == gold).mean())
        return {"accuracy": accuracy, "over_majority": accuracy - baseline}

    results["masks"] = {name: score(values.argmax(-1).numpy()) for name, values in logits.items()}
    stacked = torch.stack(list(logits.values()))
    results["ensembles"] = {how: score(combine_logits(stacked, how).argmax(-1).numpy()) for how in ensembles}
    return results


def representations(
    model: Any, data: LabelledTexts, tokenizer: Any, batch_size: int = 32, max_length: int = 128
) -> torch.Tensor:
    """The top block's first-token ([CLS]) hidden state of every row (paper §6.1)."""
    model.eval()
    device = next(model.parameters()).device
    parts = []
    with torch.no_grad():
        for batch in _batches(data, tokenizer, batch_size, max_length, device):
            hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
            parts.append(hidden[:, 0].float().cpu())
    return torch.cat(parts)


def probe_accuracy(features: np.ndarray, labels: np.ndarray, folds: int = 5) -> float:
    """How linearly separable the classes are: a logistic regression's mean accuracy over stratified folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = max(2, min(folds, int(np.bincount(labels).min())))
    splits = StratifiedKFold(folds, shuffle=True, random_state=0)
    return float(cross_val_score(LogisticRegression(max_iter=2000), features, labels, cv=splits).mean())


def tsne(features: np.ndarray) -> np.ndarray:
    """A 2-D t-SNE map of the rows (fixed seed, so a figure is reproducible)."""
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, features.shape[0] // 4)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=0).fit_transform(features)
