"""The same service on Ray Serve: replicas that each hold the base and the masks, scaled by Ray.

Each replica runs `create_app` over its own `MaskService`; rows from concurrent requests are
batched across tasks by Ray Serve's own ``@serve.batch`` into mixed-mask forwards. Tasks change
by redeploying with a new ``user_config`` (``{"tasks": {name: repo}}``): Ray calls `reconfigure`
on every replica, which loads what is new and drops what is gone without a restart. The HTTP
admin endpoints are off under Ray, since a request reaches only one replica.

    hf-masking serve --ray --replicas 2 --mask sst2=me/bert-sst2 --mask trec=me/bert-trec
    serve run hf_masking.serve.ray_deployment:app_builder mask=sst2=me/bert-sst2,trec=me/bert-trec replicas=2
"""

from __future__ import annotations

import argparse
import asyncio
import math
from typing import Any

import torch
from ray import serve

from .app import create_app
from .batching import QueueFull
from .service import MaskService, Row, RowError
from .settings import ServeSettings, add_arguments, settings_from_args


class MaskReplica:
    """One replica: a `MaskService`, the HTTP app over it, and Ray's batching as its engine."""

    def __init__(self, settings: dict[str, Any], torch_threads: int) -> None:
        torch.set_num_threads(torch_threads)  # replicas share the machine's cores; each uses its share
        self.service = MaskService.load(ServeSettings.from_dict(settings))
        limits = self.service.settings.limits
        self.max_queue = limits.max_queue
        self._rows.set_max_batch_size(limits.max_batch)
        self._rows.set_batch_wait_timeout_s(limits.max_wait_ms / 1000)
        self.pending = 0
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.http_app = create_app(self.service, engine=self, allow_admin=False)

    def __serve_build_asgi_app__(self) -> Any:
        return self.http_app

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        tasks = user_config.get("tasks")
        if tasks is not None:
            self.service.sync_tasks(dict(tasks))

    @property
    def alive(self) -> bool:
        return True

    async def submit(self, rows: list[Row]) -> list[dict[str, Any] | RowError]:
        if self.pending + len(rows) > self.max_queue:
            raise QueueFull(f"This replica is busy ({self.pending} rows waiting, at most {self.max_queue}).")
        self.pending += len(rows)
        try:
            answers = await asyncio.gather(*(self._rows(row) for row in rows))
        finally:
            self.pending -= len(rows)
        for answer in answers:
            if isinstance(answer, dict):
                answer["batch"]["replica"] = self.replica
        return answers

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _rows(self, rows: list[Row]) -> list[dict[str, Any] | RowError]:
        answers = await asyncio.to_thread(self.service.answer, rows)
        self.http_app.state.metrics.batch(rows, answers)
        return answers


MaskServeReplica = serve.ingress()(MaskReplica)


def deployment(
    settings: ServeSettings,
    replicas: int = 1,
    max_replicas: int | None = None,
    replica_cpus: float = 1.0,
    replica_gpus: float = 0.0,
) -> Any:
    """The Ray Serve application: `replicas` copies, or autoscaling between `replicas` and `max_replicas`."""
    limits = settings.limits
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": replica_cpus, "num_gpus": replica_gpus},
        "max_ongoing_requests": limits.max_queue,  # a replica takes what its own queue bound allows
        "max_queued_requests": limits.max_queue,  # beyond that Ray's router answers 503
        "user_config": {"tasks": dict(settings.tasks)},
    }
    if max_replicas is not None and max_replicas > replicas:
        options["autoscaling_config"] = {
            "min_replicas": replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": limits.max_batch,
        }
    else:
        options["num_replicas"] = replicas
    threads = max(1, math.floor(replica_cpus))
    return serve.deployment(MaskServeReplica, name="hf-masking").options(**options).bind(settings.to_dict(), threads)


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run`` / a Serve config file: the `hf-masking serve` flags as key=value (masks comma-separated)."""
    argv = []
    for key, value in args.items():
        if key == "mask":
            argv += [part for spec in str(value).split(",") if spec for part in ("--mask", spec)]
        else:
            argv += [f"--{key}", str(value)]
    parser = argparse.ArgumentParser(prog="hf_masking.serve.ray_deployment:app_builder")
    add_arguments(parser)
    parsed = parser.parse_args(argv)
    return deployment(
        settings_from_args(parsed), parsed.replicas, parsed.max_replicas, parsed.replica_cpus, parsed.replica_gpus
    )
