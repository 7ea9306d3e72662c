"""Launching the multi-process tests (torchrun, the example server) on a free local port, killable on a hang."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_command(script: str, *args: str, processes: int = 2) -> list[str]:
    """`python -m torch.distributed.run` for `script` on `processes` local ranks, on a free port."""
    port = free_port()
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={processes}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        script,
        *args,
    ]


def run_to_completion(command: list[str], timeout: float = 240) -> None:
    """Run `command` with one OpenMP thread per process; fail with its stderr if it does not exit 0.

    A session of its own, so a hung rendezvous can be killed with every worker, not just torchrun.
    """
    process = subprocess.Popen(
        command,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, stderr[-4000:]
