#!/usr/bin/env python
"""Learn a binary mask (or finetune, with --no_masking; or LoRA, with --lora_r) for causal language modeling.

A modified copy of transformers' examples/pytorch/language-modeling/run_clm.py: the same flags, plus
the masking flags of `hf_masking.arguments.MaskingArguments`. Runs offline on local text files:

    python run_clm_masking.py --model_name_or_path Qwen/Qwen2.5-0.5B --dtype bfloat16 \\
        --train_file train.txt --validation_file valid.txt --block_size 512 \\
        --do_train --do_eval --bf16 --mask_score_dtype bfloat16 --output_dir qwen-mask

With masking, the defaults carry the paper's rule over to decoders: every linear layer of every block
but the bottom two, with the embeddings, norms and the LM head left as they are. Texts are
concatenated and cut into blocks of --block_size tokens, as in the original; the model shifts the
labels itself. The evaluation reports the loss, perplexity and next-token accuracy.
"""

import logging
import math
from dataclasses import dataclass, field
from itertools import chain

import torch
from datasets import load_dataset
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from hf_masking.arguments import MaskingArguments, ModelArguments
from hf_masking.data import DataFileError, check_file, check_text_file
from hf_masking.scripts import (
    callbacks_for,
    optimizer_for,
    parse_and_set_up,
    prepare_model,
    push_outputs,
    save_model_card,
    shut_down_distributed,
    train_and_save,
)

logger = logging.getLogger(__name__)

TEXT_EXTENSIONS = ("txt", "csv", "json", "jsonl")


@dataclass
class CausalLMModelArguments(ModelArguments):
    """The shared model flags plus run_clm's own: a dtype to load in, and a config to train from scratch."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Path to a pretrained model or its id on the Hub (required unless --no_masking)."},
    )
    model_type: str | None = field(
        default=None,
        metadata={"help": "With --no_masking and no model: train this model type from scratch."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Override config values when training from scratch, e.g. n_embd=10,resid_pdrop=0.2."},
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Load the model in this dtype ('auto': the checkpoint's). With masking, a bfloat16 base "
            "halves the frozen weights' memory; the scores keep --mask_score_dtype.",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )

    def __post_init__(self):
        if self.config_overrides is not None and (self.config_name is not None or self.model_name_or_path is not None):
            raise ValueError(
                "--config_overrides can't be used in combination with --config_name or --model_name_or_path"
            )


@dataclass
class DataTrainingArguments:
    """What text to train and evaluate on."""

    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (needs a network)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    train_file: str | None = field(default=None, metadata={"help": "A txt, csv or json(l) file of training text."})
    validation_file: str | None = field(
        default=None, metadata={"help": "A txt, csv or json(l) file to evaluate perplexity on."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training blocks to this many."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Truncate the evaluation blocks to this many."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream a Hub dataset (not supported offline)."})
    block_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per training block. Default: the model's maximum length, capped at 1024."},
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Overwrite the cached preprocessed datasets."})
    validation_split_percentage: int | None = field(
        default=5, metadata={"help": "Percent of the training set held out for validation when there is none."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for preprocessing."})
    keep_linebreaks: bool = field(default=True, metadata={"help": "Keep line breaks when reading .txt files."})

    def __post_init__(self):
        if self.dataset_name is None and self.train_file is None and self.validation_file is None:
            raise ValueError("Need either a dataset name or a training/validation file.")
        for what in ("train_file", "validation_file"):
            check_file(getattr(self, what), what, TEXT_EXTENSIONS)
        if self.block_size is not None and self.block_size < 2:
            raise ValueError(f"--block_size {self.block_size}: a block needs at least 2 tokens to predict one.")
        if self.streaming:
            raise ValueError("--streaming is not supported by this script: it trains on local files or a Hub dataset.")


def load_raw_datasets(data_args: DataTrainingArguments, model_args: CausalLMModelArguments):
    """Local text files (or a Hub dataset), with a validation split carved from training when there is none."""
    if data_args.dataset_name is not None:
        source, kwargs = data_args.dataset_name, {"name": data_args.dataset_config_name, "token": model_args.token}
    else:
        files = {s: f for s, f in (("train", data_args.train_file), ("validation", data_args.validation_file)) if f}
        extension = next(iter(files.values())).rsplit(".", 1)[-1].lower()
        if len({f.rsplit(".", 1)[-1].lower() for f in files.values()}) > 1:
            raise DataFileError(
                f"--train_file and --validation_file must have the same format; got {sorted(files.values())}."
            )
        for split, path in files.items():
            check_text_file(path, f"{split}_file")
        source = {"txt": "text", "jsonl": "json"}.get(extension, extension)
        kwargs = {"data_files": files}
        if source == "text":
            kwargs["keep_linebreaks"] = data_args.keep_linebreaks
    raw_datasets = load_dataset(source, cache_dir=model_args.cache_dir, **kwargs)
    if "validation" not in raw_datasets and "train" in raw_datasets:
        percent = data_args.validation_split_percentage
        raw_datasets["validation"] = load_dataset(
            source, split=f"train[:{percent}%]", cache_dir=model_args.cache_dir, **kwargs
        )
        raw_datasets["train"] = load_dataset(
            source, split=f"train[{percent}%:]", cache_dir=model_args.cache_dir, **kwargs
        )
    return raw_datasets


def main():
    parser = HfArgumentParser((CausalLMModelArguments, DataTrainingArguments, TrainingArguments, MaskingArguments))
    model_args, data_args, training_args, masking_args = parse_and_set_up(parser, logger)
    if model_args.model_name_or_path is None and not masking_args.no_masking:
        raise ValueError(
            "Masking needs a pretrained model: pass --model_name_or_path (or --no_masking to train from scratch)."
        )

    raw_datasets = load_raw_datasets(data_args, model_args)

    # Model and tokenizer
    if model_args.config_name or model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(
            model_args.config_name or model_args.model_name_or_path, **model_args.hub_kwargs()
        )
    else:
        if model_args.model_type not in CONFIG_MAPPING:
            raise ValueError(f"--model_type {model_args.model_type!r} is not a known model type.")
        config = CONFIG_MAPPING[model_args.model_type]()
        logger.warning("You are instantiating a new config instance from scratch.")
        if model_args.config_overrides is not None:
            logger.info(f"Overriding config: {model_args.config_overrides}")
            config.update_from_string(model_args.config_overrides)
            logger.info(f"New config: {config}")
    if not (model_args.tokenizer_name or model_args.model_name_or_path):
        raise ValueError("Training a tokenizer from scratch is not supported: pass --tokenizer_name.")
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path,
        use_fast=model_args.use_fast_tokenizer,
        **model_args.hub_kwargs(),
    )
    if model_args.model_name_or_path:
        dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
        model = AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path, config=config, dtype=dtype, **model_args.hub_kwargs()
        )
    else:
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_args.trust_remote_code)
    embedding_size = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embedding_size:
        if not masking_args.no_masking:
            # New embedding rows would be random and untrained: the mask could not use them, and the repo
            # would no longer match its base.
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the model only {embedding_size} embeddings; masking "
                "keeps the base as it is, so pass the base's own tokenizer."
            )
        model.resize_token_embeddings(len(tokenizer))
    model = prepare_model(model, masking_args, training_args)

    # Preprocessing: tokenize, then concatenate and cut into blocks (the original's group_texts).
    split = "train" if training_args.do_train else "validation"
    column_names = list(raw_datasets[split].features)
    text_column_name = "text" if "text" in column_names else column_names[0]

    def tokenize_function(examples):
        return tokenizer([str(t) for t in examples[text_column_name]])

    with training_args.main_process_first(desc="dataset map tokenization"):
        tokenized_datasets = raw_datasets.map(
            tokenize_function,
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            remove_columns=column_names,
            load_from_cache_file=not data_args.overwrite_cache,
            desc="Running tokenizer on dataset",
        )
    max_positions = getattr(config, "max_position_embeddings", None) or 1024
    if data_args.block_size is None:
        block_size = min(tokenizer.model_max_length, max_positions, 1024)
    else:
        if data_args.block_size > tokenizer.model_max_length:
            logger.warning(
                f"--block_size {data_args.block_size} is larger than the model's maximum length "
                f"({tokenizer.model_max_length}); using {tokenizer.model_max_length}."
            )
        block_size = min(data_args.block_size, tokenizer.model_max_length)

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total_length = (len(concatenated["input_ids"]) // block_size) * block_size
        result = {
            k: [t[i : i + block_size] for i in range(0, total_length, block_size)] for k, t in concatenated.items()
        }
        result["labels"] = [list(ids) for ids in result["input_ids"]]
        return result

    with training_args.main_process_first(desc="grouping texts together"):
        lm_datasets = tokenized_datasets.map(
            group_texts,
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            load_from_cache_file=not data_args.overwrite_cache,
            desc=f"Grouping texts in chunks of {block_size}",
        )

    train_dataset = eval_dataset = None
    for needed, name, limit in (
        (training_args.do_train, "train", data_args.max_train_samples),
        (training_args.do_eval, "validation", data_args.max_eval_samples),
    ):
        if not needed:
            continue
        if name not in lm_datasets:
            raise ValueError(f"--do_{'train' if name == 'train' else 'eval'} requires a {name} dataset")
        dataset = lm_datasets[name]
        if len(dataset) == 0:
            raise DataFileError(
                f"The {name} text has fewer than --block_size={block_size} tokens, so it makes no block; "
                "pass a smaller --block_size or more text."
            )
        if limit is not None:
            dataset = dataset.select(range(min(len(dataset), limit)))
        if name == "train":
            train_dataset = dataset
        else:
            eval_dataset = dataset

    def preprocess_logits_for_metrics(logits, labels):
        if isinstance(logits, tuple):  # logits come first, past_key_values may follow
            logits = logits[0]
        return logits.argmax(dim=-1)

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        labels = labels[:, 1:].reshape(-1)  # the prediction at position t is for token t + 1
        preds = preds[:, :-1].reshape(-1)
        keep = labels != -100
        return {"accuracy": float((preds[keep] == labels[keep]).mean())}

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        compute_metrics=compute_metrics if training_args.do_eval else None,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if training_args.do_eval else None,
        callbacks=callbacks_for(model),
        optimizer_cls_and_kwargs=optimizer_for(model, training_args, masking_args),
    )

    if training_args.do_train:
        train_and_save(trainer, tokenizer)

    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(eval_dataset)
        try:
            metrics["perplexity"] = math.exp(metrics["eval_loss"])
        except OverflowError:
            metrics["perplexity"] = float("inf")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        save_model_card(trainer, metrics, "Causal language modeling", data_args.dataset_name)

    kwargs = {"finetuned_from": model_args.model_name_or_path, "tasks": "text-generation"}
    if data_args.dataset_name is not None:
        kwargs["dataset_tags"] = data_args.dataset_name
        kwargs["dataset"] = " ".join(filter(None, (data_args.dataset_name, data_args.dataset_config_name)))
        if data_args.dataset_config_name is not None:
            kwargs["dataset_args"] = data_args.dataset_config_name
    if training_args.push_to_hub:
        push_outputs(trainer, **kwargs)


if __name__ == "__main__":
    try:
        main()
    finally:
        shut_down_distributed()
