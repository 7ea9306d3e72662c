#!/usr/bin/env python
"""Learn a binary mask (or finetune, with --no_masking) for token classification (NER, POS, chunking).

A modified copy of transformers' examples/pytorch/token-classification/run_ner.py: the same flags,
plus the masking flags of `hf_masking.arguments.MaskingArguments`. Reads CoNLL column files
(`token ... tag` per line, blank lines between sentences, -DOCSTART- lines anywhere; e.g. CoNLL-2003's
eng.train / eng.testa) and csv/json(l) files with token and tag lists, offline:

    python run_ner_masking.py --model_name_or_path bert-base-cased \\
        --train_file conll2003/eng.train --validation_file conll2003/eng.testa \\
        --do_train --do_eval --learning_rate 1e-3 --output_dir conll-mask
"""

import logging
import os
from dataclasses import dataclass, field

import numpy as np
from datasets import ClassLabel, Sequence, load_dataset
from transformers import (
    AutoConfig,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    HfArgumentParser,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

from hf_masking.arguments import MaskingArguments, ModelArguments
from hf_masking.data import (
    CONLL_EXTENSIONS,
    EXTENSIONS,
    check_file,
    check_known_labels,
    load_token_files,
    require_columns,
)
from hf_masking.metrics import majority_label, seqeval_metrics
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

    task_name: str = field(default="ner", metadata={"help": "The task (ner, pos or chunk)."})
    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (needs a network)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    train_file: str | None = field(default=None, metadata={"help": "CoNLL, csv or json(l) training data."})
    validation_file: str | None = field(default=None, metadata={"help": "CoNLL, csv or json(l) evaluation data."})
    test_file: str | None = field(default=None, metadata={"help": "CoNLL, csv or json(l) data to predict on."})
    text_column_name: str | None = field(default=None, metadata={"help": "Column of token lists (default: tokens)."})
    label_column_name: str | None = field(
        default=None, metadata={"help": "Column of tag lists (default: {task_name}_tags, CoNLL files: ner_tags)."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Overwrite the cached preprocessed datasets."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for preprocessing."})
    max_seq_length: int | None = field(default=None, metadata={"help": "Maximum length after tokenization."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad to max_seq_length instead of per batch."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set to this size."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set to this size."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the test set to this size."})
    label_all_tokens: bool = field(
        default=False,
        metadata={"help": "Label every sub-token of a word (B- becomes I- after the first) instead of only the first."},
    )
    return_entity_level_metrics: bool = field(
        default=False, metadata={"help": "Report precision/recall/F1 per entity type too."}
    )

    def __post_init__(self):
        if self.dataset_name is None and self.train_file is None and self.validation_file is None:
            raise ValueError("Need a dataset name or a training/validation file.")
        for what in ("train_file", "validation_file", "test_file"):
            check_file(getattr(self, what), what, EXTENSIONS + CONLL_EXTENSIONS)
        self.task_name = self.task_name.lower()


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments, MaskingArguments))
    model_args, data_args, training_args, masking_args = parse_and_set_up(parser, logger)

    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    if any(files.values()):
        raw_datasets = load_token_files(files)
    else:
        raw_datasets = load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    reference = raw_datasets["train"] if "train" in raw_datasets else raw_datasets["validation"]
    column_names = reference.column_names
    text_column_name = data_args.text_column_name or ("tokens" if "tokens" in column_names else column_names[0])
    default_label = f"{data_args.task_name}_tags"
    label_column_name = data_args.label_column_name or (
        default_label
        if default_label in column_names
        else "ner_tags"
        if "ner_tags" in column_names
        else column_names[1]
    )
    labeled = {s: raw_datasets[s] for s in ("train", "validation") if s in raw_datasets}
    require_columns(labeled, [text_column_name, label_column_name], "token or tag")
    require_columns({s: d for s, d in raw_datasets.items() if s == "test"}, [text_column_name], "token")

    # Tag names: from the dataset's ClassLabel feature, else every tag seen in training, sorted.
    feature = reference.features[label_column_name]
    if isinstance(feature, Sequence) and isinstance(feature.feature, ClassLabel):
        label_list = feature.feature.names
        label_to_id = {i: i for i in range(len(label_list))}
    else:
        label_list = sorted({tag for tags in reference[label_column_name] for tag in tags}, key=str)
        label_to_id = {tag: i for i, tag in enumerate(label_list)}
        label_list = [str(tag) for tag in label_list]
        if "train" in raw_datasets and "validation" in raw_datasets:
            check_known_labels(
                raw_datasets["validation"][label_column_name],
                data_args.validation_file or "validation",
                label_column_name,
                set(label_to_id),
                data_args.train_file,
            )
    num_labels = len(label_list)

    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path,
        num_labels=num_labels,
        finetuning_task=data_args.task_name,
        **model_args.hub_kwargs(),
    )
    tokenizer_name_or_path = model_args.tokenizer_name or model_args.model_name_or_path
    add_prefix_space = config.model_type in {"bloom", "gpt2", "roberta", "deberta"}
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_name_or_path,
        use_fast=True,
        **model_args.hub_kwargs(),
        **({"add_prefix_space": True} if add_prefix_space else {}),
    )
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ValueError("This script needs a fast tokenizer (word_ids) to align tags with sub-tokens.")
    config.label2id = {label: i for i, label in enumerate(label_list)}
    config.id2label = dict(enumerate(label_list))
    model = AutoModelForTokenClassification.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        **model_args.hub_kwargs(),
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    model = prepare_model(model, masking_args, training_args)

    # With --label_all_tokens, a B- tag on a word's later sub-tokens becomes the matching I- tag.
    b_to_i_label = []
    for idx, label in enumerate(label_list):
        inside = "I-" + label[2:]
        b_to_i_label.append(label_list.index(inside) if label.startswith("B-") and inside in label_list else idx)
    padding = "max_length" if data_args.pad_to_max_length else False

    def tokenize_and_align_labels(examples):
        tokenized = tokenizer(
            examples[text_column_name],
            padding=padding,
            truncation=True,
            max_length=data_args.max_seq_length,
            is_split_into_words=True,
        )
        if label_column_name not in examples:
            return tokenized
        labels = []
        for i, tags in enumerate(examples[label_column_name]):
            previous = None
            label_ids = []
            for word_idx in tokenized.word_ids(batch_index=i):
                if word_idx is None:
                    label_ids.append(-100)
                elif word_idx != previous:
                    label_ids.append(label_to_id[tags[word_idx]])
                else:
                    label_ids.append(b_to_i_label[label_to_id[tags[word_idx]]] if data_args.label_all_tokens else -100)
                previous = word_idx
            labels.append(label_ids)
        tokenized["labels"] = labels
        return tokenized

    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_predict_samples,
    }
    for split, limit in limits.items():
        if limit is not None and split in raw_datasets:
            raw_datasets[split] = raw_datasets[split].select(range(min(len(raw_datasets[split]), limit)))
    with training_args.main_process_first(desc="dataset map pre-processing"):
        processed = raw_datasets.map(
            tokenize_and_align_labels,
            batched=True,
            remove_columns=column_names,
            load_from_cache_file=not data_args.overwrite_cache,
            num_proc=data_args.preprocessing_num_workers,
            desc="Running tokenizer on dataset",
        )
    for flag, split in (("do_train", "train"), ("do_eval", "validation"), ("do_predict", "test")):
        if getattr(training_args, flag) and split not in processed:
            raise ValueError(f"--{flag} requires a {split} dataset")
    train_dataset = processed["train"] if training_args.do_train else None
    eval_dataset = processed["validation"] if training_args.do_eval else None

    def tags_of(predictions, labels):
        """Drop the ignored positions (-100) and map ids back to tag names."""
        pred_tags = [
            [label_list[p] for p, lab in zip(pr, la, strict=True) if lab != -100]
            for pr, la in zip(predictions, labels, strict=True)
        ]
        true_tags = [[label_list[lab] for lab in la if lab != -100] for la in labels]
        return pred_tags, true_tags

    def compute_metrics(p):
        predictions = np.argmax(p.predictions, axis=2)
        pred_tags, true_tags = tags_of(predictions, p.label_ids)
        results = seqeval_metrics(pred_tags, true_tags)
        if not data_args.return_entity_level_metrics:
            return results
        # As upstream: overall_* for the totals, <TYPE>_{precision,recall,f1,number} for each entity type.
        from seqeval.metrics import classification_report

        report = classification_report(true_tags, pred_tags, output_dict=True, zero_division=0)
        entity_level = {f"overall_{name}": value for name, value in results.items()}
        for entity, values in report.items():
            if " avg" not in entity:
                entity_level.update(
                    {
                        f"{entity}_precision": float(values["precision"]),
                        f"{entity}_recall": float(values["recall"]),
                        f"{entity}_f1": float(values["f1-score"]),
                        f"{entity}_number": int(values["support"]),
                    }
                )
        return entity_level

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorForTokenClassification(
            tokenizer, pad_to_multiple_of=8 if training_args.fp16 else None
        ),
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
        source = train_dataset if train_dataset is not None else eval_dataset
        majority = majority_label([t for row in source["labels"] for t in row if t != -100])
        labels = [row for row in eval_dataset["labels"]]
        constant = [[majority if t != -100 else -100 for t in row] for row in labels]
        baseline = seqeval_metrics(*tags_of(constant, labels))
        if data_args.return_entity_level_metrics:
            baseline = {f"overall_{name}": value for name, value in baseline.items()}
        report_against_baseline(metrics, baseline)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        save_model_card(trainer, metrics, "Token classification", data_args.dataset_name)

    if training_args.do_predict:
        logger.info("*** Predict ***")
        predict_dataset = processed["test"]
        output = trainer.predict(predict_dataset, metric_key_prefix="predict")
        predictions = np.argmax(output.predictions, axis=2)
        if "labels" in predict_dataset.column_names:
            trainer.log_metrics("predict", output.metrics)
            trainer.save_metrics("predict", output.metrics)
            pred_tags, _ = tags_of(predictions, output.label_ids)
        else:
            pred_tags = []
            for i, row in enumerate(predictions):
                words = predict_dataset[i]["input_ids"]
                word_ids = tokenizer(
                    raw_datasets["test"][i][text_column_name],
                    is_split_into_words=True,
                    truncation=True,
                    max_length=data_args.max_seq_length,
                ).word_ids()
                first = [j for j, w in enumerate(word_ids) if w is not None and (j == 0 or word_ids[j - 1] != w)]
                pred_tags.append([label_list[row[j]] for j in first if j < len(words)])
        if trainer.is_world_process_zero():
            with open(os.path.join(training_args.output_dir, "predictions.txt"), "w") as writer:
                for tags in pred_tags:
                    writer.write(" ".join(tags) + "\n")

    if training_args.push_to_hub:
        push_outputs(trainer, finetuned_from=model_args.model_name_or_path, tasks="token-classification")


if __name__ == "__main__":
    try:
        main()
    finally:
        shut_down_distributed()
