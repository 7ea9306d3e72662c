"""What a server is started with: its tasks, where it listens, who may change tasks, and its limits.

Every limit has a safe default and a flag, and is checked when the server starts, so a typo is an
error at start-up rather than an unbounded server.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ADMIN_TOKEN_ENV = "HF_MASKING_ADMIN_TOKEN"


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request, and all of them together, may cost the server."""

    max_body_bytes: int = 1 << 20  # a request body above this is refused (413) before it is parsed
    max_texts: int = 64  # texts in one POST /predict {"texts": [...]} (413 above)
    max_chars: int = 10_000  # each text is cut here before tokenization, then truncated to the model's length
    max_queue: int = 256  # rows waiting or computing; a request that would exceed it gets 503 + Retry-After
    request_timeout_s: float = 30.0  # from arrival to answer (504 after)
    max_new_tokens: int = 64  # a /generate request asking for more gets this many (and is told so)
    max_batch: int = 32  # rows in one forward
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for others

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"{item.name} must be a number, not {value!r}.")
            least = 0 if item.name == "max_wait_ms" else 1e-9
            if value < least or value == float("inf"):
                raise ValueError(f"{item.name} must be {'>= 0' if least == 0 else '> 0'} and finite, not {value}.")
        if self.max_texts > self.max_queue:
            raise ValueError(f"max_texts ({self.max_texts}) cannot exceed max_queue ({self.max_queue}).")


@dataclass(frozen=True)
class ServeSettings:
    """The tasks to load (task name -> mask repo: a folder or a Hub id) and how to serve them."""

    tasks: dict[str, str]
    base_model: str | None = None
    tokenizer: str | None = None
    device: str = "cpu"
    revision: str | None = None
    token: str | None = None
    admin_token: str | None = None  # PUT/DELETE /tasks/{name} are off without it
    allowed_roots: tuple[str, ...] = ()  # folders a PUT may load from (Hub ids are always allowed)
    cache_bytes: int | None = None  # bound on decoded masks kept (model.fixed_masks.max_bytes); None: its default
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("A server needs at least one task: --mask NAME=REPO.")
        for name in self.tasks:
            check_task_name(name)
        if self.cache_bytes is not None and self.cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, not {self.cache_bytes}.")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ValueError("The admin token must be at least 16 characters.")
        object.__setattr__(self, "allowed_roots", tuple(os.path.realpath(root) for root in self.allowed_roots))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for a Ray replica's constructor)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeSettings:
        data = dict(data)
        data["limits"] = Limits(**data.get("limits", {}))
        data["allowed_roots"] = tuple(data.get("allowed_roots", ()))
        return cls(**data)


def check_task_name(name: Any) -> str:
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise ValueError(
            f"A task name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; not {name!r}."
        )
    return name


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
        return value

    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `hf-masking serve` flags."""
    defaults = Limits()
    parser.add_argument("--mask", action="append", required=True, metavar="NAME=REPO", help="a task and its mask repo")
    parser.add_argument("--base_model", help="the base (a folder or Hub id) instead of the one the masks record")
    parser.add_argument("--tokenizer", help="default: the base model's")
    parser.add_argument("--revision", help="a Hub revision for every --mask repo")
    parser.add_argument("--token", help="a Hub token for private repos")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--admin_token_file",
        help=f"a file holding the token that PUT/DELETE /tasks/{{name}} require (or set {ADMIN_TOKEN_ENV}); "
        "without one, tasks are fixed at start-up",
    )
    parser.add_argument(
        "--allowed_root", action="append", default=[], metavar="DIR", help="a folder PUT /tasks may load masks from"
    )
    parser.add_argument(
        "--cache_bytes",
        type=int,
        help="bound on decoded masks kept in memory (default: the package's, 1 GiB; 0 decodes on every call)",
    )
    limits = parser.add_argument_group("limits")
    positive_int, positive_float = _positive(int), _positive(float)
    limits.add_argument("--max_body_bytes", type=positive_int, default=defaults.max_body_bytes)
    limits.add_argument("--max_texts", type=positive_int, default=defaults.max_texts, help="texts per request")
    limits.add_argument("--max_chars", type=positive_int, default=defaults.max_chars, help="characters kept per text")
    limits.add_argument("--max_queue", type=positive_int, default=defaults.max_queue, help="rows waiting at once")
    limits.add_argument("--request_timeout_s", type=positive_float, default=defaults.request_timeout_s)
    limits.add_argument("--max_new_tokens", type=positive_int, default=defaults.max_new_tokens)
    limits.add_argument("--max_batch", type=positive_int, default=defaults.max_batch, help="rows per forward")
    limits.add_argument("--max_wait_ms", type=_non_negative_float, default=defaults.max_wait_ms)
    ray = parser.add_argument_group("Ray Serve (pip install 'hf-masking[ray]')")
    ray.add_argument("--ray", action="store_true", help="serve with Ray Serve replicas instead of one process")
    ray.add_argument("--replicas", type=positive_int, default=1, help="replicas (each holds the base and masks)")
    ray.add_argument("--max_replicas", type=positive_int, help="autoscale between --replicas and this many")
    ray.add_argument("--replica_cpus", type=positive_float, default=1.0, help="CPUs (and torch threads) per replica")
    ray.add_argument("--replica_gpus", type=_non_negative_float, default=0.0, help="GPUs per replica")
    ray.add_argument("--ray_address", help="an existing Ray cluster (e.g. 'auto'); default: start a local one")


def parse_tasks(specs: list[str]) -> dict[str, str]:
    tasks: dict[str, str] = {}
    for spec in specs:
        name, sep, repo = spec.partition("=")
        if not sep or not name or not repo:
            raise ValueError(f"--mask takes NAME=REPO (a Hub id or a folder), e.g. sst2=me/bert-sst2; not {spec!r}.")
        if name in tasks:
            raise ValueError(f"--mask names the task {name!r} twice.")
        tasks[check_task_name(name)] = repo
    return tasks


def read_admin_token(path: str | None) -> str | None:
    if path:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
        if not token:
            raise ValueError(f"The admin token file {path} is empty.")
        return token
    return os.environ.get(ADMIN_TOKEN_ENV) or None


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    limits = Limits(**{item.name: getattr(args, item.name) for item in dataclasses.fields(Limits)})
    if args.max_replicas is not None and args.max_replicas < args.replicas:
        raise ValueError(f"--max_replicas ({args.max_replicas}) is below --replicas ({args.replicas}).")
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return ServeSettings(
        tasks=parse_tasks(args.mask),
        base_model=args.base_model,
        tokenizer=args.tokenizer,
        device=device,
        revision=args.revision,
        token=args.token,
        admin_token=read_admin_token(args.admin_token_file),
        allowed_roots=tuple(args.allowed_root),
        cache_bytes=args.cache_bytes,
        limits=limits,
    )
