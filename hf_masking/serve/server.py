"""`hf-masking serve`: one process with uvicorn, or (``--ray``) Ray Serve replicas."""

from __future__ import annotations

import argparse
import os
import signal
import threading

from .settings import ServeSettings, settings_from_args


def run(args: argparse.Namespace) -> None:
    settings = settings_from_args(args)
    if args.ray:
        run_ray(args, settings)
    else:
        run_local(args, settings)


def run_local(args: argparse.Namespace, settings: ServeSettings) -> None:
    import uvicorn

    from .app import create_app
    from .service import MaskService

    app = create_app(MaskService.load(settings))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)


def run_ray(args: argparse.Namespace, settings: ServeSettings) -> None:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise SystemExit("hf-masking serve --ray needs Ray Serve: pip install 'hf-masking[ray]'.") from None
    from .ray_deployment import deployment

    if args.ray_address is None:
        cores = os.cpu_count() or 1
        wanted = args.replicas * args.replica_cpus
        if wanted > cores:
            raise ValueError(
                f"{args.replicas} replicas x {args.replica_cpus} CPUs need {wanted:g} CPUs; this machine has {cores}. "
                "Lower --replica_cpus or --replicas, or join a cluster with --ray_address."
            )
        ray.init(include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=args.ray_address, log_to_driver=False)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        app = deployment(settings, args.replicas, args.max_replicas, args.replica_cpus, args.replica_gpus)
        serve.run(app, name="hf-masking", route_prefix="/")
        print(f"hf-masking serve: {args.replicas} Ray Serve replica(s) at http://{args.host}:{args.port}", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
