"""Every flag of transformers' four upstream example scripts (5.x) is accepted by its `_masking` copy, and
the flags that need the Hub say what is wrong before any work starts."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

import huggingface_hub.constants
import pytest
from distributed_utils import free_port
from script_utils import ROOT, conll_text, read_json, run_script, save_tiny_model, swag_csv, write
from transformers import HfArgumentParser, TrainingArguments

from hf_masking.arguments import MaskingArguments
from hf_masking.scripts import parse_and_set_up

UPSTREAM_FLAGS = {  # the data and model flags of transformers' example scripts (TrainingArguments is shared)
    "run_glue_masking.py": "task_name dataset_name dataset_config_name max_seq_length overwrite_cache "
    "pad_to_max_length max_train_samples max_eval_samples max_predict_samples train_file validation_file test_file "
    "model_name_or_path config_name tokenizer_name cache_dir use_fast_tokenizer model_revision token "
    "trust_remote_code ignore_mismatched_sizes",
    "run_ner_masking.py": "task_name dataset_name dataset_config_name train_file validation_file test_file "
    "text_column_name label_column_name overwrite_cache preprocessing_num_workers max_seq_length pad_to_max_length "
    "max_train_samples max_eval_samples max_predict_samples label_all_tokens return_entity_level_metrics "
    "model_name_or_path config_name tokenizer_name cache_dir model_revision token trust_remote_code "
    "ignore_mismatched_sizes",
    "run_swag_masking.py": "train_file validation_file overwrite_cache preprocessing_num_workers max_seq_length "
    "pad_to_max_length max_train_samples max_eval_samples model_name_or_path config_name tokenizer_name cache_dir "
    "use_fast_tokenizer model_revision token trust_remote_code",
    "run_clm_masking.py": "model_name_or_path model_type config_overrides config_name tokenizer_name cache_dir "
    "use_fast_tokenizer model_revision token trust_remote_code dtype dataset_name dataset_config_name train_file "
    "validation_file max_train_samples max_eval_samples streaming block_size overwrite_cache "
    "validation_split_percentage preprocessing_num_workers keep_linebreaks",
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def _parser(script: str) -> HfArgumentParser:
    spec = importlib.util.spec_from_file_location(script[:-3], os.path.join(ROOT, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model_args = getattr(module, "CausalLMModelArguments", None) or module.ModelArguments
    return HfArgumentParser((model_args, module.DataTrainingArguments, TrainingArguments, MaskingArguments))


@pytest.mark.parametrize("script", sorted(UPSTREAM_FLAGS))
def test_every_upstream_flag_is_accepted(script):
    parser = _parser(script)
    missing = [name for name in UPSTREAM_FLAGS[script].split() if f"--{name}" not in parser._option_string_actions]
    assert missing == []


@pytest.mark.slow
def test_ner_and_swag_take_preprocessing_num_workers(tmp_path, tiny_model, monkeypatch):
    common = ["--report_to", "none", "--use_cpu", "--max_steps", "1", "--preprocessing_num_workers", "2"]
    conll = write(tmp_path / "train.conll", conll_text(8))
    run_script(
        "run_ner_masking.py",
        ["--model_name_or_path", tiny_model, "--output_dir", str(tmp_path / "ner"), *common,
         "--train_file", conll, "--validation_file", conll, "--do_train", "--do_eval"],
        monkeypatch,
    )  # fmt: skip
    assert read_json(tmp_path / "ner" / "eval_results.json")["eval_samples"] > 0
    swag = write(tmp_path / "swag.csv", swag_csv(8))
    run_script(
        "run_swag_masking.py",
        ["--model_name_or_path", tiny_model, "--output_dir", str(tmp_path / "swag"), *common,
         "--train_file", swag, "--validation_file", swag, "--do_train", "--do_eval"],
        monkeypatch,
    )  # fmt: skip
    assert "eval_accuracy" in read_json(tmp_path / "swag" / "eval_results.json")


def _parse(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["run_glue_masking.py", "--output_dir", "out", "--report_to", "none", *args])
    parse_and_set_up(HfArgumentParser((TrainingArguments, MaskingArguments)), logging.getLogger("test"))


def test_push_to_hub_offline_or_unreachable_is_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"--push_to_hub: the Hub is switched off here \(HF_HUB_OFFLINE=1\)"):
        _parse(monkeypatch, "--push_to_hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", closed)
    with pytest.raises(ValueError, match=f"--push_to_hub: cannot reach the Hub at {closed}"):
        _parse(monkeypatch, "--push_to_hub", "--hub_token", "hf_not_a_real_token")
    _parse(monkeypatch)  # without --push_to_hub nothing is checked
