"""Run under `torchrun --nproc_per_node=2`: trains a mask with the stock Trainer on CPU (gloo).

Each rank writes the hash of its final masks and its logged losses to OUTPUT/rank<k>.json.
"""

import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from conftest import build_model  # noqa: E402
from trainer_utils import toy_dataset, training_args  # noqa: E402
from transformers import AutoModelForSequenceClassification, Trainer  # noqa: E402

from hf_masking import MaskedModel, MaskingCallback, MaskingConfig  # noqa: E402
from hf_masking.scripts import shut_down_distributed  # noqa: E402


def main(output_dir: str) -> None:
    model = MaskedModel(build_model(AutoModelForSequenceClassification, "bert"), MaskingConfig(initial_sparsity=0.1))
    args = training_args(output_dir, ddp_backend="gloo", per_device_train_batch_size=4, max_steps=4, logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=toy_dataset(), callbacks=[MaskingCallback()])
    trainer.train()
    digest = hashlib.sha256()
    for name, mask in model.masks().items():
        digest.update(name.encode())
        digest.update(mask.to(torch.uint8).numpy().tobytes())
    record = {
        "world_size": trainer.args.world_size,
        "masks_sha256": digest.hexdigest(),
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "sparsity": model.sparsity()["global"],
    }
    with open(os.path.join(output_dir, f"rank{trainer.args.process_index}.json"), "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    finally:
        shut_down_distributed()  # as the example scripts do
