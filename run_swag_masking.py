#!/usr/bin/env python
"""Learn a binary mask (or finetune, with --no_masking) for multiple choice on SWAG-style data.

A modified copy of transformers' examples/pytorch/multiple-choice/run_swag.py: the same flags, plus
the masking flags of `hf_masking.arguments.MaskingArguments`. Reads SWAG's csv (`sent1, sent2,
ending0..N, label`; the number of endings comes from the columns), or json(l) with the same fields:

    python run_swag_masking.py --model_name_or_path bert-base-uncased \\
        --train_file swag/train.csv --validation_file swag/dev.csv \\
        --do_train --do_eval --learning_rate 1e-3 --output_dir swag-mask
"""

import logging
import re
from dataclasses import dataclass, field

import numpy as np
from datasets import load_dataset
from transformers import (
    AutoConfig,
    AutoModelForMultipleChoice,
    AutoTokenizer,
    DataCollatorForMultipleChoice,
    EvalPrediction,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from hf_masking.arguments import MaskingArguments, ModelArguments
from hf_masking.data import DataFileError, check_file, load_files, require_columns
from hf_masking.metrics import accuracy, majority_label
from hf_masking.scripts import (
    callbacks_for,
    optimizer_for,
    parse_and_set_up,
    prepare_model,
    push_outputs,
    report_against_baseline,
    save_model_card,
    shut_down_distributed,
    train_and_save,
)

logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on."""

    train_file: str | None = field(default=None, metadata={"help": "A csv or json(l) file of training data."})
    validation_file: str | None = field(default=None, metadata={"help": "A csv or json(l) file for evaluation."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Overwrite the cached preprocessed datasets."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for preprocessing."})
    max_seq_length: int | None = field(default=None, metadata={"help": "Maximum length of context + ending."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad to max_seq_length instead of per batch."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set to this size."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set to this size."})

    def __post_init__(self):
        for what in ("train_file", "validation_file"):
            check_file(getattr(self, what), what)


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments, MaskingArguments))
    model_args, data_args, training_args, masking_args = parse_and_set_up(parser, logger)

    files = {"train": data_args.train_file, "validation": data_args.validation_file}
    if any(files.values()):
        raw_datasets = load_files(files)
    else:
        raw_datasets = load_dataset("allenai/swag", "regular", cache_dir=model_args.cache_dir)
    reference = raw_datasets["train"] if "train" in raw_datasets else raw_datasets["validation"]
    ending_names = sorted(
        (c for c in reference.column_names if re.fullmatch(r"ending\d+", c)), key=lambda c: int(c[len("ending") :])
    )
    if len(ending_names) < 2:
        raise DataFileError(
            f"Multiple choice needs columns ending0, ending1, …; the columns are {reference.column_names}."
        )
    context_name, question_header_name = "sent1", "sent2"
    require_columns(raw_datasets, [context_name, question_header_name, "label", *ending_names], "SWAG")
    num_choices = len(ending_names)
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    for split, limit in limits.items():
        if limit is not None and split in raw_datasets:
            raw_datasets[split] = raw_datasets[split].select(range(min(len(raw_datasets[split]), limit)))

    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path,
        **model_args.hub_kwargs(),
    )
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path,
        use_fast=model_args.use_fast_tokenizer,
        **model_args.hub_kwargs(),
    )
    model = AutoModelForMultipleChoice.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        **model_args.hub_kwargs(),
    )
    model = prepare_model(model, masking_args, training_args)

    max_seq_length = min(data_args.max_seq_length or 1024, tokenizer.model_max_length)

    def preprocess_function(examples):
        first_sentences = [[str(context)] * num_choices for context in examples[context_name]]
        headers = examples[question_header_name]
        second_sentences = [
            [f"{header} {examples[end][i]}" for end in ending_names] for i, header in enumerate(headers)
        ]
        tokenized = tokenizer(
            sum(first_sentences, []),
            sum(second_sentences, []),
            truncation=True,
            max_length=max_seq_length,
            padding="max_length" if data_args.pad_to_max_length else False,
        )
        result = {k: [v[i : i + num_choices] for i in range(0, len(v), num_choices)] for k, v in tokenized.items()}
        result["label"] = [int(label) for label in examples["label"]]
        return result

    with training_args.main_process_first(desc="dataset map pre-processing"):
        processed = raw_datasets.map(
            preprocess_function,
            batched=True,
            remove_columns=reference.column_names,
            load_from_cache_file=not data_args.overwrite_cache,
            num_proc=data_args.preprocessing_num_workers,
            desc="Running tokenizer on dataset",
        )
    for flag, split in (("do_train", "train"), ("do_eval", "validation")):
        if getattr(training_args, flag) and split not in processed:
            raise ValueError(f"--{flag} requires a {split} dataset")
    train_dataset = processed["train"] if training_args.do_train else None
    eval_dataset = processed["validation"] if training_args.do_eval else None

    if data_args.pad_to_max_length:
        data_collator = default_data_collator
    else:
        data_collator = DataCollatorForMultipleChoice(tokenizer, pad_to_multiple_of=8 if training_args.fp16 else None)

    def compute_metrics(p: EvalPrediction):
        return accuracy(np.argmax(p.predictions, axis=1), p.label_ids)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
        callbacks=callbacks_for(model),
        optimizer_cls_and_kwargs=optimizer_for(model, training_args, masking_args),
    )

    if training_args.do_train:
        train_and_save(trainer, tokenizer)

    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(eval_dataset)
        majority = majority_label((train_dataset or eval_dataset)["label"])
        labels = np.array(eval_dataset["label"])
        report_against_baseline(metrics, accuracy(np.full_like(labels, majority), labels))
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        save_model_card(trainer, metrics, "Multiple choice", None if data_args.train_file else "allenai/swag")

    if training_args.push_to_hub:
        push_outputs(
            trainer,
            finetuned_from=model_args.model_name_or_path,
            tasks="multiple-choice",
            dataset_tags="swag",
            dataset_args="regular",
            dataset="SWAG",
            language="en",
        )


if __name__ == "__main__":
    try:
        main()
    finally:
        shut_down_distributed()
