"""Train a decoder's mask under FSDP2 (`fully_shard`, CPU/gloo) or in one process, then save the repo.

    torchrun --nproc_per_node=2 fsdp_train.py BASE OUT   # sharded: each rank trains on its half of every batch
    python fsdp_train.py BASE OUT                          # one process, the whole batch

Both runs see the same global batches, so the saved repos must be byte-identical. Each rank also
writes OUT/rank<k>.json with the local shape of a score tensor (to show it was sharded).
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from hf_masking import MaskedModel, MaskingConfig
from hf_masking.scripts import shut_down_distributed

STEPS, BATCH, LENGTH = 3, 8, 12


def main(base_dir: str, output_dir: str) -> None:
    distributed = "RANK" in os.environ
    rank, world = 0, 1
    model = MaskedModel(AutoModelForCausalLM.from_pretrained(base_dir), MaskingConfig(initial_sparsity=0.1))
    if distributed:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.get_base_model().model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(STEPS):
        ids = torch.randint(3, 120, (BATCH, LENGTH), generator=generator)
        local = ids.chunk(world)[rank]  # equal halves: the mean of the ranks' losses is the whole batch's
        model(input_ids=local, labels=local).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    scores = next(iter(model.masked_modules().values())).mask_scores
    local_shape = list(scores.to_local().shape) if hasattr(scores, "to_local") else list(scores.shape)
    model.save_pretrained(output_dir, is_main_process=rank == 0)
    os.makedirs(output_dir, exist_ok=True)  # only the main rank's save creates it, maybe not yet
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({"world_size": world, "full_shape": list(scores.shape), "local_shape": local_shape}, handle)


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2])
    finally:
        shut_down_distributed()
