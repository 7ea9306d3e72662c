import json
import math
import os

import pytest
from distributed_utils import run_to_completion, torchrun_command

HERE = os.path.dirname(__file__)


@pytest.mark.slow
def test_two_process_ddp_ends_with_identical_masks_and_unscaled_loss(tmp_path):
    run_to_completion(torchrun_command(os.path.join(HERE, "ddp_train.py"), str(tmp_path)))
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["masks_sha256"] == ranks[1]["masks_sha256"]
    # A 2-class head at random init has a mean cross-entropy near ln 2; a loss scaled by the world
    # size (the Trainer's average_tokens_across_devices default) would log near 2 ln 2.
    assert all(abs(loss - math.log(2)) < 0.2 for loss in ranks[0]["losses"]), ranks[0]["losses"]
