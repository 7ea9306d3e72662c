import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import load_quietly, random_batch, save_pretrained_base, train_a_little
from repo_tools import forge, read_raw
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from hf_masking import BaseModelMismatchError, MaskedModel, MaskingConfig, MaskRepoError, atomic_save


def _trained(base_dir, head=AutoModelForSequenceClassification, num_labels=3, seed=0):
    base = load_quietly(head, base_dir, num_labels=num_labels)
    return train_a_little(MaskedModel(base, MaskingConfig(initial_sparsity=0.1)), seed=seed)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_save_and_from_pretrained_give_bitwise_equal_logits(tmp_path, model_type):
    base_dir = save_pretrained_base(tmp_path / "base", model_type)
    model = _trained(base_dir)
    expected = model(**random_batch()).logits
    model.save_pretrained(tmp_path / "mask")
    assert sorted(os.listdir(tmp_path / "mask")) == ["README.md", "mask.safetensors", "masking_config.json"]

    loaded = MaskedModel.from_pretrained(tmp_path / "mask")
    assert torch.equal(loaded(**random_batch()).logits, expected)
    assert loaded.config.id2label == model.config.id2label
    assert not any(p.requires_grad for p in loaded.parameters())

    record, metadata, tensors = read_raw(tmp_path / "mask")
    assert record["base_model_name_or_path"] == base_dir and record["base_model_revision"] is None
    assert record["head_class"] == type(model.get_base_model()).__name__
    assert MaskingConfig.from_dict(record["masking_config"]) == model.masking_config
    assert all(t.dtype == torch.uint8 for k, t in tensors.items() if k.startswith("mask."))
    head_keys = sorted(k for k in tensors if k.startswith("head."))
    assert metadata["codec"] == "rice-gaps-by-init" and sorted(metadata["tensors"]) == sorted(tensors)
    assert head_keys and all(k.startswith(("head.classifier", "head.pre_classifier")) for k in head_keys)
    # Every base tensor the model computes with is fingerprinted, the head (which travels) is not.
    fingerprinted = set(record["base_fingerprint"]["tensors"])
    base_tensors = {
        n for n, _ in load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3).named_parameters()
    }
    assert fingerprinted == base_tensors - {k[len("head.") :] for k in head_keys}
    # A second save of the same mask gives the same bytes (deterministic files, Hub dedup).
    before = (tmp_path / "mask" / "mask.safetensors").read_bytes()
    loaded.save_pretrained(tmp_path / "mask")
    assert (tmp_path / "mask" / "mask.safetensors").read_bytes() == before


def test_repo_holds_no_base_weights_and_a_model_card(tmp_path):
    base_dir = save_pretrained_base(tmp_path / "base", hidden_size=64, intermediate_size=256, vocab_size=2000)
    model = _trained(base_dir)
    model.save_pretrained(tmp_path / "mask")
    repo_bytes = sum(os.path.getsize(tmp_path / "mask" / f) for f in os.listdir(tmp_path / "mask"))
    base_bytes = os.path.getsize(tmp_path / "base" / "model.safetensors")
    assert repo_bytes < 0.05 * base_bytes
    card = (tmp_path / "mask" / "README.md").read_text()
    assert "library_name: hf-masking" in card and "| block | masked out |" in card and "| 2 |" in card
    assert "MaskedModel.from_pretrained" in card


def test_base_override_accepts_a_copy_and_refuses_other_bases(tmp_path):
    base_dir = save_pretrained_base(tmp_path / "base")
    model = _trained(base_dir)
    expected = model(**random_batch()).logits
    model.save_pretrained(tmp_path / "mask")

    copy_dir = save_pretrained_base(tmp_path / "copy")  # same seed: the same weights elsewhere
    assert torch.equal(
        MaskedModel.from_pretrained(tmp_path / "mask", base_model=copy_dir)(**random_batch()).logits, expected
    )
    half = MaskedModel.from_pretrained(tmp_path / "mask", base_model=copy_dir, dtype=torch.bfloat16)
    assert half.get_base_model().dtype == torch.bfloat16  # same weights in bf16: accepted

    other = save_pretrained_base(tmp_path / "other", seed=1)
    with pytest.raises(BaseModelMismatchError, match=r"bert\.embeddings\.word_embeddings\.weight differs"):
        MaskedModel.from_pretrained(tmp_path / "mask", base_model=other)
    wider = save_pretrained_base(tmp_path / "wider", hidden_size=48, intermediate_size=64)
    with pytest.raises(BaseModelMismatchError, match=r"config has hidden_size=48, but .* hidden_size=32"):
        MaskedModel.from_pretrained(tmp_path / "mask", base_model=wider)
    roberta = load_quietly(
        AutoModelForSequenceClassification, save_pretrained_base(tmp_path / "rob", "roberta"), num_labels=3
    )
    with pytest.raises(BaseModelMismatchError, match="BertForSequenceClassification.*RobertaForSequenceClassification"):
        MaskedModel.from_pretrained(tmp_path / "mask", base_model=roberta)
    token_head = load_quietly(AutoModelForTokenClassification, base_dir, num_labels=3)
    with pytest.raises(BaseModelMismatchError, match="BertForTokenClassification"):
        MaskedModel.from_pretrained(tmp_path / "mask", base_model=token_head)


@pytest.fixture()
def saved_mask(tmp_path):
    base_dir = save_pretrained_base(tmp_path / "base")
    _trained(base_dir).save_pretrained(tmp_path / "mask")
    return tmp_path / "mask"


def test_truncated_file_is_refused(saved_mask):
    path = saved_mask / "mask.safetensors"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(MaskRepoError, match="mask.safetensors is truncated or corrupted"):
        MaskedModel.from_pretrained(saved_mask)


def test_corrupted_mask_bytes_are_refused(saved_mask):
    path = saved_mask / "mask.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    key = next(k for k in tensors if k.startswith("mask."))
    tensors[key][-1] ^= 0x55
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(MaskRepoError, match=r"mask.safetensors is corrupted: tensor 'mask\.bert\..*' does not match"):
        MaskedModel.from_pretrained(saved_mask)


def test_unknown_codec_and_format_are_refused(saved_mask):
    forge(saved_mask, edit_metadata=lambda meta: meta.update(codec="bitpack-lz4"))
    with pytest.raises(MaskRepoError, match="uses mask codec 'bitpack-lz4'"):
        MaskedModel.from_pretrained(saved_mask)
    config = saved_mask / "masking_config.json"
    record = json.loads(config.read_text())
    for version, message in [(7, "format_version 7;"), (1, r"format_version 1 \(hf-masking 0\.1")]:
        config.write_text(json.dumps({**record, "format_version": version}))
        with pytest.raises(MaskRepoError, match=message):
            MaskedModel.from_pretrained(saved_mask)
    config.write_text("{not json")
    with pytest.raises(MaskRepoError, match="not valid JSON"):
        MaskedModel.from_pretrained(saved_mask)
    config.unlink()
    with pytest.raises(MaskRepoError, match="masking_config.json is missing"):
        MaskedModel.from_pretrained(saved_mask)


def test_failed_save_leaves_the_previous_repo_intact(saved_mask, monkeypatch):
    (saved_mask / "tokenizer.json").write_text("{}")  # unrelated files must survive saves
    before = {f: (saved_mask / f).read_bytes() for f in os.listdir(saved_mask)}
    model = MaskedModel.from_pretrained(saved_mask)
    written = []

    def disk_full(path, data, mode):
        if written:
            raise OSError(28, "No space left on device")
        written.append(path)
        real_write(path, data, mode)

    real_write = atomic_save._write_file
    monkeypatch.setattr(atomic_save, "_write_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(saved_mask)
    assert {f: (saved_mask / f).read_bytes() for f in os.listdir(saved_mask)} == before
    monkeypatch.undo()
    model.save_pretrained(saved_mask)
    assert (saved_mask / "tokenizer.json").exists()
    assert not [f for f in os.listdir(saved_mask) if f.startswith(".hf-masking")]


def test_merged_model_loads_with_plain_transformers(tmp_path):
    base_dir = save_pretrained_base(tmp_path / "base")
    model = _trained(base_dir)
    expected = model(**random_batch()).logits
    model.merge().save_pretrained(tmp_path / "merged")
    torch.save(random_batch(), tmp_path / "batch.pt")
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForSequenceClassification\n"
        "m = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()\n"
        "torch.save(m(**torch.load(sys.argv[2])).logits, sys.argv[3])\n"
        "assert 'hf_masking' not in sys.modules\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "merged"), str(tmp_path / "batch.pt"), str(tmp_path / "out.pt")],
        check=True,
        capture_output=True,
    )
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=1e-6)
