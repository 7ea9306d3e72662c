"""The HTTP API: one FastAPI app over a `MaskService` and an engine that batches its rows.

The same app runs in one process (`Batcher`) and in each Ray Serve replica (`@serve.batch`).
Every request that is not understood gets a 4xx naming what is wrong, never a 500; a request
larger than the limits is refused before it costs memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from typing import Any, Protocol

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .batching import Batcher, QueueFull
from .metrics import ServeMetrics
from .service import GENERATION, MaskService, Row, RowError, TaskError

ENDPOINTS = ("/predict", "/generate", "/tasks")


class Engine(Protocol):
    """What answers rows: `Batcher` in one process, a Ray Serve replica's batch method under Ray."""

    pending: int

    @property
    def alive(self) -> bool: ...

    async def submit(self, rows: list[Row]) -> list[dict[str, Any] | RowError]: ...


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PredictRequest(_Strict):
    task: str
    text: str | None = None
    text_pair: str | None = None
    texts: list[str] | None = None
    text_pairs: list[str] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give either 'text' (one text) or 'texts' (a list), not both or neither")
        if self.text is None and self.text_pair is not None:
            raise ValueError("'text_pair' goes with 'text'; with 'texts' use 'text_pairs'")
        if self.texts is None and self.text_pairs is not None:
            raise ValueError("'text_pairs' goes with 'texts'; with 'text' use 'text_pair'")
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts or []):
            raise ValueError(f"'text_pairs' has {len(self.text_pairs)} texts for {len(self.texts or [])} 'texts'")
        if self.texts is not None and not self.texts:
            raise ValueError("'texts' is empty")
        return self


class GenerateRequest(_Strict):
    task: str
    prompt: str = Field(min_length=1)
    max_new_tokens: int = Field(default=16, ge=1)


class TaskSpec(_Strict):
    repo: str = Field(min_length=1, max_length=4096)
    revision: str | None = Field(default=None, max_length=256)


class BodyLimit:
    """Refuses (413) a body over `max_bytes` before the app reads it: declared or as it streams in."""

    def __init__(self, app: Any, max_bytes: int, on_refused: Any = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_refused = on_refused

    async def _refuse(self, send: Any, path: str, status: int, message: str) -> None:
        if self.on_refused is not None:
            self.on_refused(path, status)
        body = json.dumps({"detail": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"The request body is over this server's limit of {self.max_bytes} bytes."
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await self._refuse(send, scope.get("path", ""), 400, "Content-Length is not a number.")
            if int(declared) > self.max_bytes:
                return await self._refuse(send, scope.get("path", ""), 413, too_large)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._refuse(send, scope.get("path", ""), 413, too_large)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(service: MaskService, engine: Engine | None = None, allow_admin: bool = True) -> FastAPI:
    """The API over `service`; `engine` defaults to a `Batcher` with the settings' limits."""
    limits = service.settings.limits
    batcher = engine or Batcher(service, limits.max_batch, limits.max_wait_ms / 1000, limits.max_queue)
    metrics = ServeMetrics(service, queue_depth=lambda: batcher.pending)
    if isinstance(batcher, Batcher):
        batcher.on_batch = metrics.batch

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(batcher, Batcher):
            batcher.start()
        yield
        if isinstance(batcher, Batcher):
            await batcher.stop()

    app = FastAPI(title="hf-masking: many tasks, one base", lifespan=lifespan)
    app.state.service, app.state.metrics, app.state.engine = service, metrics, batcher

    def endpoint_of(path: str) -> str:  # a fixed set of labels, whatever paths clients send
        return next((e for e in ENDPOINTS if path == e or path.startswith(e + "/")), "other")

    app.add_middleware(
        BodyLimit,
        max_bytes=limits.max_body_bytes,
        on_refused=lambda path, status: metrics.count(endpoint_of(path), None, status),
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # The error's own body echoes the input, which may not even be JSON (NaN): give where and what only.
        problems = [
            {"loc": [str(part) for part in item.get("loc", ())], "msg": str(item.get("msg", ""))}
            for item in error.errors()[:20]
        ]
        metrics.count(endpoint_of(request.url.path), None, 422)
        return JSONResponse({"detail": problems}, status_code=422)

    async def answer(endpoint: str, task: str, rows: list[Row]) -> list[dict[str, Any]]:
        start, status = time.perf_counter(), 200
        try:
            info = service.tasks.get(task)
            if info is None:
                raise HTTPException(404, f"No task {task!r}; this server has {sorted(service.tasks)}.")
            if (info.kind == GENERATION) != (endpoint == "/generate"):
                other = "/generate" if info.kind == GENERATION else "/predict"
                raise HTTPException(422, f"The task {task!r} is {info.kind}: use {other}.")
            try:
                answers = await asyncio.wait_for(batcher.submit(rows), limits.request_timeout_s)
            except QueueFull as err:
                raise HTTPException(503, str(err), headers={"Retry-After": "1"}) from None
            except asyncio.TimeoutError:
                raise HTTPException(504, f"No answer within {limits.request_timeout_s} s.") from None
            failed = next((a for a in answers if isinstance(a, RowError)), None)
            if failed is not None:
                raise HTTPException(failed.status, failed.message)
            return answers
        except HTTPException as err:
            status = err.status_code
            raise
        finally:
            metrics.count(endpoint, task, status, time.perf_counter() - start)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        tasks, alive = len(service.tasks), batcher.alive
        body = {"ready": bool(tasks and alive), "tasks": tasks, "worker": alive}
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/tasks")
    async def list_tasks() -> dict[str, Any]:
        return {task: {"kind": info.kind, "labels": info.labels} for task, info in service.tasks.items()}

    @app.post("/predict")
    async def predict(request: PredictRequest) -> dict[str, Any]:
        texts = request.texts if request.texts is not None else [request.text]
        if len(texts) > limits.max_texts:
            metrics.count("/predict", request.task, 413)
            raise HTTPException(413, f"{len(texts)} texts; this server takes at most {limits.max_texts} per request.")
        pairs = request.text_pairs if request.texts is not None else [request.text_pair]
        rows = []
        for text, pair in zip(texts, pairs or [None] * len(texts), strict=True):
            text, cut = service.cut(text)
            if pair is not None:
                pair, pair_cut = service.cut(pair)
                cut = cut or pair_cut
            rows.append(Row(request.task, text, pair, cut=cut))
        answers = await answer("/predict", request.task, rows)
        return answers[0] if request.texts is None else {"task": request.task, "predictions": answers}

    @app.post("/generate")
    async def generate(request: GenerateRequest) -> dict[str, Any]:
        prompt, cut = service.cut(request.prompt)
        granted = min(request.max_new_tokens, limits.max_new_tokens)
        (result,) = await answer("/generate", request.task, [Row(request.task, prompt, None, granted, cut)])
        return {**result, "max_new_tokens": granted, "capped": granted < request.max_new_tokens}

    def check_admin(authorization: str | None) -> None:
        token = service.settings.admin_token
        if not allow_admin:
            raise HTTPException(
                403, "Tasks change by redeploying under Ray Serve: update the deployment's user_config (see README)."
            )
        if token is None:
            raise HTTPException(403, "Task changes are off: start the server with --admin_token_file.")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401, "Task changes need 'Authorization: Bearer <admin token>'.", headers={"WWW-Authenticate": "Bearer"}
            )

    async def change(task: str, work: Any) -> dict[str, Any]:
        status = 200
        try:
            return await asyncio.to_thread(work)
        except TaskError as err:
            status = err.status
            raise HTTPException(err.status, str(err)) from None
        finally:
            metrics.count("/tasks", task, status)

    @app.put("/tasks/{task}")
    async def add_task(task: str, spec: TaskSpec, authorization: str | None = Header(default=None)) -> dict[str, Any]:
        check_admin(authorization)
        service.check_source(spec.repo)

        def load() -> dict[str, Any]:
            info = service.add_task(task, spec.repo, spec.revision)
            return {"task": task, "kind": info.kind, "labels": info.labels}

        return await change(task, load)

    @app.delete("/tasks/{task}")
    async def remove_task(task: str, authorization: str | None = Header(default=None)) -> dict[str, Any]:
        check_admin(authorization)
        return await change(task, lambda: (service.remove_task(task), {"removed": task})[1])

    @app.exception_handler(TaskError)
    async def task_error(request: Request, error: TaskError) -> JSONResponse:
        metrics.count("/tasks", None, error.status)
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    return app
