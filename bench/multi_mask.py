"""Many masks on one resident base (BERT-base shape): switch time and resident memory.

Compares, in one run:
- switching the active mask among 11 masks (alone, and with the first forward that decodes the
  mask) vs loading a finetuned checkpoint from disk;
- switching among masks with different heads (2 and 6 labels, and 9-tag token classification), each
  head a task model around the one resident backbone;
- resident memory (RSS) of base + 11 masks vs the base alone, each in its own process, with the
  decoded-mask cache off and at its default bound.

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


def resident(model) -> None:
    """Read every weight once, as serving does over time: the base's pages all in memory."""
    with torch.no_grad():
        sum(float(p.float().sum()) for p in model.parameters())


def child(workdir: str, role: str, n_masks: int) -> dict:
    import transformers
    from transformers import AutoModelForSequenceClassification

    from hf_masking import MaskedModel

    transformers.logging.set_verbosity_error()
    result: dict = {"rss_start_mb": rss_mb()}
    batch = {"input_ids": torch.ones(1, 8, dtype=torch.long)}
    torch.set_grad_enabled(False)
    if role == "base":
        model = AutoModelForSequenceClassification.from_pretrained(os.path.join(workdir, "base"))
        model(**batch)
        resident(model)
    elif role == "finetuned-load":
        folder = os.path.join(workdir, "finetuned")
        times = []
        for _ in range(3):
            evict_from_page_cache(folder)
            start = time.perf_counter()
            model = AutoModelForSequenceClassification.from_pretrained(folder)
            resident(model)  # weights are mmapped: make sure they are read
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
                model(**batch)
        result["switch_s"] = statistics.median(times)
    else:
        model = MaskedModel.from_pretrained(os.path.join(workdir, "mask0"))
        if role == "masks-nocache":
            model.fixed_masks.max_bytes = 0
        for i in range(1, n_masks):
            model.load_mask(os.path.join(workdir, f"mask{i}"), f"mask{i}")
        resident(model)
        names = model.mask_names
        switch, cold, warm = [], [], []
        for _ in range(3):
            for name in names[1:] + names[:1]:
                model.fixed_masks.clear()  # the first forward after the switch decodes the mask
                start = time.perf_counter()
                model.set_active_mask(name)
                switch.append(time.perf_counter() - start)
                model(**batch)
                cold.append(time.perf_counter() - start)
                start = time.perf_counter()
                model(**batch)  # the same mask again: decoded already (unless the cache is off)
                warm.append(time.perf_counter() - start)
        for name in names:  # every mask used once: what the cache holds when it keeps them all
            model.set_active_mask(name)
            model(**batch)
        with model.disable_masks():
            result["plain_forward_s"] = statistics.median(timed_calls(lambda: model(**batch), 9))
        result.update(switch_s=statistics.median(switch), cold_s=statistics.median(cold))
        result["warm_s"] = statistics.median(warm)
        result["cache_mb"] = model.fixed_masks.nbytes / 2**20
        result["cache_bound_mb"] = model.fixed_masks.max_bytes / 2**20
        result["stored_mask_mb"] = sum(model.to_stored_mask(n).nbytes for n in names) / 2**20
        result["n_masks"] = len(names)
    result["rss_mb"] = rss_mb()
    result.update(rss_parts_mb())
    return result


def timed_calls(call, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


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
        for role in ("base", "finetuned-load", "masks", "masks-nocache", "heads"):
            done = subprocess.run(
                [sys.executable, __file__, "--child", workdir, role, "--masks", str(args.masks)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[role] = json.loads(done.stdout.strip().splitlines()[-1])
    param_mb = 109_483_778 * 4 / 2**20
    load = runs["finetuned-load"]["load_s"]
    masks, nocache = runs["masks"], runs["masks-nocache"]
    print(f"load a finetuned BERT-base checkpoint from disk (page cache evicted): {load * 1000:8.1f} ms")
    print(f"switch among {masks['n_masks']} masks, medians over {3 * masks['n_masks']} switches:")
    rows = [
        ("set_active_mask alone", masks["switch_s"]),
        ("set_active_mask + first forward, 1x8 tokens (mask decoded then)", masks["cold_s"]),
        ("  the forward once the mask is decoded", masks["warm_s"]),
        ("  the same forward, masks off (disable_masks)", masks["plain_forward_s"]),
        ("switch cost = first forward + switch - decoded forward", masks["cold_s"] - masks["warm_s"]),
        ("switch cost with the cache off (max_bytes=0)", nocache["cold_s"] - nocache["warm_s"]),
        ("  forward with the cache off (decodes every call)", nocache["warm_s"]),
    ]
    for label, seconds in rows:
        print(f"  {label:66s}{seconds * 1000:8.2f} ms  ({seconds / load:.4f} of a load)")
    heads = runs["heads"]["switch_s"]
    label = "set_active_mask among 2-label, 6-label and 9-tag token heads (median over 15)"
    print(f"  {label:66s}{heads * 1000:8.2f} ms  ({heads / load:.4f} of a load)")
    base_mb = runs["base"]["rss_mb"]
    print("resident memory (RSS, every weight read once in each process):")
    print(f"  base alone:                                          {base_mb:8.1f} MB")
    for label, run in (("cache off (max_bytes=0)", nocache), ("default cache, every mask used", masks)):
        print(
            f"  base + {run['n_masks']} masks, {label:32s} {run['rss_mb']:8.1f} MB  ratio {run['rss_mb'] / base_mb:.3f}"
            f"  (cache holds {run['cache_mb']:.1f} MB, bound {run['cache_bound_mb']:.0f} MB)"
        )
    if "anon_mb" in runs["base"]:
        parts = ", ".join(
            f"{label} {runs[role]['anon_mb']:.0f} + {runs[role]['file_mb']:.0f} MB"
            for label, role in (("base", "base"), ("cache off", "masks-nocache"), ("cache", "masks"))
        )
        print(f"  RSS split, anonymous + file-backed (the checkpoint's mapped pages): {parts}")
    stored = masks["stored_mask_mb"]
    print(
        f"each loaded mask costs its compressed repo: {stored / masks['n_masks']:.2f} MB "
        f"({stored:.1f} MB for {masks['n_masks']}, {stored / param_mb:.3f} of the base's {param_mb:.0f} MB of "
        "parameters); the cache holds 4 bytes per masked-out weight of each decoded layer, 8 more once its "
        "sparse kernel ran"
    )


if __name__ == "__main__":
    main()
