"""Offline readers for the example scripts: GLUE files as distributed, CoNLL columns, csv/tsv/json.

Every problem with an input file (missing, unknown extension, missing column) is a clear
`DataFileError` raised before any model is loaded or trained.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd
from datasets import Dataset, DatasetDict

EXTENSIONS = ("csv", "tsv", "json", "jsonl")
# CoNLL column files come as .conll/.txt or, like CoNLL-2003 itself, named eng.train / eng.testa / eng.testb.
CONLL_EXTENSIONS = ("conll", "conll03", "txt", "iob", "bio", "train", "testa", "testb", "dev", "test")


class DataFileError(ValueError):
    """An input file is missing, of an unknown type, or lacks a needed column."""


@dataclass(frozen=True)
class GlueTask:
    keys: tuple[str, str | None]  # output text columns, as in the GLUE datasets on the Hub
    file_columns: tuple[str, str | None]  # the same columns as named in the distributed files
    label_column: str  # label column in the files
    labels: tuple[str, ...] | None  # label names (None: regression)
    headerless_columns: tuple[str, ...] | None = None  # column names of files shipped without a header


GLUE = {
    "cola": GlueTask(
        ("sentence", None),
        ("sentence", None),
        "label",
        ("unacceptable", "acceptable"),
        ("source", "label", "original_label", "sentence"),
    ),
    "sst2": GlueTask(("sentence", None), ("sentence", None), "label", ("negative", "positive")),
    "mrpc": GlueTask(
        ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent")
    ),
    "qqp": GlueTask(
        ("question1", "question2"), ("question1", "question2"), "is_duplicate", ("not_duplicate", "duplicate")
    ),
    "stsb": GlueTask(("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", None),
    "mnli": GlueTask(
        ("premise", "hypothesis"), ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction")
    ),
    "qnli": GlueTask(("question", "sentence"), ("question", "sentence"), "label", ("entailment", "not_entailment")),
    "rte": GlueTask(("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("entailment", "not_entailment")),
    "wnli": GlueTask(("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("not_entailment", "entailment")),
}


def check_file(path: str | None, what: str, extensions: tuple[str, ...] = EXTENSIONS) -> str | None:
    """Fail early and clearly on a missing file or an extension no reader handles; returns the extension."""
    if path is None:
        return None
    if os.path.isdir(path):
        raise DataFileError(f"--{what} {path!r} is a folder; give a data file in it.")
    if not os.path.isfile(path):
        raise DataFileError(f"--{what} {path!r}: no such file.")
    extension = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
    if extension not in extensions:
        raise DataFileError(f"--{what} {path!r}: unknown extension {extension!r}; expected one of {list(extensions)}.")
    return extension


def check_text_file(path: str, what: str) -> None:
    """A data file that holds UTF-8 text and something besides whitespace, or an error naming it and the flag."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    seen_text, offset = False, 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise DataFileError(
                    f"--{what} {path!r} is not UTF-8 text: byte {offset + err.start} is {chunk[err.start]:#04x}. Save "
                    "it as UTF-8."
                ) from None
            seen_text = seen_text or bool(text.strip())
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataFileError(f"--{what} {path!r} is not UTF-8 text: it ends inside a character.") from None
    if not seen_text:
        raise DataFileError(f"--{what} {path!r} is empty: there is no text in it to train or evaluate on.")


def _read_tsv(path: str, header: bool) -> pd.DataFrame:
    # GLUE files contain unescaped quote characters: read with quoting disabled; MRPC starts with a BOM.
    return pd.read_csv(
        path,
        sep="\t",
        quoting=csv.QUOTE_NONE,
        encoding="utf-8-sig",
        dtype=str,
        keep_default_na=False,
        header=0 if header else None,
    )


def read_table(path: str) -> pd.DataFrame:
    """A csv, tsv or json(l) file as a DataFrame with its own column names."""
    extension = check_file(path, "file")
    try:
        if extension == "tsv":
            return _read_tsv(path, header=True)
        if extension == "csv":
            return pd.read_csv(path, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise DataFileError(f"{path!r} is empty: it has no header and no rows.") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataFileError(f"{path!r} is not a readable {extension} file ({err}).") from err
    if os.path.getsize(path) == 0:
        raise DataFileError(f"{path!r} is empty.")
    try:
        return pd.read_json(path, lines=True)
    except ValueError:
        try:
            return pd.read_json(path)
        except ValueError as err:
            raise DataFileError(f"{path!r} is neither JSON lines nor a JSON table ({err}).") from err


def row_position(path: str, index: int) -> str:
    """Where data row `index` (0-based) of a file is, as a user would look for it."""
    extension = path.rsplit(".", 1)[-1].lower()
    if extension in ("csv", "tsv"):
        return f"line {index + 2}"  # after the header
    if extension == "jsonl":
        return f"line {index + 1}"
    return f"row {index + 1}" if extension == "json" else f"sentence {index + 1}"


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _label_kind(value: Any) -> str:
    """ "number" for numbers and text that reads as one (a csv column mixing 0 and pos is all text), else "text"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number"
    if isinstance(value, str):
        return "number" if _NUMBER.fullmatch(value.strip()) else "text"
    return type(value).__name__


def check_label_values(values: list, path: str, column: str) -> None:
    """Every label present and of one kind: a missing or mixed label would become a class of its own."""
    kinds: dict[str, int] = {}
    for i, value in enumerate(values):
        if (
            value is None
            or (isinstance(value, str) and not value.strip())
            or (isinstance(value, float) and value != value)
        ):
            raise DataFileError(f"{path!r}, {row_position(path, i)}: column {column!r} has no label.")
        kind = _label_kind(value)
        kinds.setdefault(kind, i)
        if len(kinds) > 1:
            (first_kind, first), (other_kind, other) = list(kinds.items())[:2]
            raise DataFileError(
                f"{path!r}: column {column!r} mixes label types: {values[first]!r} ({first_kind}, "
                f"{row_position(path, first)}) and {values[other]!r} ({other_kind}, {row_position(path, other)})."
            )


def check_known_labels(labels: list, path: str, column: str, known: set, train_path: str | None) -> None:
    """Refuse evaluation labels that training never saw: the model has no output for them.

    `labels` holds one label per row, or a list of them (a sentence's tags).
    """
    for i, row in enumerate(labels):
        for value in row if isinstance(row, list) else [row]:
            if value not in known:
                source = f"the training file {train_path!r}" if train_path else "the training data"
                raise DataFileError(
                    f"{path!r}, {row_position(path, i)}: label {value!r} in column {column!r} does not occur in "
                    f"{source}; the model would have no output for it."
                )


def read_glue_file(path: str, task_name: str) -> pd.DataFrame:
    """A GLUE task's tsv file as distributed: columns renamed to the Hub dataset's, labels as indices."""
    task = GLUE[task_name]
    with open(path, encoding="utf-8-sig") as handle:
        first_line = handle.readline().rstrip("\n").split("\t")
    has_header = task.headerless_columns is None or "sentence" in first_line or "index" in first_line
    frame = _read_tsv(path, header=has_header)
    if not has_header:
        frame.columns = list(task.headerless_columns)[: frame.shape[1]]
    columns = {src: dst for src, dst in zip(task.file_columns, task.keys, strict=True) if src is not None}
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataFileError(
            f"{path!r} is not a {task_name} file as distributed: no column {missing[0]!r} "
            f"(columns: {list(frame.columns)})."
        )
    out = frame[list(columns)].rename(columns=columns)
    if task.label_column in frame.columns:  # test files have no labels
        raw = frame[task.label_column]
        if task.labels is None:
            out["label"] = raw.astype(float)
        elif raw.str.fullmatch(r"\d+").all():
            out["label"] = raw.astype(int)
            bad = out.index[out["label"] >= len(task.labels)]
            if len(bad):
                raise DataFileError(
                    f"{path!r}, {row_position(path, int(bad[0]))}: label {raw[bad[0]]!r} is not a {task_name} label "
                    f"index (0-{len(task.labels) - 1})."
                )
        else:
            unknown = sorted(set(raw) - set(task.labels))
            if unknown:
                raise DataFileError(f"{path!r}: label {unknown[0]!r} is not a {task_name} label {list(task.labels)}.")
            out["label"] = raw.map(task.labels.index)
    return out


def load_files(
    files: dict[str, str | None],
    task_name: str | None = None,
    label_column: str | None = None,
    flags: dict[str, str] | None = None,
) -> DatasetDict:
    """Read the given splits (``{"train": path, ...}``, None entries skipped) into a DatasetDict.

    Each file must have data rows; `label_column`, where a file has it, must hold a label in every
    row, all of one type.
    """
    splits = {}
    for split, path in files.items():
        if path is None:
            continue
        check_file(path, (flags or {}).get(split, f"{split}_file"))
        frame = read_glue_file(path, task_name) if task_name else read_table(path)
        if len(frame) == 0:
            raise DataFileError(f"{path!r} has no data rows" + (" (only a header)." if len(frame.columns) else "."))
        if label_column is not None and label_column in frame.columns:
            check_label_values(frame[label_column].tolist(), path, label_column)
        splits[split] = Dataset.from_pandas(frame, preserve_index=False)
    return DatasetDict(splits)


def require_columns(dataset: DatasetDict, columns: list[str], what: str) -> None:
    for split, data in dataset.items():
        missing = [c for c in columns if c not in data.column_names]
        if missing:
            raise DataFileError(
                f"The {split} data has no {what} column {missing[0]!r}; its columns are {data.column_names}."
            )


def read_conll(path: str) -> Dataset:
    """CoNLL column files (token … tag per line, blank lines between sentences, -DOCSTART- anywhere)."""
    sentences: list[list[str]] = []
    tags: list[list[str]] = []
    tokens, labels = [], []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if tokens:
                    sentences.append(tokens)
                    tags.append(labels)
                tokens, labels = [], []
                continue
            if len(parts) < 2:
                raise DataFileError(f"{path}:{line_number}: expected 'token ... tag', got {line.strip()!r}.")
            tokens.append(parts[0])
            labels.append(parts[-1])
    if tokens:
        sentences.append(tokens)
        tags.append(labels)
    if not sentences:
        raise DataFileError(f"{path!r} holds no sentence.")
    return Dataset.from_dict({"tokens": sentences, "ner_tags": tags})


def load_token_files(files: dict[str, str | None]) -> DatasetDict:
    """NER splits from CoNLL column files or csv/json(l) tables, each checked before reading."""
    splits = {}
    for split, path in files.items():
        if path is None:
            continue
        extension = check_file(path, f"{split}_file", EXTENSIONS + CONLL_EXTENSIONS)
        if extension in CONLL_EXTENSIONS:
            splits[split] = read_conll(path)
        else:
            splits[split] = Dataset.from_pandas(read_table(path), preserve_index=False)
    return DatasetDict(splits)
