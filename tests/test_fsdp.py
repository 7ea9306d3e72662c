"""FSDP2 on CPU (gloo): training with sharded scores saves the mask repo a single process saves."""

import json
import os
import sys

import pytest
import torch
from conftest import tiny_config
from distributed_utils import run_to_completion, torchrun_command
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(__file__)


@pytest.mark.slow
def test_fsdp2_shards_the_scores_and_saves_the_same_repo_as_one_process(tmp_path):
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(tmp_path / "base")
    script = os.path.join(HERE, "fsdp_train.py")
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    run_to_completion(torchrun_command(script, str(tmp_path / "base"), str(sharded)))
    run_to_completion([sys.executable, script, str(tmp_path / "base"), str(single)])

    ranks = [json.loads((sharded / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(r["world_size"] == 2 and r["local_shape"][0] * 2 == r["full_shape"][0] for r in ranks)  # sharded
    for name in ("masking_config.json", "mask.safetensors"):
        assert (sharded / name).read_bytes() == (single / name).read_bytes(), name
