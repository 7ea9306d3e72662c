"""The example scripts train masks at masking learning rates unless told otherwise."""

import json
import logging
import sys

import pytest
from transformers import HfArgumentParser, TrainingArguments

from hf_masking.arguments import MaskingArguments
from hf_masking.scripts import DEFAULT_MASKING_LEARNING_RATE, parse_and_set_up

BASE = ["--output_dir", "out", "--report_to", "none", "--use_cpu"]


def parse(monkeypatch, args):
    monkeypatch.setattr(sys, "argv", ["run_glue_masking.py", *args])
    parser = HfArgumentParser((TrainingArguments, MaskingArguments))
    training_args, _ = parse_and_set_up(parser, logging.getLogger("test"))
    return training_args.learning_rate


@pytest.mark.parametrize(
    "args, rate",
    [
        ([], DEFAULT_MASKING_LEARNING_RATE),
        (["--learning_rate", "2e-3"], 2e-3),
        (["--learning-rate=5e-5"], 5e-5),  # given on purpose: kept, with a warning
        (["--no_masking"], 5e-5),  # finetuning keeps the Trainer's default
        (["--lora_r", "8"], 5e-5),
    ],
)
def test_masking_default_rate(monkeypatch, args, rate):
    assert parse(monkeypatch, [*BASE, *args]) == pytest.approx(rate)


def test_the_default_rate_is_announced_and_a_mask_rate_keeps_learning_rate(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_masking.scripts"):
        parse(monkeypatch, [*BASE])
    assert any("using 0.008" in r.message for r in caplog.records)
    # --mask_learning_rate sets the scores' rate; --learning_rate (the head's) stays what the user gave or the default.
    assert parse(monkeypatch, [*BASE, "--mask_learning_rate", "8e-3"]) == pytest.approx(5e-5)


def _args(tmp_path, **kwargs) -> TrainingArguments:
    return TrainingArguments(str(tmp_path), report_to=[], use_cpu=True, **kwargs)


@pytest.mark.parametrize(
    "rate, steps, warmup, warns",
    [
        (1e-4, 10, 2, True),  # transformers' glue example test: a finetuning rate over 10 steps
        (2e-4, 20, 2, True),  # its swag test
        (1e-4, 125, 0, True),  # one epoch of 2,000 SST-2 sentences: 0.17% of the mask changed, chance accuracy
        (3e-4, 125, 0, True),  # 0.5% changed, still chance accuracy
        (1e-3, 125, 0, False),  # 1.8% changed, 79% accuracy
        (8e-3, 10, 2, False),
    ],
)
def test_reach_warns_when_the_planned_training_cannot_move_the_mask(tmp_path, rate, steps, warmup, warns):
    from hf_masking import MaskingConfig, reach

    args = _args(tmp_path, learning_rate=rate, warmup_steps=warmup)
    message = reach.check(MaskingConfig(), args, steps, rate)
    assert (message is not None) == warns
    if warns:
        suggested = float(message.split("--mask_learning_rate ")[1].split()[0])
        assert suggested > rate and reach.check(MaskingConfig(), args, steps, suggested) is None


def test_reach_follows_the_config_and_the_schedule(tmp_path):
    from hf_masking import MaskingConfig, reach

    config = MaskingConfig()
    for fraction in (0.01, 0.05, 0.2, 0.5, 0.9, 1.0):
        assert reach.movable_fraction(config, reach.reach_for(config, fraction)) == pytest.approx(fraction)
    constant = reach.schedule_sum(_args(tmp_path, lr_scheduler_type="constant"), 100, 1e-3)
    linear = reach.schedule_sum(_args(tmp_path), 100, 1e-3)
    assert constant == pytest.approx(0.1) and linear == pytest.approx(0.05, rel=0.02)
    # Scores drawn closer to the threshold (a larger initial sparsity) are easier to move.
    assert reach.movable_fraction(MaskingConfig(initial_sparsity=0.3), 0.01) > reach.movable_fraction(config, 0.01)
    assert reach.check(MaskingConfig(binarizer="topk"), _args(tmp_path), 10, 1e-6) is None


def test_the_callback_warns_once_at_train_start_and_a_mask_rate_silences_it(tmp_path, caplog):
    from conftest import build_model
    from transformers import AutoModelForSequenceClassification, Trainer

    from hf_masking import MaskedModel, MaskingCallback, MaskingConfig, masking_optimizer

    rows = [{"input_ids": [2, 5 + i % 7, 9, 3], "labels": i % 2} for i in range(8)]

    def train(**optimizer):
        model = MaskedModel(build_model(AutoModelForSequenceClassification), MaskingConfig(head="train"))
        args = _args(tmp_path, learning_rate=1e-4, max_steps=3, per_device_train_batch_size=4, save_strategy="no")
        extra = {"optimizer_cls_and_kwargs": masking_optimizer(args, **optimizer)} if optimizer else {}
        trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[MaskingCallback()], **extra)
        with caplog.at_level(logging.WARNING, logger="hf_masking.callback"):
            trainer.train()
        return trainer, [r.message for r in caplog.records if "barely change" in r.message]

    _, warnings = train()
    assert len(warnings) == 1 and "0.0001 over 3 steps" in warnings[0]
    suggested = float(warnings[0].split("--mask_learning_rate ")[1].split()[0])
    caplog.clear()
    trainer, warnings = train(mask_learning_rate=suggested)
    assert warnings == []
    rates = sorted(group["initial_lr"] for group in trainer.optimizer.param_groups)
    assert rates[0] == pytest.approx(1e-4) and rates[-1] == pytest.approx(suggested)  # the head kept its rate


def test_json_arguments_count_as_given(monkeypatch, tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"output_dir": "out", "report_to": "none", "learning_rate": 3e-3}))
    assert parse(monkeypatch, [str(path)]) == pytest.approx(3e-3)
    path.write_text(json.dumps({"output_dir": "out", "report_to": "none"}))
    assert parse(monkeypatch, [str(path)]) == pytest.approx(DEFAULT_MASKING_LEARNING_RATE)
