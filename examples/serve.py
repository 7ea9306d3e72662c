"""Serve many text-classification tasks from one resident base model.

Each request names its task. Requests that arrive together (within --max_wait_ms, up to --max_batch)
are answered by one forward in which each row computes with its own task's mask
(``model(**batch, mask_names=[...])``); tasks with another label count get a forward of their own.

    pip install fastapi uvicorn
    python examples/serve.py --mask sst2=me/bert-sst2-mask --mask trec=me/bert-trec-mask --port 8000
    curl -s localhost:8000/predict -H 'content-type: application/json' \\
         -d '{"task": "sst2", "text": "a gripping, funny film"}'

Endpoints: ``POST /predict`` with ``{"task", "text", "text_pair"?}`` returns the label, the
probabilities by label, the logits, and the size of the batch it was computed in; ``GET /tasks``
lists the tasks and their labels. One model, one forward at a time: run one process per device.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from transformers import AutoTokenizer

from hf_masking import MaskedModel


class Prediction(BaseModel):
    task: str
    text: str
    text_pair: str | None = None


@dataclass
class Tasks:
    """The loaded masks: task name -> mask name in the model, and each task's label names."""

    model: MaskedModel
    tokenizer: Any
    masks: dict[str, str] = field(default_factory=dict)
    labels: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, specs: list[str], base_model: str | None, tokenizer: str | None, device: str) -> Tasks:
        pairs = [spec.split("=", 1) for spec in specs]
        if any(len(pair) != 2 or not all(pair) for pair in pairs):
            raise SystemExit("--mask takes NAME=REPO (a Hub id or a folder), e.g. --mask sst2=me/bert-sst2-mask")
        (first_task, first_repo), *others = pairs
        model = MaskedModel.from_pretrained(first_repo, base_model=base_model)  # its mask is named "default"
        tasks = cls(model, None, {first_task: "default"})
        for task, repo in others:
            if task in tasks.masks:
                raise SystemExit(f"--mask names the task {task!r} twice.")
            model.load_mask(repo, task)
            tasks.masks[task] = task
        for task, mask in tasks.masks.items():
            tasks.labels[task] = model.mask_labels(mask)
        source = tokenizer or base_model or model.get_base_model().name_or_path
        tasks.tokenizer = AutoTokenizer.from_pretrained(source)
        model.to(device).eval()
        return tasks

    def predict(self, requests: list[Prediction]) -> list[dict[str, Any]]:
        """One forward per group of masks sharing a head layout (and per single text / text pair)."""
        names = [self.masks[r.task] for r in requests]
        answers: list[dict[str, Any]] = [{} for _ in requests]
        device = next(self.model.parameters()).device
        for group in self.model.group_mask_names(names):
            for pairs in (False, True):
                rows = [i for i in group if (requests[i].text_pair is not None) == pairs]
                if not rows:
                    continue
                texts = [requests[i].text for i in rows]
                second = [requests[i].text_pair for i in rows] if pairs else None
                batch = self.tokenizer(texts, second, padding=True, truncation=True, return_tensors="pt").to(device)
                with torch.no_grad():
                    logits = self.model(**batch, mask_names=[names[i] for i in rows]).logits.float().cpu()
                tasks_in_batch = len({requests[i].task for i in rows})
                for row, i in enumerate(rows):
                    labels = self.labels[requests[i].task]
                    probabilities = logits[row].softmax(-1).tolist()
                    answers[i] = {
                        "task": requests[i].task,
                        "label": labels[int(logits[row].argmax())],
                        "probabilities": dict(zip(labels, probabilities, strict=True)),
                        "logits": logits[row].tolist(),
                        "batch": {"rows": len(rows), "tasks": tasks_in_batch},
                    }
        return answers


class Batcher:
    """Collects requests for up to `max_wait` seconds (or `max_batch` of them) and answers them together."""

    def __init__(self, tasks: Tasks, max_batch: int, max_wait: float) -> None:
        self.tasks = tasks
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.queue: asyncio.Queue = asyncio.Queue()

    async def submit(self, request: Prediction) -> dict[str, Any]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((request, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(items) < self.max_batch and (left := deadline - loop.time()) > 0:
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            try:  # in a thread: the event loop keeps accepting requests during the forward
                answers = await asyncio.to_thread(self.tasks.predict, [request for request, _ in items])
            except Exception as err:  # every waiting request gets the error, the server goes on
                for _, future in items:
                    future.set_exception(err)
                continue
            for (_, future), answer in zip(items, answers, strict=True):
                future.set_result(answer)


def create_app(tasks: Tasks, max_batch: int = 32, max_wait_ms: float = 10.0) -> FastAPI:
    batcher = Batcher(tasks, max_batch, max_wait_ms / 1000)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title="hf-masking: many tasks, one base", lifespan=lifespan)

    @app.get("/tasks")
    async def list_tasks() -> dict[str, Any]:
        return {task: {"labels": labels} for task, labels in tasks.labels.items()}

    @app.post("/predict")
    async def predict(request: Prediction) -> dict[str, Any]:
        if request.task not in tasks.masks:
            raise HTTPException(404, f"No task {request.task!r}; this server has {sorted(tasks.masks)}.")
        return await batcher.submit(request)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mask", action="append", required=True, metavar="NAME=REPO", help="a task and its mask repo")
    parser.add_argument("--base_model", help="the base (a folder or Hub id) instead of the one the masks record")
    parser.add_argument("--tokenizer", help="default: the base model's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_batch", type=int, default=32)
    parser.add_argument("--max_wait_ms", type=float, default=10.0)
    args = parser.parse_args()
    tasks = Tasks.load(args.mask, args.base_model, args.tokenizer, args.device)
    app = create_app(tasks, args.max_batch, args.max_wait_ms)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
