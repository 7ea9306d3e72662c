"""Launching the multi-process tests: torchrun on a free local port, killable as a whole on a hang."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys


def torchrun_command(script: str, *args: str, processes: int = 2) -> list[str]:
    """`python -m torch.distributed.run` for `script` on `processes` local ranks, on a free port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
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
