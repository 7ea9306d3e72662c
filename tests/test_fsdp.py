"""FSDP2 on CPU (gloo): training with sharded scores saves the mask repo a single process saves."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(__file__)


def _run(command, timeout=240):
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
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, stderr[-4000:]


@pytest.mark.slow
def test_fsdp2_shards_the_scores_and_saves_the_same_repo_as_one_process(tmp_path):
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(tmp_path / "base")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = os.path.join(HERE, "fsdp_train.py")
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            script,
            str(tmp_path / "base"),
            str(sharded),
        ]  # fmt: skip
    )
    _run([sys.executable, script, str(tmp_path / "base"), str(single)])

    ranks = [json.loads((sharded / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(r["world_size"] == 2 and r["local_shape"][0] * 2 == r["full_shape"][0] for r in ranks)  # sharded
    for name in ("masking_config.json", "mask.safetensors"):
        assert (sharded / name).read_bytes() == (single / name).read_bytes(), name
