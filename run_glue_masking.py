#!/usr/bin/env python
"""Learn a binary mask (or finetune, with --no_masking) for sequence classification on GLUE or your own files.

A modified copy of transformers' examples/pytorch/text-classification/run_glue.py: the same flags,
plus the masking flags of `hf_masking.arguments.MaskingArguments`. Runs offline on local files:

    python run_glue_masking.py --model_name_or_path bert-base-uncased --task_name sst2 \\
        --train_file SST-2/train.tsv --validation_file SST-2/dev.tsv \\
        --do_train --do_eval --learning_rate 1e-3 --output_dir sst2-mask

With --task_name and files, the files are read as that GLUE task's files as distributed (its columns,
label set and metric). Without --task_name, csv/tsv/json(l) files with a `label` column are read
(text: `sentence1`/`sentence2`, else the first one or two other columns).
"""

import logging
import os
from dataclasses import dataclass, field

import numpy as np
from datasets import load_dataset
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from hf_masking.arguments import MaskingArguments, ModelArguments
from hf_masking.data import GLUE, DataFileError, check_file, check_known_labels, load_files, require_columns
from hf_masking.metrics import glue_metrics, majority_label
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

    task_name: str | None = field(default=None, metadata={"help": "The GLUE task to train on: " + ", ".join(GLUE)})
    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (needs a network)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    max_seq_length: int = field(
        default=128, metadata={"help": "Maximum length after tokenization; longer inputs are truncated."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Overwrite the cached preprocessed datasets."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for preprocessing."})
    pad_to_max_length: bool = field(
        default=True, metadata={"help": "Pad to max_seq_length; if False, pad dynamically per batch."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set to this size."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set to this size."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the test set to this size."})
    train_file: str | None = field(default=None, metadata={"help": "A csv, tsv or json(l) file of training data."})
    validation_file: str | None = field(default=None, metadata={"help": "A csv, tsv or json(l) file for evaluation."})
    test_file: str | None = field(default=None, metadata={"help": "A csv, tsv or json(l) file for prediction."})
    label_column_name: str = field(default="label", metadata={"help": "The label column of your own files."})

    def __post_init__(self):
        if self.task_name is not None:
            self.task_name = self.task_name.lower().replace("-", "")
            if self.task_name not in GLUE:
                raise ValueError(f"Unknown task {self.task_name!r}; pick one of {', '.join(GLUE)}.")
        elif self.dataset_name is None and (self.train_file is None and self.validation_file is None):
            raise ValueError("Need a GLUE task, a dataset name, or training/validation files.")
        for what in ("train_file", "validation_file", "test_file"):
            check_file(getattr(self, what), what)


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments, MaskingArguments))
    model_args, data_args, training_args, masking_args = parse_and_set_up(parser, logger)

    # Data: local files (read as the GLUE task's files when --task_name is given) or the Hub.
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    label_column = "label" if data_args.task_name else data_args.label_column_name
    if any(files.values()):
        raw_datasets = load_files(files, data_args.task_name, label_column)
    elif data_args.task_name is not None:
        raw_datasets = load_dataset("nyu-mll/glue", data_args.task_name, cache_dir=model_args.cache_dir)
    else:
        raw_datasets = load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    labeled = [s for s in ("train", "validation") if s in raw_datasets]
    require_columns({s: raw_datasets[s] for s in labeled}, [label_column], "label")
    if label_column != "label":
        raw_datasets = raw_datasets.rename_column(label_column, "label")

    # Labels
    reference = raw_datasets["train"] if "train" in raw_datasets else raw_datasets["validation"]
    if data_args.task_name is not None:
        is_regression = data_args.task_name == "stsb"
        label_list = None if is_regression else list(GLUE[data_args.task_name].labels)
    else:
        is_regression = reference.features["label"].dtype in ("float32", "float64")
        label_list = None if is_regression else sorted(set(reference["label"]))
        if label_list is not None and "train" in raw_datasets and "validation" in raw_datasets:
            check_known_labels(
                raw_datasets["validation"]["label"],
                files["validation"] or "validation",
                label_column,
                set(label_list),
                files["train"],
            )
    num_labels = 1 if is_regression else len(label_list)

    # Model and tokenizer
    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path,
        num_labels=num_labels,
        finetuning_task=data_args.task_name,
        **model_args.hub_kwargs(),
    )
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path,
        use_fast=model_args.use_fast_tokenizer,
        **model_args.hub_kwargs(),
    )
    label_to_id = None
    if label_list is not None:
        label_to_id = {label: i for i, label in enumerate(label_list)}
        if data_args.task_name is None or all(isinstance(x, str) for x in label_list):
            config.label2id = {str(label): i for label, i in label_to_id.items()}
            config.id2label = {i: str(label) for label, i in label_to_id.items()}
        else:
            config.label2id = {label: i for i, label in enumerate(label_list)}
            config.id2label = dict(enumerate(label_list))
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        **model_args.hub_kwargs(),
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    model = prepare_model(model, masking_args, training_args)

    # Preprocessing
    if data_args.task_name is not None:
        sentence1_key, sentence2_key = GLUE[data_args.task_name].keys
    else:
        non_label = [name for name in reference.column_names if name != "label"]
        if "sentence1" in non_label and "sentence2" in non_label:
            sentence1_key, sentence2_key = "sentence1", "sentence2"
        elif len(non_label) >= 2:
            sentence1_key, sentence2_key = non_label[:2]
        elif non_label:
            sentence1_key, sentence2_key = non_label[0], None
        else:
            raise DataFileError("The data has no text column besides the label.")
    padding = "max_length" if data_args.pad_to_max_length else False
    max_seq_length = min(data_args.max_seq_length, tokenizer.model_max_length)
    if label_to_id is not None and data_args.task_name is None:
        # Own files may use any label values: replace them by ids (in a new column, since datasets keeps
        # an overwritten column's type and would turn the ids back into strings).
        for split in [s for s in raw_datasets if "label" in raw_datasets[s].column_names]:
            raw_datasets[split] = (
                raw_datasets[split]
                .map(lambda batch: {"label_id": [label_to_id[x] for x in batch["label"]]}, batched=True)
                .remove_columns("label")
                .rename_column("label_id", "label")
            )

    def preprocess_function(examples):
        texts = (
            (examples[sentence1_key],) if sentence2_key is None else (examples[sentence1_key], examples[sentence2_key])
        )
        return tokenizer(
            *[[str(t) for t in column] for column in texts], padding=padding, max_length=max_seq_length, truncation=True
        )

    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_predict_samples,
    }
    for split, limit in limits.items():  # before tokenizing: no need to tokenize 67k rows to train on 1k
        if limit is not None and split in raw_datasets:
            raw_datasets[split] = raw_datasets[split].select(range(min(len(raw_datasets[split]), limit)))
    with training_args.main_process_first(desc="dataset map pre-processing"):
        raw_datasets = raw_datasets.map(
            preprocess_function,
            batched=True,
            load_from_cache_file=not data_args.overwrite_cache,
            num_proc=data_args.preprocessing_num_workers,
            desc="Running tokenizer on dataset",
        )

    train_dataset = eval_dataset = predict_dataset = None
    if training_args.do_train:
        if "train" not in raw_datasets:
            raise ValueError("--do_train requires a train dataset")
        train_dataset = raw_datasets["train"]
    if training_args.do_eval:
        split = (
            "validation_matched"
            if data_args.task_name == "mnli" and "validation_matched" in raw_datasets
            else "validation"
        )
        if split not in raw_datasets:
            raise ValueError("--do_eval requires a validation dataset")
        eval_dataset = raw_datasets[split]
    if training_args.do_predict:
        split = "test_matched" if data_args.task_name == "mnli" and "test_matched" in raw_datasets else "test"
        if split not in raw_datasets:
            raise ValueError("--do_predict requires a test dataset")
        predict_dataset = raw_datasets[split]

    def compute_metrics(p: EvalPrediction):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        preds = np.squeeze(preds) if is_regression else np.argmax(preds, axis=1)
        return glue_metrics(data_args.task_name, preds, p.label_ids)

    if data_args.pad_to_max_length:
        data_collator = default_data_collator
    else:
        data_collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if training_args.fp16 else None)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        data_collator=data_collator,
        callbacks=callbacks_for(model),
        optimizer_cls_and_kwargs=optimizer_for(model, training_args, masking_args),
    )

    if training_args.do_train:
        train_and_save(trainer, tokenizer)

    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate(eval_dataset=eval_dataset)
        metrics["eval_samples"] = len(eval_dataset)
        if not is_regression:
            majority = majority_label(train_dataset["label"] if train_dataset is not None else eval_dataset["label"])
            labels = np.array(eval_dataset["label"])
            report_against_baseline(metrics, glue_metrics(data_args.task_name, np.full_like(labels, majority), labels))
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        task = f"GLUE {data_args.task_name.upper()}" if data_args.task_name else "Text classification"
        save_model_card(trainer, metrics, task, "nyu-mll/glue" if data_args.task_name else data_args.dataset_name)

    if training_args.do_predict:
        logger.info("*** Predict ***")
        predict_dataset = predict_dataset.remove_columns([c for c in ("label",) if c in predict_dataset.column_names])
        predictions = trainer.predict(predict_dataset, metric_key_prefix="predict").predictions
        predictions = np.squeeze(predictions) if is_regression else np.argmax(predictions, axis=1)
        output_predict_file = os.path.join(
            training_args.output_dir, f"predict_results_{data_args.task_name or 'task'}.txt"
        )
        if trainer.is_world_process_zero():
            with open(output_predict_file, "w") as writer:
                writer.write("index\tprediction\n")
                for index, item in enumerate(predictions):
                    value = f"{item:3.3f}" if is_regression else model.config.id2label[int(item)]
                    writer.write(f"{index}\t{value}\n")

    kwargs = {"finetuned_from": model_args.model_name_or_path, "tasks": "text-classification"}
    if data_args.task_name is not None:
        kwargs.update(
            language="en",
            dataset_tags="glue",
            dataset_args=data_args.task_name,
            dataset=f"GLUE {data_args.task_name.upper()}",
        )
    if training_args.push_to_hub:
        push_outputs(trainer, **kwargs)


if __name__ == "__main__":
    try:
        main()
    finally:
        shut_down_distributed()
