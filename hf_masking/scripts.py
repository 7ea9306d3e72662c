"""What the four example scripts share: wrapping the model, saving, pushing, reporting.

Kept here so the scripts stay one linear `main()` each, like transformers' originals.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import torch
import transformers
from torch import nn
from transformers import HfArgumentParser, PreTrainedTokenizerBase, Trainer, TrainingArguments, set_seed

from . import sharding
from .model import MaskedModel

logger = logging.getLogger(__name__)


# Masking trains scores that start up to 0.57 (0.28 on average) above the threshold with the paper's
# initialisation, so it needs rates 10-100x finetuning's.
# 8e-3 is the single rate with the smallest mean loss against each task's best in the CPU benchmark
# (bench/results/cpu.json, MiniLM-L6, 1 epoch, seed 0): best on SST-2 and MRPC, 2.3 points below
# the best on SWAG (4e-3) and 8.7 on CoNLL-2003 (1.6e-2); 4e-3 and 1.6e-2 lose more on average.
DEFAULT_MASKING_LEARNING_RATE = 8e-3


def _learning_rate_given(json_file: str | None) -> bool:
    if json_file is not None:
        with open(json_file, encoding="utf-8") as handle:
            return "learning_rate" in json.load(handle)
    flags = ("--learning_rate", "--learning-rate")
    return any(arg in flags or arg.startswith(tuple(f + "=" for f in flags)) for arg in sys.argv[1:])


def set_masking_learning_rate(training_args: TrainingArguments, masking_args: Any, given: bool) -> None:
    """With masking, replace the Trainer's finetuning default (5e-5) and warn about finetuning-sized rates."""
    if masking_args is None or masking_args.no_masking or masking_args.lora_r:
        return
    if masking_args.mask_from and not training_args.do_train:
        return
    if not given and getattr(masking_args, "mask_learning_rate", None) is None:
        training_args.learning_rate = DEFAULT_MASKING_LEARNING_RATE
        logger.warning(
            f"Masking with no --learning_rate: using {DEFAULT_MASKING_LEARNING_RATE:g}, the best single rate of the "
            "masking benchmark (MiniLM-L6; SST-2, MRPC, CoNLL-2003, SWAG; bench/results/cpu.json). Pass "
            "--learning_rate to choose another."
        )
    # Whether a given rate can move the mask depends on the planned steps and schedule too:
    # MaskingCallback checks that when training starts (hf_masking.reach).


def check_model_sources(arguments: Any) -> None:
    """--model_name_or_path, --config_name, --tokenizer_name: a folder that exists or a Hub id, said clearly."""
    from .hub import source_problem

    for name in ("model_name_or_path", "config_name", "tokenizer_name"):
        value = getattr(arguments, name, None)
        problem = source_problem(value, f"--{name}") if value else None
        if problem:
            raise ValueError(problem)


def check_hub_reachable(training_args: TrainingArguments) -> None:
    """With --push_to_hub, make sure the Hub can be reached and a token is there before any work starts."""
    if not training_args.push_to_hub:
        return
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    keep = "The run would save into --output_dir and then fail to upload: drop --push_to_hub (push later with "
    keep += "MaskedModel.from_pretrained(output_dir).push_to_hub(repo_id))"
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"--push_to_hub: the Hub is switched off here (HF_HUB_OFFLINE=1). {keep}, or unset it.")
    try:
        HfApi(endpoint=constants.ENDPOINT).whoami(token=training_args.hub_token)
    except LocalTokenNotFoundError:
        raise ValueError(f"--push_to_hub needs a Hub token: run `hf auth login` or pass --hub_token. {keep}.") from None
    except OfflineModeIsEnabled:
        raise ValueError(f"--push_to_hub: the Hub is switched off here (HF_HUB_OFFLINE=1). {keep}.") from None
    except HfHubHTTPError as err:
        raise ValueError(f"--push_to_hub: the Hub at {constants.ENDPOINT} refused the token ({err}). {keep}.") from None
    except Exception as err:  # the HTTP client's own transport errors: no network, no DNS, refused
        raise ValueError(
            f"--push_to_hub: cannot reach the Hub at {constants.ENDPOINT} ({type(err).__name__}: {err}). {keep}."
        ) from None


def parse_and_set_up(parser: HfArgumentParser, script_logger: logging.Logger) -> tuple:
    """Parse flags (or one .json file of them), set up logging as the originals do, and seed.

    With masking and no --learning_rate, the rate is the masking default, not the Trainer's.
    """
    json_file = os.path.abspath(sys.argv[1]) if len(sys.argv) == 2 and sys.argv[1].endswith(".json") else None
    if json_file is not None:
        try:
            parsed = parser.parse_json_file(json_file)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"The arguments file {json_file} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}."
            ) from None
        except UnicodeDecodeError as err:
            raise ValueError(f"The arguments file {json_file} is not UTF-8 text ({err.reason}).") from None
        except FileNotFoundError:
            raise ValueError(f"The arguments file {json_file} does not exist.") from None
    else:
        parsed = parser.parse_args_into_dataclasses()
    for arguments in parsed:
        check_model_sources(arguments)
    training_args = next(a for a in parsed if isinstance(a, TrainingArguments))
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:  # as upstream: the default ("passive") logs at info level on the main process
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    for name in (script_logger.name, "hf_masking"):
        logging.getLogger(name).setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    check_hub_reachable(training_args)
    masking_args = next((a for a in parsed if type(a).__name__ == "MaskingArguments"), None)
    set_masking_learning_rate(training_args, masking_args, _learning_rate_given(json_file))
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
    """Finetune as is (`--no_masking`), evaluate or train on a saved mask (`--mask_from`), or wrap for masking.

    A mask repo is checked against the base given by --model_name_or_path here, before any work.
    """
    if masking_args.mask_from and (masking_args.no_masking or masking_args.lora_r):
        raise ValueError("--mask_from evaluates a mask; it cannot be combined with --no_masking or --lora_r.")
    if masking_args.lora_r:
        return _with_lora(model, masking_args)
    if masking_args.no_masking:
        return model
    if masking_args.mask_from:
        if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
            raise ValueError(
                "--mask_from needs something to do with the mask: --do_eval or --do_predict to evaluate it, "
                "--do_train to train it further."
            )
        # With --do_train the saved mask trains on from exactly where it was (is_trainable).
        return MaskedModel.from_pretrained(
            masking_args.mask_from, base_model=model, is_trainable=training_args.do_train
        )
    masked = MaskedModel(model, masking_args.to_masking_config(default_seed=training_args.seed))
    trainable, total = masked.num_trainable_parameters()
    logger.info(f"Masking {len(masked.targets.modules)} layers: {trainable:,} trainable scores, {total:,} parameters")
    return masked


def _with_lora(model: nn.Module, masking_args: Any) -> nn.Module:
    """PEFT LoRA on the attention query and value projections (GPT-2: c_attn), a task head trained in full."""
    from peft import LoraConfig, TaskType, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [n for n in ("query", "value", "q_lin", "v_lin", "q_proj", "v_proj", "c_attn") if n in names]
    head = type(model).__name__
    task_types = {
        "ForSequenceClassification": TaskType.SEQ_CLS,
        "ForTokenClassification": TaskType.TOKEN_CLS,
        "ForCausalLM": TaskType.CAUSAL_LM,
        "LMHeadModel": TaskType.CAUSAL_LM,
    }
    task_type = next((t for suffix, t in task_types.items() if head.endswith(suffix)), None)
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


def optimizer_for(model: nn.Module, training_args: TrainingArguments, masking_args: Any) -> Any:
    """``Trainer(optimizer_cls_and_kwargs=...)``: with --head_learning_rate or --mask_learning_rate, each part at
    its own rate.

    Refused where nothing would train at that rate, so a flag is never silently ignored.
    """
    head_rate = getattr(masking_args, "head_learning_rate", None)
    mask_rate = getattr(masking_args, "mask_learning_rate", None)
    if head_rate is None and mask_rate is None:
        return None
    for flag, rate in (("--head_learning_rate", head_rate), ("--mask_learning_rate", mask_rate)):
        if rate is None:
            continue
        if not rate > 0 or rate == float("inf"):
            raise ValueError(f"{flag} must be a positive number, not {rate}.")
        if not isinstance(model, MaskedModel):
            raise ValueError(
                f"{flag} sets a rate of masking's own parts; without masking (--no_masking, --lora_r) everything "
                "trains at --learning_rate."
            )
        if not training_args.do_train:
            raise ValueError(f"{flag} is a training rate; this run does not train (--do_train).")
    if head_rate is not None and not model.trained_modules:
        raise ValueError(
            "--head_learning_rate: nothing trains in full here (the head is masked: --mask_head "
            f"{model.masking_config.head}, and no --mask_modules_to_save). Pass --mask_head train to train the head."
        )
    from .optimization import masking_optimizer

    scores = mask_rate if mask_rate is not None else training_args.learning_rate
    rest = head_rate if head_rate is not None else training_args.learning_rate
    logger.info(f"Training the mask scores at {scores:g}, {model.trained_modules or 'nothing else'} at {rest:g}")
    return masking_optimizer(training_args, head_learning_rate=head_rate, mask_learning_rate=mask_rate)


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
        if trainer.args.should_save or sharding.is_sharded(model):  # FSDP: every rank gathers, one writes
            model.save_pretrained(trainer.args.output_dir, is_main_process=trainer.args.should_save)
        if tokenizer is not None and trainer.args.should_save:
            tokenizer.save_pretrained(trainer.args.output_dir)
    else:
        trainer.save_model()


def save_model_card(trainer: Trainer, metrics: dict[str, float], task: str, dataset: str | None) -> None:
    """After evaluating a mask trained in this run, save it again with a model card that has the results."""
    model = trainer.model
    if not isinstance(model, MaskedModel) or not trainer.args.do_train:
        return
    if not (trainer.args.should_save or sharding.is_sharded(model)):
        return
    args = trainer.args
    config = model.masking_config
    blocks = sorted({b for b in map(model.targets.block_of, model.targets.modules) if b is not None})
    hyperparameters = {
        "learning_rate": args.learning_rate,
        "num_train_epochs": args.num_train_epochs if args.max_steps <= 0 else None,
        "max_steps": args.max_steps if args.max_steps > 0 else None,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "seed": args.seed,
        "initial_sparsity": config.initial_sparsity,
        "threshold": config.threshold,
        "binarizer": config.binarizer,
        "masked blocks": ", ".join(str(b) for b in blocks) or None,
        "trained in full": ", ".join(model.trained_modules) or None,
    }
    info = {
        "task": task,
        "dataset": dataset,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, float) and "per_second" not in k},
        "hyperparameters": {k: v for k, v in hyperparameters.items() if v is not None},
    }
    model.save_pretrained(args.output_dir, card_info=info, is_main_process=args.should_save)


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
