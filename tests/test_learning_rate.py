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


def test_a_finetuning_rate_with_masking_warns_once_saying_why(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_masking.scripts"):
        parse(monkeypatch, [*BASE, "--learning_rate", "2e-5"])
    warnings = [r.message for r in caplog.records if "finetuning rate" in r.message]
    assert len(warnings) == 1 and "10-100x finetuning's" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_masking.scripts"):
        parse(monkeypatch, [*BASE])
    assert any("using 0.008" in r.message for r in caplog.records)


def test_json_arguments_count_as_given(monkeypatch, tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"output_dir": "out", "report_to": "none", "learning_rate": 3e-3}))
    assert parse(monkeypatch, [str(path)]) == pytest.approx(3e-3)
    path.write_text(json.dumps({"output_dir": "out", "report_to": "none"}))
    assert parse(monkeypatch, [str(path)]) == pytest.approx(DEFAULT_MASKING_LEARNING_RATE)
