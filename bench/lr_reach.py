"""How much of the mask a learning rate changes: the measurement behind `hf_masking.reach`.

MiniLM-L6 on 2,000 SST-2 sentences, one epoch at batch 16 (125 steps, linear schedule), masking at
each rate: the fraction of mask entries that differ from the initial mask, the fraction of scores
`reach` predicts within reach of τ, dev accuracy (872 sentences), and whether `reach.check` warns.

    python bench/lr_reach.py --rates 1e-4 1e-3 8e-3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
from accuracy import DATA, RESULTS, minilm_path  # noqa: E402

from hf_masking import MaskedModel, MaskingCallback, MaskingConfig, reach  # noqa: E402


def read_sst2(name: str, limit: int | None) -> list[tuple[str, int]]:
    with open(os.path.join(DATA, "glue", "SST-2", name), encoding="utf-8") as handle:
        rows = [(row["sentence"], int(row["label"])) for row in csv.DictReader(handle, delimiter="\t", quoting=3)]
    return rows[:limit] if limit else rows


class Rows(torch.utils.data.Dataset):
    def __init__(self, tokenizer, rows):
        self.items = [{**tokenizer(text, truncation=True, max_length=64), "labels": label} for text, label in rows]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def run(rate: float, train: Rows, dev: Rows, tokenizer, seed: int) -> dict:
    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    model = MaskedModel(base, MaskingConfig(seed=seed))
    before = {name: mask.clone() for name, mask in model.masks().items()}
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            out,
            learning_rate=rate,
            num_train_epochs=1,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=64,
            seed=seed,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
        )
        from transformers import DataCollatorWithPadding

        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=dev,
            data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=[MaskingCallback()],
            compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
        )
        steps = len(trainer.get_train_dataloader())
        warning = reach.check(model.masking_config, args, steps, rate)
        trainer.train()
        accuracy = trainer.evaluate()["eval_accuracy"]
    after = model.masks()
    changed = sum(int((after[n] != before[n]).sum()) for n in before)
    total = sum(mask.numel() for mask in before.values())
    predicted = reach.movable_fraction(model.masking_config, reach.schedule_sum(args, steps, rate))
    return {
        "rate": rate,
        "steps": steps,
        "changed": changed / total,
        "movable": predicted,
        "accuracy": accuracy,
        "warns": warning is not None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[1e-4, 1e-3, 8e-3])
    parser.add_argument("--train_rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train = Rows(tokenizer, read_sst2("train.tsv", args.train_rows))
    dev = Rows(tokenizer, read_sst2("dev.tsv", None))
    results = []
    for rate in args.rates:
        results.append(run(rate, train, dev, tokenizer, args.seed))
        print(json.dumps(results[-1]), flush=True)
    with open(os.path.join(RESULTS, "lr_reach.json"), "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
