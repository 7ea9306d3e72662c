"""The tasks a server holds, and how a batch of rows for many of them is answered.

One `MaskedModel` holds the base once and every task's mask compressed; a batch of rows for
different tasks becomes one mixed-mask forward per head layout (`mask_names=[...]`), and
generation rows one mixed-mask ``generate``. A lock keeps one forward (or task change) at a time
on the model: the model is not thread-safe, and one forward already uses every core it is given.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import torch

from .. import row_kernel
from ..hub import looks_like_local_path
from ..model import MaskedModel
from ..persistence import read_mask_repo
from .settings import ServeSettings, check_task_name

logger = logging.getLogger(__name__)

CLASSIFICATION, GENERATION = "classification", "generation"


@dataclass(frozen=True)
class Row:
    """One text to answer: classified, or (with `max_new_tokens`) continued."""

    task: str
    text: str
    text_pair: str | None = None
    max_new_tokens: int | None = None
    cut: bool = False  # the text (or pair) was cut at the server's max_chars


@dataclass(frozen=True)
class RowError:
    """A row that could not be answered, with the HTTP status it maps to."""

    status: int
    message: str


@dataclass(frozen=True)
class TaskInfo:
    mask: str  # its name inside the model
    kind: str
    labels: list[str]
    repo: str


class TaskError(Exception):
    """A task change that cannot be made; `status` is the HTTP status it maps to."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _is_causal_lm(head_class: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    values = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    return any(head_class == value or (not isinstance(value, str) and head_class in value) for value in values)


class MaskService:
    """The model, its tokenizer and the task table; thread-safe."""

    def __init__(self, model: MaskedModel, tokenizer: Any, settings: ServeSettings) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self._tasks: dict[str, TaskInfo] = {}
        self._lock = threading.Lock()  # the model: one forward or task change at a time
        self._changes = threading.Lock()  # task changes: one at a time (a load reads outside `_lock`)
        self._counter = 0
        self.max_length = _max_length(tokenizer, model)
        self.device = torch.device(settings.device)

    @classmethod
    def load(cls, settings: ServeSettings) -> MaskService:
        (first_task, first_repo), *others = settings.tasks.items()
        model = MaskedModel.from_pretrained(
            first_repo, revision=settings.revision, token=settings.token, base_model=settings.base_model
        )
        from transformers import AutoTokenizer

        source = settings.tokenizer or settings.base_model or model.get_base_model().name_or_path
        tokenizer = AutoTokenizer.from_pretrained(source, token=settings.token)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # batched generation pads; decoders often define no pad
        if settings.cache_bytes is not None:
            model.fixed_masks.max_bytes = settings.cache_bytes
        model.to(settings.device).eval()
        if torch.device(settings.device).type == "cpu":  # build (or load) the mixed-batch kernel now, not in a request
            row_kernel.available()
        service = cls(model, tokenizer, settings)
        service._register(first_task, model.active_mask, first_repo)
        for task, repo in others:
            service.add_task(task, repo)
        return service

    # ----- the task table ---------------------------------------------------------------
    @property
    def tasks(self) -> dict[str, TaskInfo]:
        return dict(self._tasks)

    def _register(self, task: str, mask: str, repo: str) -> None:
        kind = GENERATION if _is_causal_lm(self.model.mask_head_class(mask)) else CLASSIFICATION
        labels = self.model.mask_labels(mask) if kind == CLASSIFICATION else []
        self._tasks[task] = TaskInfo(mask, kind, labels, repo)

    def check_source(self, repo: str) -> None:
        """A repo a client may name: a Hub id, or a folder under one of the allowed roots (links resolved)."""
        if not isinstance(repo, str) or not repo or "\x00" in repo:
            raise TaskError(422, "repo must be a Hub repo id or a folder path.")
        if not looks_like_local_path(repo):
            return
        roots = self.settings.allowed_roots
        if not roots:
            raise TaskError(403, "This server loads no folders at run time (start it with --allowed_root DIR).")
        real = os.path.realpath(repo)
        if not any(os.path.commonpath([real, root]) == root for root in roots):
            raise TaskError(403, f"{repo} is not under an allowed root ({', '.join(roots)}).")

    def add_task(self, task: str, repo: str, revision: str | None = None) -> TaskInfo:
        """Load `repo`'s mask as `task`; on any failure every other task is untouched."""
        try:
            check_task_name(task)
        except ValueError as err:
            raise TaskError(422, str(err)) from None
        with self._changes:
            if task in self._tasks:
                raise TaskError(409, f"A task named {task!r} exists; DELETE it first.")
            try:  # reading and checking the repo's data needs no model: forwards go on meanwhile
                stored = read_mask_repo(repo, revision or self.settings.revision, self.settings.token)
            except (FileNotFoundError, NotADirectoryError) as err:
                raise TaskError(404, str(err)) from None
            except (OSError, ValueError) as err:
                raise TaskError(422, f"{repo}: {err}") from None
            self._counter += 1
            mask = f"task-{self._counter}"
            with self._lock:
                try:
                    self.model.load_mask(stored, mask)
                    if self.device.type != "cpu":
                        self.model.to(self.device)  # a new head (task model) starts on the CPU
                except (OSError, ValueError) as err:
                    raise TaskError(422, f"{repo}: {err}") from None
                self._register(task, mask, repo)
            return self._tasks[task]

    def remove_task(self, task: str) -> None:
        with self._changes:
            if task not in self._tasks:
                raise TaskError(404, f"No task {task!r}; this server has {sorted(self._tasks)}.")
            mask = self._tasks.pop(task).mask
            with self._lock:
                if mask == self.model.active_mask:
                    others = [info.mask for info in self._tasks.values()]
                    if not others:
                        return  # the last task's mask stays loaded (the model needs an active mask), unlisted
                    self.model.set_active_mask(others[0])
                self.model.delete_mask(mask)

    def sync_tasks(self, wanted: dict[str, str]) -> None:
        """Make the task table `wanted` (name -> repo): load what is new or changed, drop what is gone."""
        for task, info in self.tasks.items():
            if wanted.get(task) != info.repo:
                self.remove_task(task)
        for task, repo in wanted.items():
            if task not in self._tasks:
                self.add_task(task, repo)

    @property
    def cache_bytes(self) -> int:
        return self.model.fixed_masks.nbytes

    # ----- answering --------------------------------------------------------------------
    def cut(self, text: str) -> tuple[str, bool]:
        limit = self.settings.limits.max_chars
        return (text[:limit], True) if len(text) > limit else (text, False)

    def answer(self, rows: list[Row]) -> list[dict[str, Any] | RowError]:
        """Each row's answer (or error), computed in as few forwards as the head layouts allow."""
        answers: list[dict[str, Any] | RowError] = [RowError(500, "not computed")] * len(rows)
        with self._lock, torch.inference_mode():
            tasks = self._tasks
            live = []
            for i, row in enumerate(rows):
                info = tasks.get(row.task)
                wanted = GENERATION if row.max_new_tokens is not None else CLASSIFICATION
                if info is None:
                    answers[i] = RowError(404, f"The task {row.task!r} was removed.")
                elif info.kind != wanted:
                    answers[i] = RowError(422, f"The task {row.task!r} is {info.kind}.")
                else:
                    live.append(i)
            names = [tasks[rows[i].task].mask for i in live]
            for group in self.model.group_mask_names(names):
                # Each task's rows together: the masked layers then take slices of the batch, not gathers.
                indices = sorted((live[g] for g in group), key=lambda i: tasks[rows[i].task].mask)
                try:
                    if rows[indices[0]].max_new_tokens is not None:
                        self._generate(rows, indices, answers)
                    else:
                        for pairs in (False, True):
                            chosen = [i for i in indices if (rows[i].text_pair is not None) == pairs]
                            if chosen:
                                self._classify(rows, chosen, answers)
                except Exception as err:  # this group fails; the others, and the server, go on
                    logger.exception("A forward failed")
                    for i in indices:
                        answers[i] = RowError(500, f"The forward failed: {type(err).__name__}: {err}")
        return answers

    def _mask_names(self, rows: list[Row], indices: list[int]) -> list[str]:
        return [self._tasks[rows[i].task].mask for i in indices]

    def _classify(self, rows: list[Row], indices: list[int], answers: list) -> None:
        texts = [rows[i].text for i in indices]
        pairs = None
        if rows[indices[0]].text_pair is not None:
            texts, pairs = self._fit(texts), self._fit([rows[i].text_pair for i in indices])
        batch = self.tokenizer(
            texts, pairs, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        logits = self.model(**batch, mask_names=self._mask_names(rows, indices)).logits.float().cpu()
        tasks_in_batch = len({rows[i].task for i in indices})
        for position, i in enumerate(indices):
            labels = self._tasks[rows[i].task].labels
            row_logits = logits[position]
            answers[i] = {
                "task": rows[i].task,
                "label": labels[int(row_logits.argmax())],
                "probabilities": dict(zip(labels, row_logits.softmax(-1).tolist(), strict=True)),
                "logits": row_logits.tolist(),
                "cut": rows[i].cut,
                "batch": {"rows": len(indices), "tasks": tasks_in_batch},
            }

    def _fit(self, texts: list[str]) -> list[str]:
        """Each text cut a little past the tokens a pair can keep of it.

        A fast tokenizer truncating a *pair* ("longest_first") costs memory growing with the texts'
        length (hundreds of MB for two 10,000-character texts); one text alone truncates cheaply,
        so each side is first cut to at most the model's length (plus a margin, so the kept tokens
        are the ones the whole text gives), and the pair is then truncated as before.
        """
        if not getattr(self.tokenizer, "is_fast", False):
            return texts
        keep = self.max_length + 16
        encoded = self.tokenizer(
            texts, add_special_tokens=False, truncation=True, max_length=keep, return_offsets_mapping=True
        )
        return [
            text[: offsets[-1][1]] if len(offsets) >= keep else text
            for text, offsets in zip(texts, encoded["offset_mapping"], strict=True)
        ]

    def _generate(self, rows: list[Row], indices: list[int], answers: list) -> None:
        tokenizer = self.tokenizer
        most = max(rows[i].max_new_tokens or 0 for i in indices)
        sides = tokenizer.padding_side, tokenizer.truncation_side
        tokenizer.padding_side = tokenizer.truncation_side = "left"  # prompts end where generation starts
        try:
            batch = tokenizer(
                [rows[i].text for i in indices],
                padding=True,
                truncation=True,
                max_length=max(1, self.max_length - most),
                return_tensors="pt",
            ).to(self.device)
        finally:
            tokenizer.padding_side, tokenizer.truncation_side = sides
        output = self.model.generate(
            **batch,
            mask_names=self._mask_names(rows, indices),
            max_new_tokens=most,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :].cpu()
        eos = _eos_ids(tokenizer, self.model)
        tasks_in_batch = len({rows[i].task for i in indices})
        for position, i in enumerate(indices):
            tokens = new_tokens[position, : rows[i].max_new_tokens].tolist()
            ends = [position for position, token in enumerate(tokens) if token in eos]
            if ends:
                tokens = tokens[: ends[0] + 1]  # generate pads a finished row; those pads are not its answer
            answers[i] = {
                "task": rows[i].task,
                "text": tokenizer.decode(tokens, skip_special_tokens=True),
                "tokens": tokens,
                "cut": rows[i].cut,
                "batch": {"rows": len(indices), "tasks": tasks_in_batch},
            }


def _max_length(tokenizer: Any, model: MaskedModel) -> int:
    """Tokens per row: the tokenizer's limit, and the model's positions where it has a limit."""
    limits = [int(tokenizer.model_max_length)] if tokenizer.model_max_length < 1e9 else []
    config = model.get_base_model().config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
    return min(limits) if limits else 512


def _eos_ids(tokenizer: Any, model: MaskedModel) -> set[int]:
    """Where a row's generation ends: the tokenizer's end-of-sequence token and the model's own."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model.get_base_model(), "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {i for i in ids if isinstance(i, int)}
