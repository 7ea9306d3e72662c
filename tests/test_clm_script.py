"""run_clm_masking.py end to end on tiny decoders: masking saves a tiny repo that reloads to the same model."""

import math
import os

import pytest
from script_utils import COMMON, read_json, run_script, save_tiny_decoder, story_text, write
from transformers import AutoTokenizer

from hf_masking import MaskedModel
from hf_masking.data import DataFileError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def decoder(request, tmp_path_factory):
    return save_tiny_decoder(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


@pytest.fixture
def texts(tmp_path):
    return write(tmp_path / "train.txt", story_text(160)), write(tmp_path / "valid.txt", story_text(40, seed=1))


def clm(monkeypatch, model, out, train, valid, *args):
    run_script(
        "run_clm_masking.py",
        [
            "--model_name_or_path",
            model,
            "--output_dir",
            str(out),
            "--train_file",
            train,
            "--validation_file",
            valid,
            "--block_size",
            "16",
            *COMMON,
            *args,
        ],  # fmt: skip
        monkeypatch,
    )


def test_masking_saves_a_tiny_repo_whose_reload_reproduces_the_evaluation(decoder, texts, tmp_path, monkeypatch):
    out = tmp_path / "mask"
    clm(
        monkeypatch,
        decoder,
        out,
        *texts,
        "--do_train",
        "--do_eval",
        "--num_train_epochs",
        "2",
        "--learning_rate",
        "5e-2",
    )
    files = set(os.listdir(out))
    assert {"masking_config.json", "mask.safetensors", "README.md", "tokenizer.json"} <= files
    assert "model.safetensors" not in files
    record = read_json(out / "masking_config.json")
    assert record["head_class"] in ("LlamaForCausalLM", "GPT2LMHeadModel")
    metrics = read_json(out / "eval_results.json")
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert 0 <= metrics["eval_accuracy"] <= 1

    # Evaluating the saved mask (--mask_from) reproduces the run's own evaluation.
    clm(monkeypatch, decoder, tmp_path / "eval", *texts, "--do_eval", "--mask_from", str(out))
    again = read_json(tmp_path / "eval" / "eval_results.json")
    assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)
    assert again["eval_accuracy"] == metrics["eval_accuracy"]

    model = MaskedModel.from_pretrained(out).eval()
    prompt = AutoTokenizer.from_pretrained(out)(["alice runs then"], return_tensors="pt")["input_ids"]
    assert model.generate(input_ids=prompt, max_new_tokens=3, do_sample=False).shape == (1, prompt.shape[1] + 3)


def test_training_lowers_the_loss_against_the_initial_mask(decoder, texts, tmp_path, monkeypatch):
    before, after = tmp_path / "before", tmp_path / "after"
    clm(monkeypatch, decoder, before, *texts, "--do_train", "--do_eval", "--max_steps", "1", "--learning_rate", "1e-9")
    clm(
        monkeypatch,
        decoder,
        after,
        *texts,
        "--do_train",
        "--do_eval",
        "--num_train_epochs",
        "3",
        "--learning_rate",
        "5e-2",
    )
    assert read_json(after / "eval_results.json")["eval_loss"] < read_json(before / "eval_results.json")["eval_loss"]


def test_no_masking_and_lora_baselines_in_the_same_script(decoder, texts, tmp_path, monkeypatch):
    clm(monkeypatch, decoder, tmp_path / "ft", *texts, "--do_train", "--max_steps", "2", "--no_masking")
    assert "model.safetensors" in os.listdir(tmp_path / "ft")
    clm(monkeypatch, decoder, tmp_path / "lora", *texts, "--do_train", "--do_eval", "--max_steps", "2", "--lora_r", "4")
    config = read_json(tmp_path / "lora" / "adapter_config.json")
    assert config["task_type"] == "CAUSAL_LM" and set(config["target_modules"]) in ({"q_proj", "v_proj"}, {"c_attn"})


def test_bad_input_fails_clearly(decoder, texts, tmp_path, monkeypatch):
    with pytest.raises(DataFileError, match="fewer than --block_size=64 tokens"):
        clm(monkeypatch, decoder, tmp_path / "o", write(tmp_path / "short.txt", "alice runs .\n"), texts[1],
            "--do_train", "--block_size", "64")  # fmt: skip
    with pytest.raises(DataFileError, match="unknown extension"):
        clm(monkeypatch, decoder, tmp_path / "o", write(tmp_path / "train.parquet", "x"), texts[1], "--do_train")
