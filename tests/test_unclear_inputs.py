"""The last unclear inputs: each error names the argument and the problem."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import build_model, load_quietly, random_batch, save_pretrained_base
from script_utils import run_script, save_tiny_decoder, write
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from hf_masking import MaskedModel, MaskingConfig, codec
from hf_masking.data import DataFileError
from hf_masking.errors import BaseModelMismatchError


@pytest.fixture()
def saved(tmp_path):
    base = save_pretrained_base(tmp_path / "base")
    MaskedModel(load_quietly(AutoModelForSequenceClassification, base)).save_pretrained(tmp_path / "mask")
    return tmp_path, base


def test_base_model_arguments_say_what_is_wrong(saved, monkeypatch):
    root, base = saved
    with pytest.raises(TypeError, match="base_model must be a folder, a Hub id or a loaded model.*not int 42"):
        MaskedModel.from_pretrained(root / "mask", base_model=42)
    other = save_pretrained_base(root / "gpt2", model_type="gpt2")
    with pytest.raises(
        BaseModelMismatchError, match=r"base_model .*gpt2 is a gpt2 model; the mask was trained on a bert"
    ):
        MaskedModel.from_pretrained(root / "mask", base_model=other)


def test_a_relative_recorded_base_loaded_from_elsewhere_says_so(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast: no Hub here
    monkeypatch.chdir(tmp_path)
    save_pretrained_base("runs/base")
    model = MaskedModel(load_quietly(AutoModelForSequenceClassification, "runs/base"))
    assert model.get_base_model().name_or_path == "runs/base"
    model.save_pretrained("runs/mask")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(OSError, match=r"(?s)records its base as 'runs/base', which is no folder here .*base_model="):
        MaskedModel.from_pretrained(tmp_path / "runs" / "mask")
    assert MaskedModel.from_pretrained(tmp_path / "runs" / "mask", base_model=tmp_path / "runs" / "base")


def test_masking_config_checks_fields_set_later_and_blames_the_right_one():
    config = MaskingConfig()
    with pytest.raises(ValueError, match="MaskingConfig.initial_sparsity=1.5 is invalid"):
        config.initial_sparsity = 1.5
    assert config.initial_sparsity == 0.05  # a refused value is not kept
    config.threshold = 0.02
    assert config.threshold == 0.02
    with pytest.raises(ValueError, match="MaskingConfig.initial_sparsity=1e-320 is invalid: .*larger initial_sparsity"):
        MaskingConfig(initial_sparsity=1e-320)
    with pytest.raises(ValueError, match="MaskingConfig.init_scale=1e\\+308 is invalid"):
        MaskingConfig(init_scale=1e308)


def test_training_with_a_loaded_mask_active_says_how_to_train(saved):
    root, _ = saved
    model = MaskedModel.from_pretrained(root / "mask")
    model.train()
    with pytest.raises(RuntimeError, match="loaded mask 'default' active: a loaded mask is fixed.*is_trainable=True"):
        model(**random_batch())
    with torch.no_grad():
        model(**random_batch())  # inference in train mode (dropout) is fine
    trainable = MaskedModel.from_pretrained(root / "mask", is_trainable=True)
    trainable.train()
    trainable(**random_batch())


def test_a_mixed_forward_without_inputs_and_a_huge_mask_shape_are_named(saved):
    root, _ = saved
    model = MaskedModel.from_pretrained(root / "mask").eval()
    with pytest.raises(ValueError, match="no inputs to count examples in: pass input_ids"):
        model(mask_names=["default"])
    encoded = codec.encode(torch.ones(4, 4, dtype=torch.bool))
    huge = codec.EncodedMask(encoded.data, (2**40, 2**40), encoded.digest)
    with pytest.raises(codec.MaskCodecError, match="needs 1208925819614629174706176"):
        codec.decode(huge)


def test_clm_refuses_an_empty_or_non_utf8_text_file_by_name(tmp_path, monkeypatch):
    decoder = save_tiny_decoder(tmp_path / "decoder")
    common = ["--model_name_or_path", decoder, "--output_dir", str(tmp_path / "out"), "--do_train", "--use_cpu"]
    write(tmp_path / "empty.txt", "\n \n")
    with pytest.raises(DataFileError, match="--train_file '.*empty.txt' is empty"):
        run_script("run_clm_masking.py", [*common, "--train_file", str(tmp_path / "empty.txt")], monkeypatch)
    (tmp_path / "latin1.txt").write_bytes("the café opens\n".encode("latin-1"))
    with pytest.raises(DataFileError, match="--train_file '.*latin1.txt' is not UTF-8 text: byte 7 is 0xe9"):
        run_script("run_clm_masking.py", [*common, "--train_file", str(tmp_path / "latin1.txt")], monkeypatch)


def test_scripts_name_a_missing_model_a_folder_given_as_a_file_and_a_broken_arguments_file(tmp_path, monkeypatch):
    data = write(tmp_path / "train.csv", "text,label\na film,pos\n")
    common = ["--output_dir", str(tmp_path / "out"), "--do_train", "--use_cpu", "--report_to", "none"]
    with pytest.raises(ValueError, match="--model_name_or_path /no/such/model: no such folder"):
        run_script("run_glue_masking.py", ["--model_name_or_path", "/no/such/model", "--train_file", data, *common],
                   monkeypatch)  # fmt: skip
    with pytest.raises(DataFileError, match="--train_file '.*' is a folder"):
        run_script("run_glue_masking.py", ["--model_name_or_path", "x", "--train_file", str(tmp_path), *common],
                   monkeypatch)  # fmt: skip
    arguments = tmp_path / "args.json"
    arguments.write_text('{"model_name_or_path": "x", "output_dir": "out",}')
    with pytest.raises(ValueError, match=r"args.json is not valid JSON: .* line 1, column"):
        run_script("run_glue_masking.py", [str(arguments)], monkeypatch)
    unused = {"model_name_or_path": "x", "output_dir": str(tmp_path / "o"), "train_file": data, "bogus": 1}
    arguments.write_text(json.dumps(unused))
    with pytest.raises(ValueError, match="bogus"):
        run_script("run_glue_masking.py", [str(arguments)], monkeypatch)
    assert not os.path.exists(tmp_path / "out")


def test_a_decoder_mask_generates_after_the_checks(tmp_path):
    """The new checks leave ordinary use alone: a causal LM wraps, trains a step and generates."""
    model = MaskedModel(build_model(AutoModelForCausalLM, "llama"))
    model.train()
    model(**random_batch(), labels=random_batch()["input_ids"]).loss.backward()
    model.eval()
    assert model.generate(random_batch()["input_ids"][:1], max_new_tokens=2, do_sample=False).shape[1] == 10
