import json
import math
import os
import signal
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(__file__)


@pytest.mark.slow
def test_two_process_ddp_ends_with_identical_masks_and_unscaled_loss(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        os.path.join(HERE, "ddp_train.py"),
        str(tmp_path),
    ]
    # A session of its own, so a hung rendezvous can be killed with every worker, not just torchrun.
    process = subprocess.Popen(
        command,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["masks_sha256"] == ranks[1]["masks_sha256"]
    # A 2-class head at random init has a mean cross-entropy near ln 2; a loss scaled by the world
    # size (the Trainer's average_tokens_across_devices default) would log near 2 ln 2.
    assert all(abs(loss - math.log(2)) < 0.2 for loss in ranks[0]["losses"]), ranks[0]["losses"]
