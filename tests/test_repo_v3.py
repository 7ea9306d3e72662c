"""Repo format 3: masks coded given their initial scores, compact metadata, and format 2 still loading."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from conftest import load_quietly, random_batch, save_pretrained_base, train_a_little
from repo_tools import forge, read_raw
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from hf_masking import BaseModelMismatchError, MaskedModel, MaskingConfig, MaskRepoError, codec, repo

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hf_masking_0.3")
WIDE = dict(hidden_size=64, intermediate_size=256, vocab_size=500)  # layers large enough to gain from the context


def _wide_mask(tmp_path, score_dtype: str = "float32", steps: int = 3) -> tuple[MaskedModel, str]:
    base_dir = save_pretrained_base(tmp_path / "base", **WIDE)
    base = load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=2)
    config = MaskingConfig(initial_sparsity=0.1, score_dtype=score_dtype)
    return train_a_little(MaskedModel(base, config), steps=steps), base_dir


@pytest.mark.parametrize("score_dtype", ["float32", "bfloat16"])
def test_format_3_reloads_bit_for_bit(tmp_path, score_dtype):
    model, base_dir = _wide_mask(tmp_path, score_dtype)
    model.save_pretrained(tmp_path / "mask")
    record, metadata, tensors = read_raw(tmp_path / "mask")
    assert record["format_version"] == 3 and metadata["codec"] == "rice-gaps-by-init"
    magics = {bytes(tensors[f"mask.{name}"][:4].tolist()) for name in record["masked_modules"]}
    assert b"HFM3" in magics  # the block layers are coded given their initial scores
    loaded = MaskedModel.from_pretrained(tmp_path / "mask")
    batch = random_batch(vocab=500)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    assert all(torch.equal(loaded.masks()[n], m) for n, m in model.masks().items())
    # Trains on from exactly the saved mask, in the recorded score dtype.
    more = MaskedModel.from_pretrained(tmp_path / "mask", is_trainable=True)
    assert all(torch.equal(more.masks()[n], m) for n, m in model.masks().items())
    assert next(m.mask_scores for m in more.masked_modules().values()).dtype == getattr(torch, score_dtype)


def test_format_3_is_smaller_than_format_2_and_its_metadata_is_compact(tmp_path):
    model, _ = _wide_mask(tmp_path)
    stored = model.to_stored_mask()
    plain = {name: codec.encode(mask) for name, mask in model.masks().items()}
    conditional = sum(m.nbytes for m in stored.masks.values())
    assert conditional < 0.9 * sum(m.nbytes for m in plain.values())  # real masks: BENCHMARKS.md
    model.save_pretrained(tmp_path / "mask")
    text = (tmp_path / "mask" / "masking_config.json").read_text()
    assert "\n  " not in text  # one top-level field per line, values compact
    record = json.loads(text)
    entry = next(iter(record["base_fingerprint"]["tensors"].values()))
    assert isinstance(entry, list) and all(len(d) == 16 for d in entry[2:])
    assert len(record["base_fingerprint"]["sha256"]) == 64


def test_the_full_base_digest_catches_what_a_short_one_could_miss(tmp_path):
    model, base_dir = _wide_mask(tmp_path)
    model.save_pretrained(tmp_path / "mask")

    def forged_full_digest(record):
        record["base_fingerprint"]["sha256"] = "0" * 64

    forge(tmp_path / "mask", edit_record=forged_full_digest)
    with pytest.raises(BaseModelMismatchError, match="full digest over all of them does not match"):
        MaskedModel.from_pretrained(tmp_path / "mask")


def test_a_repo_written_by_hf_masking_0_3_still_loads(tmp_path):
    """Format 2 (masks coded alone, full digests, no `head` field), saved by 0.3.0 and kept as a fixture."""
    folder = tmp_path / "v2"
    shutil.copytree(os.path.join(FIXTURE, "mask-v2"), folder)
    record, metadata, _ = read_raw(folder)
    assert record["format_version"] == 2 and metadata["codec"] == "rice-gaps"
    base = os.path.join(FIXTURE, "base")
    loaded = MaskedModel.from_pretrained(folder, base_model=base)
    expected = load_file(os.path.join(FIXTURE, "mask-v2-logits.safetensors"))["logits"]
    with torch.no_grad():
        assert torch.equal(loaded(**random_batch()).logits, expected)
    assert loaded.masking_config.head == "mask"  # its head was masked; it stays so
    # Saved again it becomes format 3, with the same masks and logits.
    loaded.save_pretrained(tmp_path / "v3")
    again = MaskedModel.from_pretrained(tmp_path / "v3", base_model=base)
    assert json.loads((tmp_path / "v3" / "masking_config.json").read_text())["format_version"] == 3
    with torch.no_grad():
        assert torch.equal(again(**random_batch()).logits, expected)
    # And it still refuses another base, naming the tensor.
    other = save_pretrained_base(tmp_path / "other", seed=1)
    with pytest.raises(BaseModelMismatchError, match="differs from the tensor the mask was trained on"):
        MaskedModel.from_pretrained(folder, base_model=other)


def test_a_damaged_conditional_stream_in_a_resealed_repo_is_refused(tmp_path):
    """A hostile author can re-sign any bytes: a broken stream is still a clear error, at load or first use."""
    model, _ = _wide_mask(tmp_path)
    model.save_pretrained(tmp_path / "mask")
    record, metadata, tensors = read_raw(tmp_path / "mask")
    name = next(n for n in record["masked_modules"] if bytes(tensors[f"mask.{n}"][:4].tolist()) == b"HFM3")
    stored = repo.read_folder(str(tmp_path / "mask"))
    data = bytearray(stored.masks[name].data)
    data[40] ^= 0xFF  # inside the bucket table or the first stream; the checksum now disagrees
    masks = dict(stored.masks)
    masks[name] = codec.EncodedMask(bytes(data), stored.masks[name].shape, stored.masks[name].digest)
    config_bytes, weights_bytes = repo.encode_repo(repo.StoredMask(stored.record, masks, stored.head))
    (tmp_path / "mask" / "masking_config.json").write_bytes(config_bytes)
    (tmp_path / "mask" / "mask.safetensors").write_bytes(weights_bytes)
    with pytest.raises(MaskRepoError, match=f"the mask of {name} is unusable: mask data is corrupted"):
        MaskedModel.from_pretrained(tmp_path / "mask")
    assert metadata["masks"][name]["digest"] == stored.masks[name].digest


def test_a_loaded_mask_regenerates_initial_scores_once_even_with_the_cache_off(tmp_path, monkeypatch):
    """Format 3 decodes given the initial scores; after the first decode a layer keeps the plain code,
    so the cache off (decode on every call) does not regenerate them on every forward."""
    from conftest import load_quietly, random_batch, save_pretrained_base, train_a_little
    from transformers import AutoModelForSequenceClassification

    from hf_masking import MaskedModel, MaskingConfig, binarizer, codec

    base = load_quietly(AutoModelForSequenceClassification, save_pretrained_base(tmp_path / "base"))
    model = train_a_little(MaskedModel(base, MaskingConfig(seed=4)))
    model.save_pretrained(tmp_path / "mask")
    loaded = MaskedModel.from_pretrained(tmp_path / "mask")
    assert any(codec.is_conditional(e) for e in loaded.to_stored_mask().masks.values())
    loaded.fixed_masks.max_bytes = 0
    draws = []
    real = binarizer.init_draw
    monkeypatch.setattr(binarizer, "init_draw", lambda *a, **k: draws.append(1) or real(*a, **k))
    batch = random_batch()
    first = loaded(**batch).logits
    after_first = len(draws)
    assert after_first > 0
    for _ in range(3):
        assert torch.equal(loaded(**batch).logits, first)
    assert len(draws) == after_first  # no regeneration after the first decode of each layer
    torch.testing.assert_close(first, model.eval()(**batch).logits, rtol=0, atol=1e-6)
    loaded.save_pretrained(tmp_path / "again")  # the repo still saves in format 3, as loaded
    saved = (tmp_path / "mask" / "mask.safetensors").read_bytes()
    assert (tmp_path / "again" / "mask.safetensors").read_bytes() == saved
