"""The three example scripts end to end on a tiny local model and small files written here."""

import json
import os

import pytest
from script_utils import COMMON, conll_text, read_json, run_script, save_tiny_model, sentiment_rows, swag_csv, write

from hf_masking import BaseModelMismatchError
from hf_masking.data import DataFileError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def glue(monkeypatch, model, out, *args):
    run_script(
        "run_glue_masking.py", ["--model_name_or_path", model, "--output_dir", str(out), *COMMON, *args], monkeypatch
    )


def test_sst2_files_train_a_mask_and_save_only_the_tiny_repo(tmp_path, tiny_model, monkeypatch):
    rows = sentiment_rows(96)
    write(tmp_path / "train.tsv", "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows[:64]))
    write(tmp_path / "dev.tsv", "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows[64:]))
    write(tmp_path / "test.tsv", "index\tsentence\n" + "".join(f"{i}\t{s}\n" for i, (s, _) in enumerate(rows[64:70])))
    out = tmp_path / "out"
    glue(
        monkeypatch,
        tiny_model,
        out,
        "--task_name",
        "sst2",
        "--train_file",
        str(tmp_path / "train.tsv"),
        "--validation_file",
        str(tmp_path / "dev.tsv"),
        "--test_file",
        str(tmp_path / "test.tsv"),
        "--do_train",
        "--do_eval",
        "--do_predict",
        "--learning_rate",
        "5e-2",
        "--num_train_epochs",
        "2",
        "--logging_steps",
        "4",
    )
    files = set(os.listdir(out))
    assert {"masking_config.json", "mask.safetensors", "README.md", "tokenizer.json"} <= files
    assert "model.safetensors" not in files  # no copy of the base
    results = read_json(out / "all_results.json")
    assert 0 <= results["eval_accuracy"] <= 1 and "eval_majority_baseline_accuracy" in results
    predictions = (out / "predict_results_sst2.txt").read_text().splitlines()
    assert predictions[0] == "index\tprediction" and len(predictions) == 7
    assert predictions[1].split("\t")[1] in {"negative", "positive"}
    state = read_json(out / "trainer_state.json")
    assert any("mask_sparsity" in entry for entry in state["log_history"])

    # The saved mask evaluates to the same numbers when a run starts from it.
    again = tmp_path / "again"
    glue(
        monkeypatch,
        tiny_model,
        again,
        "--task_name",
        "sst2",
        "--validation_file",
        str(tmp_path / "dev.tsv"),
        "--do_eval",
        "--mask_from",
        str(out),
    )
    assert read_json(again / "eval_results.json")["eval_accuracy"] == results["eval_accuracy"]
    assert not (again / "mask.safetensors").exists()  # evaluating writes no second copy of the mask

    # The model card, saved again after evaluation, says what the mask is, how it scored, how it trained.
    card = (out / "README.md").read_text()
    assert "# GLUE SST2 mask for" in card and "pipeline_tag: text-classification" in card
    assert "## Evaluation" in card and "| eval_accuracy |" in card and "| learning_rate | 0.0500 |" in card
    assert "labels 0: negative, 1: positive" in card

    # --mask_from with --do_train trains on from the saved mask; with nothing to do it is an error.
    more = tmp_path / "more"
    from_saved = ["--task_name", "sst2", "--train_file", str(tmp_path / "train.tsv"), "--mask_from", str(out)]
    with pytest.raises(ValueError, match="--mask_from needs something to do with the mask"):
        glue(monkeypatch, tiny_model, more, *from_saved)
    glue(monkeypatch, tiny_model, more, *from_saved, "--do_train", "--max_steps", "2")
    assert (more / "mask.safetensors").exists()
    assert read_json(more / "train_results.json")["train_trainable_params"] > 0

    # A mask whose base is not --model_name_or_path is refused before anything runs.
    other = save_tiny_model(tmp_path / "other-model", seed=1)
    with pytest.raises(BaseModelMismatchError, match="differs from the tensor the mask was trained on"):
        glue(
            monkeypatch,
            other,
            tmp_path / "x",
            "--task_name",
            "sst2",
            "--validation_file",
            str(tmp_path / "dev.tsv"),
            "--do_eval",
            "--mask_from",
            str(out),
        )


def test_mrpc_bom_header_and_quotes_cola_headerless_stsb_regression(tmp_path, tiny_model, monkeypatch):
    rows = sentiment_rows(40)
    mrpc = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "".join(
        f'{y}\t{i}\t{i + 1}\tthe "actor\t{s} "\n' for i, (s, y) in enumerate(rows)
    )
    write(tmp_path / "mrpc.tsv", mrpc, bom=True)
    glue(
        monkeypatch,
        tiny_model,
        tmp_path / "mrpc",
        "--task_name",
        "mrpc",
        "--train_file",
        str(tmp_path / "mrpc.tsv"),
        "--validation_file",
        str(tmp_path / "mrpc.tsv"),
        "--do_train",
        "--do_eval",
        "--max_steps",
        "2",
    )
    metrics = read_json(tmp_path / "mrpc" / "eval_results.json")
    assert {"eval_f1", "eval_accuracy", "eval_majority_baseline_f1"} <= set(metrics)
    assert metrics["eval_samples"] == 40  # quote characters did not merge rows

    cola = "".join(f"src\t{y}\t*\t{s}\n" for s, y in rows)
    write(tmp_path / "cola.tsv", cola)
    glue(
        monkeypatch,
        tiny_model,
        tmp_path / "cola",
        "--task_name",
        "cola",
        "--train_file",
        str(tmp_path / "cola.tsv"),
        "--validation_file",
        str(tmp_path / "cola.tsv"),
        "--do_train",
        "--do_eval",
        "--max_steps",
        "2",
    )
    metrics = read_json(tmp_path / "cola" / "eval_results.json")
    assert "eval_matthews_correlation" in metrics and metrics["eval_samples"] == 40

    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    stsb = header + "".join(
        f"{i}\tg\tf\t2012\t{i}\ts\ts\t{s}\tthe film\t{4.5 * y + 0.1 * (i % 5)}\n" for i, (s, y) in enumerate(rows)
    )
    write(tmp_path / "stsb.tsv", stsb)
    glue(
        monkeypatch,
        tiny_model,
        tmp_path / "stsb",
        "--task_name",
        "stsb",
        "--train_file",
        str(tmp_path / "stsb.tsv"),
        "--validation_file",
        str(tmp_path / "stsb.tsv"),
        "--do_train",
        "--do_eval",
        "--max_steps",
        "2",
    )
    assert {"eval_pearson", "eval_spearmanr"} <= set(read_json(tmp_path / "stsb" / "eval_results.json"))
    config = read_json(tmp_path / "stsb" / "masking_config.json")
    assert config["label_config"]["id2label"] == {"0": "LABEL_0"}  # num_labels = 1: regression


def test_own_csv_and_json_files_no_masking_and_json_arguments(tmp_path, tiny_model, monkeypatch):
    rows = sentiment_rows(32)
    write(tmp_path / "train.csv", "text,label\n" + "".join(f"{s},{'pos' if y else 'neg'}\n" for s, y in rows))
    write(
        tmp_path / "dev.jsonl", "".join(json.dumps({"text": s, "label": "pos" if y else "neg"}) + "\n" for s, y in rows)
    )
    args = {
        "model_name_or_path": tiny_model,
        "output_dir": str(tmp_path / "ft"),
        "train_file": str(tmp_path / "train.csv"),
        "validation_file": str(tmp_path / "dev.jsonl"),
        "do_train": True,
        "do_eval": True,
        "max_steps": 2,
        "no_masking": True,
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
    }
    write(tmp_path / "args.json", json.dumps(args))
    run_script("run_glue_masking.py", [str(tmp_path / "args.json")], monkeypatch)
    files = set(os.listdir(tmp_path / "ft"))
    assert "model.safetensors" in files and "masking_config.json" not in files  # plain finetuning
    config = read_json(tmp_path / "ft" / "config.json")
    assert config["id2label"] == {"0": "neg", "1": "pos"}


@pytest.mark.parametrize(
    "change, error",
    [
        (["--train_file", "missing.tsv"], "--train_file 'missing.tsv': no such file"),
        (["--train_file", "{tmp}/data.xlsx"], "unknown extension 'xlsx'"),
        (["--train_file", "{tmp}/train.csv", "--label_column_name", "sentiment"], "no label column 'sentiment'"),
        (["--train_file", "{tmp}/empty.csv"], "empty.csv' is empty: it has no header and no rows"),
        (["--train_file", "{tmp}/header.csv"], "header.csv' has no data rows \\(only a header\\)"),
        (["--train_file", "{tmp}/blank.csv"], "blank.csv', line 3: column 'label' has no label"),
        (
            ["--train_file", "{tmp}/mixed.jsonl"],
            "mixed.jsonl': column 'label' mixes label types: 1 \\(number, line 1\\) and ",
        ),
        (  # a csv column mixing 0/1 and pos/neg is read as text: still two kinds of label, not four classes
            ["--train_file", "{tmp}/mixed.csv"],
            "mixed.csv': column 'label' mixes label types: '0' \\(number, line 2\\) and 'pos' \\(text, line 4\\)",
        ),
        (
            ["--train_file", "{tmp}/ints.csv", "--validation_file", "{tmp}/ints_dev.csv", "--do_eval"],
            "ints_dev.csv', line 4: label 2 in column 'label' does not occur in the training file",
        ),
        (
            ["--train_file", "{tmp}/train.csv", "--validation_file", "{tmp}/unseen.csv", "--do_eval"],
            "unseen.csv', line 3: label 'neutral' in column 'label' does not occur in the training file .*train.csv",
        ),
        (["--task_name", "sst2", "--train_file", "{tmp}/sst2.tsv"], "sst2.tsv', line 3: label '7' is not a sst2 label"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, tiny_model, monkeypatch, change, error):
    write(tmp_path / "data.xlsx", "x")
    write(tmp_path / "train.csv", "text,label\nthe movie,pos\na plot,neg\n")
    write(tmp_path / "empty.csv", "")
    write(tmp_path / "header.csv", "text,label\n")
    write(tmp_path / "blank.csv", "text,label\nthe movie,pos\na plot,\n")
    write(tmp_path / "mixed.jsonl", '{"text": "the movie", "label": 1}\n{"text": "a plot", "label": "pos"}\n')
    write(tmp_path / "unseen.csv", "text,label\nthe movie,pos\na plot,neutral\n")
    write(tmp_path / "mixed.csv", "text,label\nthe movie,0\na plot,1\nit was,pos\nthe film,neg\n")
    write(tmp_path / "ints.csv", "text,label\nthe movie,0\na plot,1\n")
    write(tmp_path / "ints_dev.csv", "text,label\nthe movie,0\na plot,1\nit was,2\n")
    write(tmp_path / "sst2.tsv", "sentence\tlabel\nthe movie\t1\na plot\t7\n")
    out = tmp_path / "out"
    change = [c.replace("{tmp}", str(tmp_path)) for c in change]
    with pytest.raises(DataFileError, match=error):
        glue(monkeypatch, tiny_model, out, *change, "--do_train")
    assert not out.exists() or not os.listdir(out)


def test_ner_refuses_dev_tags_that_training_never_saw(tmp_path, tiny_model, monkeypatch):
    write(tmp_path / "train.conll", "alice B-PER\nruns O\n\nbob B-PER\nsits O\n")
    write(tmp_path / "dev.conll", "alice B-PER\n\nacme B-ORG\nruns O\n")
    args = ["--model_name_or_path", tiny_model, "--output_dir", str(tmp_path / "out"), *COMMON, "--do_train"]
    args += ["--train_file", str(tmp_path / "train.conll"), "--validation_file", str(tmp_path / "dev.conll")]
    with pytest.raises(
        DataFileError, match="dev.conll', sentence 2: label 'B-ORG' in column 'ner_tags' does not occur"
    ):
        run_script("run_ner_masking.py", [*args, "--do_eval"], monkeypatch)


def test_ner_reads_conll_with_docstart_and_json(tmp_path, tiny_model, monkeypatch):
    write(tmp_path / "train.conll", conll_text(40))
    write(tmp_path / "dev.conll", "-DOCSTART- -X- O O\n\n" + conll_text(12, seed=1))
    out = tmp_path / "ner"
    run_script(
        "run_ner_masking.py",
        [
            "--model_name_or_path",
            tiny_model,
            "--output_dir",
            str(out),
            *COMMON,
            "--train_file",
            str(tmp_path / "train.conll"),
            "--validation_file",
            str(tmp_path / "dev.conll"),
            "--test_file",
            str(tmp_path / "dev.conll"),
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--max_steps",
            "3",
            "--label_all_tokens",
            "--return_entity_level_metrics",
        ],
        monkeypatch,
    )
    metrics = read_json(out / "eval_results.json")
    # Upstream's names: overall_* totals, <TYPE>_{precision,recall,f1,number} per entity type.
    expected = {"eval_overall_f1", "eval_overall_precision", "eval_overall_recall", "eval_overall_accuracy"}
    expected |= {f"eval_PER_{name}" for name in ("precision", "recall", "f1", "number")}
    assert expected | {"eval_majority_baseline_overall_f1"} <= set(metrics)
    assert "eval_f1" not in metrics and isinstance(metrics["eval_PER_number"], int) and metrics["eval_PER_number"] > 0
    assert metrics["eval_samples"] == 12  # -DOCSTART- lines are not sentences
    config = read_json(out / "masking_config.json")
    assert set(config["label_config"]["label2id"]) == {"O", "I-PER", "I-LOC", "I-ORG"}
    predictions = (out / "predictions.txt").read_text().splitlines()
    assert len(predictions) == 12 and len(predictions[0].split()) == 5

    rows = [{"tokens": ["alice", "runs"], "tags": ["B-PER", "O"]}, {"tokens": ["the", "paris"], "tags": ["O", "B-LOC"]}]
    write(tmp_path / "ner.json", "\n".join(json.dumps(r) for r in rows * 8))
    run_script(
        "run_ner_masking.py",
        [
            "--model_name_or_path",
            tiny_model,
            "--output_dir",
            str(tmp_path / "json"),
            *COMMON,
            "--train_file",
            str(tmp_path / "ner.json"),
            "--validation_file",
            str(tmp_path / "ner.json"),
            "--label_column_name",
            "tags",
            "--do_train",
            "--do_eval",
            "--max_steps",
            "2",
        ],
        monkeypatch,
    )
    assert "eval_f1" in read_json(tmp_path / "json" / "eval_results.json")


@pytest.mark.parametrize("endings", [4, 3])
def test_swag_counts_endings_from_the_columns(tmp_path, tiny_model, monkeypatch, endings):
    write(tmp_path / "train.csv", swag_csv(24, endings=endings))
    out = tmp_path / "swag"
    run_script(
        "run_swag_masking.py",
        [
            "--model_name_or_path",
            tiny_model,
            "--output_dir",
            str(out),
            *COMMON,
            "--train_file",
            str(tmp_path / "train.csv"),
            "--validation_file",
            str(tmp_path / "train.csv"),
            "--do_train",
            "--do_eval",
            "--max_steps",
            "2",
        ],
        monkeypatch,
    )
    metrics = read_json(out / "eval_results.json")
    assert 0 <= metrics["eval_accuracy"] <= 1 and "eval_majority_baseline_accuracy" in metrics
    assert read_json(out / "masking_config.json")["head_class"] == "BertForMultipleChoice"


def test_lora_baseline_in_the_same_script(tmp_path, tiny_model, monkeypatch):
    rows = sentiment_rows(32)
    write(tmp_path / "train.tsv", "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    out = tmp_path / "lora"
    glue(
        monkeypatch,
        tiny_model,
        out,
        "--task_name",
        "sst2",
        "--train_file",
        str(tmp_path / "train.tsv"),
        "--validation_file",
        str(tmp_path / "train.tsv"),
        "--do_train",
        "--do_eval",
        "--max_steps",
        "2",
        "--lora_r",
        "4",
    )
    files = set(os.listdir(out))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files and "mask.safetensors" not in files
    config = read_json(out / "adapter_config.json")
    assert config["r"] == 4 and set(config["target_modules"]) == {"query", "value"}
    assert "eval_accuracy" in read_json(out / "eval_results.json")


@pytest.mark.parametrize(
    "script", ["run_glue_masking.py", "run_ner_masking.py", "run_swag_masking.py", "run_clm_masking.py"]
)
def test_help_lists_the_masking_flags(script, monkeypatch, capsys):
    with pytest.raises(SystemExit) as stopped:
        run_script(script, ["--help"], monkeypatch)
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    assert "--mask_initial_sparsity" in text and "(paper: 5%)" in text and "--no_masking" in text
