"""The server's Prometheus metrics, in a registry of its own (two servers in one process do not mix).

Task labels take only the names of tasks the server has (anything else counts as "-"), so a client
sending random task names cannot grow the metrics without bound.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .service import MaskService, Row, RowError

UNKNOWN_TASK = "-"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    def __init__(self, service: MaskService, queue_depth: Any = None) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        namespace = "hf_masking"
        self.requests = Counter(
            "requests",
            "HTTP requests by endpoint, task and status",
            ["endpoint", "task", "status"],
            namespace=namespace,
            registry=self.registry,
        )
        self.errors = Counter(
            "request_errors",
            "Requests answered with a 4xx or 5xx status",
            ["endpoint", "task", "status"],
            namespace=namespace,
            registry=self.registry,
        )
        self.latency = Histogram(
            "request_latency_seconds",
            "From arrival to answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            namespace=namespace,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "batch_rows",
            "Rows per batch answered together",
            buckets=ROW_BUCKETS,
            namespace=namespace,
            registry=self.registry,
        )
        self.batch_masks = Histogram(
            "batch_masks",
            "Distinct masks (tasks) per batch",
            buckets=ROW_BUCKETS,
            namespace=namespace,
            registry=self.registry,
        )
        queue = Gauge("queue_depth", "Rows waiting or computing", namespace=namespace, registry=self.registry)
        queue.set_function(queue_depth or (lambda: 0))
        cache = Gauge("mask_cache_bytes", "Bytes of decoded masks cached", namespace=namespace, registry=self.registry)
        cache.set_function(lambda: service.cache_bytes)
        loaded = Gauge("loaded_masks", "Tasks served", namespace=namespace, registry=self.registry)
        loaded.set_function(lambda: len(service.tasks))

    def task_label(self, task: Any) -> str:
        return task if isinstance(task, str) and task in self.service.tasks else UNKNOWN_TASK

    def count(self, endpoint: str, task: Any, status: int, seconds: float | None = None) -> None:
        labels = (endpoint, self.task_label(task), str(status))
        self.requests.labels(*labels).inc()
        if status >= 400:
            self.errors.labels(*labels).inc()
        if seconds is not None:
            self.latency.labels(endpoint).observe(seconds)

    def batch(self, rows: list[Row], answers: list[dict[str, Any] | RowError]) -> None:
        self.batch_rows.observe(len(rows))
        self.batch_masks.observe(len({row.task for row in rows}))

    def render(self) -> bytes:
        return generate_latest(self.registry)
