"""Many masks on one resident base (BERT-base shape): switch time and resident memory.

Compares, in one run:
- switching the active mask among 11 masks vs loading a finetuned checkpoint from disk;
- switching among masks with different heads (2 and 6 labels, and 9-tag token classification), each
  head a task model around the one resident backbone;
- resident memory (RSS) of base + 11 masks vs the base alone, each in its own process.

    python bench/multi_mask.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import psutil
import torch


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def rss_parts_mb() -> dict[str, float]:
    """Anonymous and file-backed resident memory (Linux): mapped checkpoint pages are file-backed and reclaimable."""
    try:
        with open("/proc/self/status") as handle:
            fields = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in handle if line.startswith("Rss")}
        return {"anon_mb": fields["RssAnon"], "file_mb": fields["RssFile"]}
    except (OSError, KeyError):
        return {}


def evict_from_page_cache(folder: str) -> None:
    """Drop the folder's files from the OS page cache, so the next read comes from disk."""
    for name in os.listdir(folder):
        fd = os.open(os.path.join(folder, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def prepare(workdir: str, n_masks: int) -> None:
    """A finetuned-style full checkpoint, a backbone checkpoint, and n masks trained on it."""
    import transformers
    from transformers import BertConfig, BertForSequenceClassification

    from hf_masking import MaskedModel, MaskingConfig

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    full = BertForSequenceClassification(BertConfig())
    full.save_pretrained(os.path.join(workdir, "finetuned"))
    full.bert.save_pretrained(os.path.join(workdir, "base"))
    for seed in range(n_masks):
        base = BertForSequenceClassification.from_pretrained(os.path.join(workdir, "base"))
        MaskedModel(base, MaskingConfig(seed=seed)).save_pretrained(os.path.join(workdir, f"mask{seed}"))
    from transformers import BertForTokenClassification

    for name, head, labels in (
        ("six-labels", BertForSequenceClassification, 6),
        ("tags", BertForTokenClassification, 9),
    ):
        base = head.from_pretrained(os.path.join(workdir, "base"), num_labels=labels)
        MaskedModel(base, MaskingConfig()).save_pretrained(os.path.join(workdir, name))


def child(workdir: str, role: str, n_masks: int) -> dict:
    import transformers
    from transformers import AutoModelForSequenceClassification

    from hf_masking import MaskedModel

    transformers.logging.set_verbosity_error()
    result: dict = {"rss_start_mb": rss_mb()}
    if role == "base":
        model = AutoModelForSequenceClassification.from_pretrained(os.path.join(workdir, "base"))
        model(input_ids=torch.ones(1, 8, dtype=torch.long))
    elif role == "finetuned-load":
        folder = os.path.join(workdir, "finetuned")
        times = []
        for _ in range(3):
            evict_from_page_cache(folder)
            start = time.perf_counter()
            model = AutoModelForSequenceClassification.from_pretrained(folder)
            sum(float(p.sum()) for p in model.parameters())  # weights are mmapped: make sure they are read
            times.append(time.perf_counter() - start)
            del model
        result["load_s"] = statistics.median(times)
    elif role == "heads":
        model = MaskedModel.from_pretrained(os.path.join(workdir, "mask0"))
        for name in ("six-labels", "tags"):
            model.load_mask(os.path.join(workdir, name), name)
        times = []
        for _ in range(5):
            for name in ("six-labels", "tags", "default"):
                start = time.perf_counter()
                model.set_active_mask(name)
                times.append(time.perf_counter() - start)
                model(input_ids=torch.ones(1, 8, dtype=torch.long))
        result["switch_s"] = statistics.median(times)
    else:
        model = MaskedModel.from_pretrained(os.path.join(workdir, "mask0"))
        for i in range(1, n_masks):
            model.load_mask(os.path.join(workdir, f"mask{i}"), f"mask{i}")
        names = model.mask_names
        times = []
        for _ in range(3):
            for name in names[1:] + names[:1]:
                start = time.perf_counter()
                model.set_active_mask(name)
                times.append(time.perf_counter() - start)
            model(input_ids=torch.ones(1, 8, dtype=torch.long))
        result["switch_s"] = statistics.median(times)
        result["stored_mask_mb"] = sum(model.to_stored_mask(n).nbytes for n in names) / 2**20
        result["n_masks"] = len(names)
    result["rss_mb"] = rss_mb()
    result.update(rss_parts_mb())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masks", type=int, default=11)
    parser.add_argument("--child", nargs=2, metavar=("WORKDIR", "ROLE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.masks)))
        return
    with tempfile.TemporaryDirectory() as workdir:
        prepare(workdir, args.masks)
        runs = {}
        for role in ("base", "finetuned-load", "masks", "heads"):
            done = subprocess.run(
                [sys.executable, __file__, "--child", workdir, role, "--masks", str(args.masks)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[role] = json.loads(done.stdout.strip().splitlines()[-1])
    base_mb, masks_mb = runs["base"]["rss_mb"], runs["masks"]["rss_mb"]
    param_mb = 109_483_778 * 4 / 2**20
    switch, load = runs["masks"]["switch_s"], runs["finetuned-load"]["load_s"]
    print(f"load a finetuned BERT-base checkpoint from disk (page cache evicted): {load * 1000:8.1f} ms")
    label = f"switch the active mask (median over {3 * runs['masks']['n_masks']}):"
    print(f"{label:71s}{switch * 1000:8.1f} ms")
    print(f"switch / load ratio: {switch / load:.3f}")
    heads = runs["heads"]["switch_s"]
    label = "switch among masks with 2-label, 6-label and 9-tag token heads (median over 15):"
    print(f"{label:71s}{heads * 1000:8.1f} ms (ratio to load {heads / load:.3f})")
    print(
        f"RSS base alone: {base_mb:8.1f} MB; base + {runs['masks']['n_masks']} masks: {masks_mb:8.1f} MB; "
        f"ratio {masks_mb / base_mb:.3f}"
    )
    if "anon_mb" in runs["base"]:
        base, masks = runs["base"], runs["masks"]
        print(
            f"  RSS split, anonymous + file-backed: base alone {base['anon_mb']:.0f} + {base['file_mb']:.0f} MB; "
            f"base + masks {masks['anon_mb']:.0f} + {masks['file_mb']:.0f} MB"
        )
        print(
            "  (weights are mapped from the checkpoint: masks applied in place copy the pages they write, and "
            "verifying the base reads every page once, embeddings included; file-backed pages are reclaimable)"
        )
    print(
        f"mask repos held in memory: {runs['masks']['stored_mask_mb']:.1f} MB "
        f"({runs['masks']['stored_mask_mb'] / param_mb:.3f} of the base's {param_mb:.0f} MB of parameters)"
    )


if __name__ == "__main__":
    main()
