"""What the three example scripts share: wrapping the model, saving, pushing, reporting.

Kept here so the scripts stay one linear `main()` each, like transformers' originals.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import torch
import transformers
from torch import nn
from transformers import HfArgumentParser, PreTrainedTokenizerBase, Trainer, TrainingArguments, set_seed

from .model import MaskedModel

logger = logging.getLogger(__name__)


def parse_and_set_up(parser: HfArgumentParser, script_logger: logging.Logger) -> tuple:
    """Parse flags (or one .json file of them), set up logging as the originals do, and seed."""
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        parsed = parser.parse_json_file(os.path.abspath(sys.argv[1]))
    else:
        parsed = parser.parse_args_into_dataclasses()
    training_args = next(a for a in parsed if isinstance(a, TrainingArguments))
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    for name in (script_logger.name, "hf_masking"):
        logging.getLogger(name).setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    script_logger.info(f"Training/evaluation parameters {training_args}")
    set_seed(training_args.seed)
    return tuple(parsed)


def train_and_save(trainer: Trainer, tokenizer: PreTrainedTokenizerBase | None) -> None:
    """Train (resuming if asked), save the mask repo or model, and write the train metrics and state."""
    result = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    metrics = result.metrics
    metrics["train_samples"] = len(trainer.train_dataset)
    metrics["train_trainable_params"] = trainable_parameters(trainer.model)
    save_outputs(trainer, tokenizer)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()


def prepare_model(model: nn.Module, masking_args: Any, training_args: TrainingArguments) -> nn.Module:
    """Finetune as is (`--no_masking`), evaluate a saved mask (`--mask_from`), or wrap for masking.

    A mask repo is checked against the base given by --model_name_or_path here, before any work.
    """
    if masking_args.mask_from and (masking_args.no_masking or masking_args.lora_r):
        raise ValueError("--mask_from evaluates a mask; it cannot be combined with --no_masking or --lora_r.")
    if masking_args.lora_r:
        return _with_lora(model, masking_args)
    if masking_args.no_masking:
        return model
    if masking_args.mask_from:
        if training_args.do_train:
            raise ValueError("--mask_from loads a finished mask for evaluation; drop --do_train or --mask_from.")
        return MaskedModel.from_pretrained(masking_args.mask_from, base_model=model)
    masked = MaskedModel(model, masking_args.to_masking_config(default_seed=training_args.seed))
    trainable, total = masked.num_trainable_parameters()
    logger.info(f"Masking {len(masked.targets.modules)} layers: {trainable:,} trainable scores, {total:,} parameters")
    return masked


def _with_lora(model: nn.Module, masking_args: Any) -> nn.Module:
    """PEFT LoRA on the attention query and value projections, the task head trained in full."""
    from peft import LoraConfig, TaskType, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [n for n in ("query", "value", "q_lin", "v_lin", "q_proj", "v_proj") if n in names]
    head = type(model).__name__
    task_type = TaskType.SEQ_CLS if head.endswith("ForSequenceClassification") else None
    task_type = TaskType.TOKEN_CLS if head.endswith("ForTokenClassification") else task_type
    heads = [n for n in ("classifier", "pre_classifier", "score") if n in dict(model.named_children())]
    config = LoraConfig(
        r=masking_args.lora_r,
        lora_alpha=masking_args.lora_alpha,
        lora_dropout=masking_args.lora_dropout,
        target_modules=targets,
        task_type=task_type,
        modules_to_save=heads,
    )
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    logger.info(f"LoRA r={masking_args.lora_r} on {targets}, head {heads}: {trainable:,} trainable parameters")
    return peft_model


def callbacks_for(model: nn.Module) -> list:
    if isinstance(model, MaskedModel):
        from .callback import MaskingCallback

        return [MaskingCallback()]
    return []


def trainable_parameters(model: nn.Module) -> int:
    """Parameters the optimizer updates: scores with masking, adapter + head with LoRA, all with finetuning."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_outputs(trainer: Trainer, tokenizer: PreTrainedTokenizerBase | None) -> None:
    """With masking: the tiny mask repo plus the tokenizer, not a copy of the base. Else the full model."""
    model = trainer.model
    if isinstance(model, MaskedModel):
        if trainer.args.should_save:
            model.save_pretrained(trainer.args.output_dir)
            if tokenizer is not None:
                tokenizer.save_pretrained(trainer.args.output_dir)
    else:
        trainer.save_model()


def push_outputs(trainer: Trainer, **card_kwargs: Any) -> None:
    """`--push_to_hub`: the tiny mask repo with masking, the Trainer's usual upload otherwise."""
    model = trainer.model
    if not isinstance(model, MaskedModel):
        trainer.push_to_hub(**card_kwargs)
        return
    if trainer.args.should_save:
        repo_id = trainer.args.hub_model_id or os.path.basename(os.path.abspath(trainer.args.output_dir))
        url = model.push_to_hub(repo_id, private=bool(trainer.args.hub_private_repo), token=trainer.args.hub_token)
        logger.info(f"Pushed the mask to {url}")


def report_against_baseline(metrics: dict[str, float], baseline: dict[str, float], prefix: str = "eval") -> None:
    """Add the majority-class baseline to the metrics and print them side by side."""
    for name, value in baseline.items():
        metrics[f"{prefix}_majority_baseline_{name}"] = value
        if f"{prefix}_{name}" in metrics:
            print(f"{prefix} {name}: {metrics[f'{prefix}_{name}']:.4f} (majority-class baseline: {value:.4f})")


def shut_down_distributed() -> None:
    """Destroy the process group a distributed run (torchrun) created, while the interpreter is still alive.

    Otherwise gloo's worker threads can outlive it and abort the process at exit with "terminate called
    without an active exception" (pytorch/pytorch#190489), turning a finished run into a failed one.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
