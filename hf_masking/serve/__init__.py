"""Serving many tasks from one resident base: `hf-masking serve`, bounded, observable, hot-loadable.

Install with ``pip install 'hf-masking[serve]'`` (and ``[ray]`` for Ray Serve replicas). The
pieces: `ServeSettings`/`Limits` (what a server starts with), `MaskService` (the model and its
task table), `Batcher` (rows of concurrent requests into mixed-mask forwards), `create_app` (the
HTTP API) and, on Ray, `ray_deployment.deployment`.
"""

from .settings import Limits, ServeSettings

__all__ = ["Limits", "ServeSettings", "MaskService", "create_app", "Batcher"]


def __getattr__(name: str):  # FastAPI and the model load only when asked for
    if name == "MaskService":
        from .service import MaskService

        return MaskService
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Batcher":
        from .batching import Batcher

        return Batcher
    raise AttributeError(name)
