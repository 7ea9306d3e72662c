"""Kill a real process with SIGKILL at each file-system step of `save_pretrained`, then look at the folder.

Run as ``python kill_during_save.py WORKDIR``. For step n = 1, 2, … a forked child starts saving mask B
over mask A and kills itself just before its n-th file-system call; the parent then loads the folder
and reports whether it computes exactly as A or as B, and what the next save leaves behind. Prints
one JSON line: {"steps": [...], "completed_at": n}.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import load_quietly, random_batch, save_pretrained_base, train_a_little  # noqa: E402
from repo_tools import os_stopping_at  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

from hf_masking import MaskedModel, atomic_save  # noqa: E402


def main(workdir: str) -> None:
    torch.set_num_threads(1)
    base_dir = save_pretrained_base(os.path.join(workdir, "base"))
    torch.manual_seed(0)
    old = train_a_little(MaskedModel(load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3)), seed=0)
    torch.manual_seed(1)
    new = train_a_little(MaskedModel(load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3)), seed=1)
    batch = random_batch()
    expected = {"old": old(**batch).logits, "new": new(**batch).logits}
    assert not torch.equal(expected["old"], expected["new"])
    folder = os.path.join(workdir, "mask")
    steps = []
    for at in range(1, 200):
        shutil.rmtree(folder, ignore_errors=True)
        old.save_pretrained(folder)
        with open(os.path.join(folder, "tokenizer.json"), "w") as handle:
            handle.write("{}")
        new.to_stored_mask()  # encode before forking: the child only writes
        pid = os.fork()
        if pid == 0:
            atomic_save.os = os_stopping_at(at, lambda name: os.kill(os.getpid(), signal.SIGKILL))
            new.save_pretrained(folder)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        logits = MaskedModel.from_pretrained(folder)(**batch).logits
        state = next((name for name, value in expected.items() if torch.equal(logits, value)), "neither")
        leftovers = sorted(f for f in os.listdir(folder) if f.startswith(".hf-masking"))
        new.save_pretrained(folder)  # the next save cleans up whatever the killed one left
        after = sorted(f for f in os.listdir(folder) if f.startswith(".hf-masking"))
        steps.append(
            {
                "step": at,
                "killed": killed,
                "state": state,
                "leftovers": leftovers,
                "leftovers_after_next_save": after,
                "tokenizer_kept": os.path.exists(os.path.join(folder, "tokenizer.json")),
            }
        )
        if not killed:
            print(json.dumps({"steps": steps, "completed_at": at}))
            return
    raise SystemExit("the save never completed")


if __name__ == "__main__":
    main(sys.argv[1])
