"""A mask repo from a stranger is data: it cannot run code, hang, steer loading, or load silently wrong."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import load_quietly, random_batch, save_pretrained_base, train_a_little
from repo_tools import files, forge, write
from transformers import AutoModel, AutoModelForSequenceClassification

from hf_masking import BaseModelMismatchError, MaskedModel, MaskingConfig, MaskRepoError
from hf_masking.layers import MaskedLinear


def _trained(base_dir, num_labels=3, seed=0, **config):
    torch.manual_seed(seed)  # the head's random initialisation
    base = load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=num_labels)
    return train_a_little(MaskedModel(base, MaskingConfig(initial_sparsity=0.1, seed=seed, **config)), seed=seed)


@pytest.fixture()
def repo(tmp_path):
    base_dir = save_pretrained_base(tmp_path / "base")
    model = _trained(base_dir)
    model.save_pretrained(tmp_path / "mask")
    return tmp_path / "mask", base_dir, model(**random_batch()).logits


# ----- nothing in a repo runs code or steers loading ---------------------------------------
EVIL_CODE = """
import os
open(os.environ["HF_MASKING_PWNED"], "w").write("repo code ran")
from transformers import BertForSequenceClassification as EvilModel
"""


def _evil_base(tmp_path, base_dir):
    """The real base plus an auto_map and a Python file that leaves a marker when imported."""
    evil = tmp_path / "evil-base"
    evil.mkdir()
    for name in os.listdir(base_dir):
        (evil / name).write_bytes((tmp_path / "base" / name).read_bytes())
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
    (evil / "config.json").write_text(json.dumps(config))
    (evil / "evil.py").write_text(EVIL_CODE)
    return str(evil)


@pytest.mark.parametrize(
    "edit, error",
    [
        (
            lambda r, evil: r.update(head_class="AutoModelForSequenceClassification", base_model_name_or_path=evil),
            "'head_class' is 'AutoModelForSequenceClassification', which is not a concrete model class",
        ),
        (
            lambda r, evil: r["label_config"].update(trust_remote_code=True) or r.update(base_model_name_or_path=evil),
            "'label_config.trust_remote_code' is not a known field",
        ),
        (lambda r, evil: r["label_config"].update(revision="main"), "'label_config.revision' is not a known field"),
        (
            lambda r, evil: r["label_config"].update(output_loading_info=True),
            "'label_config.output_loading_info' is not a known field",
        ),
        (lambda r, evil: r.update(head_class="PreTrainedModel"), "not a concrete model class"),
        (lambda r, evil: r.update(head_class="os.system"), "field 'head_class' is not valid"),
        (lambda r, evil: r.update(base_model_revision="main; rm -rf"), "field 'base_model_revision' is not valid"),
    ],
)
def test_hostile_repo_runs_no_code_and_passes_no_kwargs(repo, tmp_path, monkeypatch, edit, error):
    folder, base_dir, _ = repo
    marker = tmp_path / "pwned"
    monkeypatch.setenv("HF_MASKING_PWNED", str(marker))
    evil = _evil_base(tmp_path, base_dir)
    forge(folder, edit_record=lambda r: edit(r, evil))
    with pytest.raises(MaskRepoError, match=error):
        MaskedModel.from_pretrained(folder)
    assert not marker.exists()


def test_a_base_with_remote_code_loads_as_the_concrete_class_without_running_it(repo, tmp_path, monkeypatch):
    folder, base_dir, expected = repo
    marker = tmp_path / "pwned"
    monkeypatch.setenv("HF_MASKING_PWNED", str(marker))
    evil = _evil_base(tmp_path, base_dir)
    forge(folder, edit_record=lambda r: r.update(base_model_name_or_path=evil))
    loaded = MaskedModel.from_pretrained(folder)
    assert torch.equal(loaded(**random_batch()).logits, expected)
    assert not marker.exists()
    with pytest.raises(TypeError, match="unexpected keyword argument 'output_loading_info'"):
        MaskedModel.from_pretrained(folder, output_loading_info=True)


def test_a_repo_regex_is_never_evaluated(repo):
    folder, _, expected = repo
    catastrophic = r"([\w.]|[\w.])*Q"  # exponential backtracking on every module name
    forge(folder, edit_record=lambda r: r["masking_config"].update(extra_patterns=[catastrophic]))

    def too_slow(*_):
        raise TimeoutError("loading evaluated the repo's regex")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(30)
    try:
        loaded = MaskedModel.from_pretrained(folder)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert torch.equal(loaded(**random_batch()).logits, expected)


def test_stored_module_list_is_authoritative_and_checked(repo):
    folder, _, expected = repo
    forge(folder, edit_record=lambda r: r["masked_modules"].reverse())  # another order: same mask
    assert torch.equal(MaskedModel.from_pretrained(folder)(**random_batch()).logits, expected)
    forge(folder, edit_record=lambda r: r["masked_modules"].append("bert.encoder.layer.0.attention.output.LayerNorm"))
    with pytest.raises(MaskRepoError, match="no mask for .bert.encoder.layer.0.attention.output.LayerNorm"):
        MaskedModel.from_pretrained(folder)


# ----- every byte verified -----------------------------------------------------------------
@pytest.mark.parametrize(
    "edit, error",
    [
        (lambda h: h["classifier.bias"].fill_(float("nan")), "head tensor 'classifier.bias' holds NaN or infinity"),
        (lambda h: h.update({"classifier.bias": torch.arange(3)}), "classifier.bias is torch.int64"),
        (lambda h: h.update({"classifier.bias": torch.zeros(3, dtype=torch.bool)}), "classifier.bias is torch.bool"),
        (lambda h: h.update({"classifier.biaz": h.pop("classifier.bias")}), "classifier.biaz is not a head tensor"),
        (lambda h: h.pop("classifier.bias"), "has no head tensor 'classifier.bias'"),
    ],
)
def test_bad_head_tensors_are_refused(repo, edit, error):
    folder, _, _ = repo
    forge(folder, edit_head=edit)
    with pytest.raises((MaskRepoError, BaseModelMismatchError), match=error):
        MaskedModel.from_pretrained(folder)


def test_a_head_bit_flip_is_refused(repo):
    folder, _, _ = repo
    config, weights = files(folder)
    header_size = int.from_bytes(weights[:8], "little")
    start, end = json.loads(weights[8 : 8 + header_size])["head.classifier.bias"]["data_offsets"]
    flipped = bytearray(weights)
    flipped[8 + header_size + start + 2] ^= 0x10  # inside the head's bias
    write(folder, weights_bytes=bytes(flipped))
    with pytest.raises(MaskRepoError, match="mask.safetensors is corrupted: tensor 'head.classifier"):
        MaskedModel.from_pretrained(folder)


def test_a_mask_of_another_shape_is_refused(repo):
    folder, _, _ = repo
    name = "bert.encoder.layer.2.intermediate.dense"  # weight [64, 32]; same numel, other shape
    forge(folder, edit_metadata=lambda m: m["masks"][name].update(shape=[32, 64]))
    with pytest.raises(BaseModelMismatchError, match=rf"mask of {name} has shape \[32, 64\], but the weight"):
        MaskedModel.from_pretrained(folder)


def test_a_weights_file_from_another_repo_is_refused(tmp_path):
    base_dir = save_pretrained_base(tmp_path / "base")
    _trained(base_dir, seed=0).save_pretrained(tmp_path / "a")
    _trained(base_dir, seed=0).save_pretrained(tmp_path / "a-again")  # same config, trained again: same bytes
    _trained(base_dir, seed=1).save_pretrained(tmp_path / "b")  # another seed: another config
    assert files(tmp_path / "a") == files(tmp_path / "a-again")
    write(tmp_path / "a", weights_bytes=files(tmp_path / "b")[1])
    with pytest.raises(MaskRepoError, match=r"mask.safetensors and .*masking_config.json do not belong together"):
        MaskedModel.from_pretrained(tmp_path / "a")

    model = _trained(base_dir, seed=0)
    train_a_little(model, steps=2, seed=7)  # same config, another mask
    model.save_pretrained(tmp_path / "c")
    write(tmp_path / "c", weights_bytes=files(tmp_path / "a-again")[1])
    with pytest.raises(MaskRepoError, match=r"mask.safetensors \(sha256 .*\) is not the weights file .* saved with"):
        MaskedModel.from_pretrained(tmp_path / "c")


def test_an_edited_config_is_refused(repo):
    folder, _, _ = repo
    config, _ = files(folder)
    record = json.loads(config)
    record["label_config"]["id2label"]["0"] = "positive"  # swaps what the mask's outputs mean
    write(folder, config_bytes=json.dumps(record).encode())
    with pytest.raises(MaskRepoError, match="do not belong together"):
        MaskedModel.from_pretrained(folder)


# ----- the right base, all of it -----------------------------------------------------------
@pytest.mark.parametrize(
    "tensor",
    [
        "embeddings.LayerNorm.bias",
        "embeddings.word_embeddings.weight",
        "encoder.layer.0.attention.self.query.weight",  # a block the mask leaves alone
        "encoder.layer.3.output.dense.bias",
        "encoder.layer.3.output.dense.weight",
    ],
)
def test_every_base_tensor_is_checked(repo, tmp_path, tensor):
    folder, base_dir, _ = repo
    model = load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3)
    with torch.no_grad():
        model.get_parameter(f"bert.{tensor}").view(-1)[0] += 1e-3
    with pytest.raises(BaseModelMismatchError, match=rf"bert\.{tensor} differs from the tensor"):
        MaskedModel.from_pretrained(folder, base_model=model)


def test_config_fields_that_change_the_computation_are_checked(repo, tmp_path):
    folder, base_dir, _ = repo
    model = load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3)
    model.config.hidden_act = "relu"
    with pytest.raises(BaseModelMismatchError, match="hidden_act='relu', but the mask was trained on .*'gelu'"):
        MaskedModel.from_pretrained(folder, base_model=model)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_copies_must_equal_the_rounded_original(repo, dtype):
    folder, base_dir, expected = repo
    half = MaskedModel.from_pretrained(folder, dtype=dtype)
    assert half.get_base_model().dtype == dtype
    torch.testing.assert_close(half(**random_batch()).logits.float(), expected, atol=0.05, rtol=0.05)

    for change in ("nudge", "permute"):
        model = load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3, dtype=dtype)
        weight = model.get_parameter("bert.encoder.layer.2.attention.self.query.weight")
        with torch.no_grad():
            if change == "nudge":  # one value to the next representable one
                weight.view(-1)[5] = torch.nextafter(weight.view(-1)[5], torch.tensor(1.0, dtype=dtype))
            else:
                weight.copy_(weight[torch.randperm(weight.shape[0], generator=torch.Generator().manual_seed(0))])
        with pytest.raises(BaseModelMismatchError, match="query.weight differs .* rounded to"):
            MaskedModel.from_pretrained(folder, base_model=model)


def test_a_mask_trained_on_a_half_precision_base_loads_on_its_exact_float32_copy(tmp_path):
    base_dir = save_pretrained_base(tmp_path / "base")
    load_quietly(AutoModel, base_dir, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    base = load_quietly(AutoModelForSequenceClassification, tmp_path / "bf16", num_labels=3)
    assert base.dtype == torch.bfloat16
    MaskedModel(base, MaskingConfig(initial_sparsity=0.1)).save_pretrained(tmp_path / "mask")
    wide = MaskedModel.from_pretrained(tmp_path / "mask", dtype=torch.float32)  # bf16 values, stored wider
    assert wide.get_base_model().dtype == torch.float32
    with pytest.raises(BaseModelMismatchError, match=r"\(float32\) is not the bfloat16 tensor"):
        MaskedModel.from_pretrained(
            tmp_path / "mask", base_model=load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3)
        )  # the original float32 base is not what this mask was trained on


@pytest.mark.parametrize(
    "edit, error",
    [
        (lambda r: r.update(base_fingerprint={}), "'base_fingerprint.version' is missing"),
        (lambda r: r["base_fingerprint"].update(tensors={}), "'base_fingerprint.tensors' is empty"),
        (lambda r: r.pop("base_fingerprint"), "field 'base_fingerprint' is missing"),
    ],
)
def test_the_base_check_cannot_be_switched_off(repo, edit, error):
    folder, _, _ = repo
    forge(folder, edit_record=edit)
    with pytest.raises(MaskRepoError, match=error):
        MaskedModel.from_pretrained(folder)


# ----- clear errors ------------------------------------------------------------------------
def test_missing_folders_and_unreachable_ids_say_so(repo, tmp_path):
    folder, _, _ = repo
    with pytest.raises(FileNotFoundError, match="No mask repo folder at ./no-such-mask: that folder does not exist"):
        MaskedModel.from_pretrained("./no-such-mask")
    with pytest.raises(FileNotFoundError, match="No mask repo folder at"):
        MaskedModel.from_pretrained(tmp_path / "missing")
    with pytest.raises(NotADirectoryError, match="is a file; a mask repo is a folder"):
        MaskedModel.from_pretrained(folder / "README.md")
    forge(folder, edit_record=lambda r: r.update(base_model_name_or_path=str(tmp_path / "moved-away")))
    with pytest.raises(FileNotFoundError, match="base model folder .*moved-away does not exist; pass base_model="):
        MaskedModel.from_pretrained(folder)
    code = (
        "from hf_masking import MaskedModel\n"
        "try:\n    MaskedModel.from_pretrained('someone/never-downloaded')\n"
        "except OSError as err:\n    print(type(err).__name__, err)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-cache")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "not in the local Hugging Face cache, and the Hub cannot be reached" in out, out


def test_config_values_are_range_checked():
    with pytest.raises(ValueError, match="threshold=1e\\+308 is invalid"):
        MaskingConfig(threshold=1e308)
    for field, value in [("layers", 5), ("target_modules", 5), ("seed", -1), ("binarizer", ["topk"])]:
        with pytest.raises(ValueError, match=f"MaskingConfig.{field}="):
            MaskingConfig(**{field: value})


def test_selections_that_match_nothing_are_refused(repo):
    _, base_dir, _ = repo
    base = load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3)
    for field in ("target_modules", "extra_patterns", "modules_to_save"):
        with pytest.raises(ValueError, match=f"MaskingConfig.{field}=\\[\\] is invalid: an empty list"):
            MaskingConfig(**{field: []})
    with pytest.raises(ValueError, match="modules_to_save: 'clasifier' is not a module of BertForSequence"):
        MaskedModel(base, MaskingConfig(modules_to_save=["clasifier"]))
    assert not any(isinstance(m, MaskedLinear) for m in base.modules())  # refused before any change


# ----- merge and switching -----------------------------------------------------------------
def test_merge_is_independent_of_later_switches_and_training(repo, tmp_path):
    folder, base_dir, _ = repo
    _trained(base_dir, seed=3).save_pretrained(tmp_path / "other")
    model = _trained(base_dir)
    merged = model.merge()
    batch = random_batch()
    before = merged(**batch).logits.clone()
    model.load_mask(tmp_path / "other", "other")
    model.set_active_mask("other")
    assert torch.equal(merged(**batch).logits, before)
    model.set_active_mask("default")
    train_a_little(model, steps=2, seed=5)
    assert torch.equal(merged(**batch).logits, before)
    # Nothing is shared, frozen base tensors included: training the merged model cannot reach the base.
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert merged.get_parameter(embeddings).data_ptr() != model.get_base_model().get_parameter(embeddings).data_ptr()


def test_a_failed_switch_leaves_the_model_exactly_as_it_was(repo, tmp_path, monkeypatch):
    folder, base_dir, _ = repo
    _trained(base_dir, seed=3).save_pretrained(tmp_path / "other")
    model = MaskedModel.from_pretrained(folder)
    model.load_mask(tmp_path / "other", "other")
    batch = random_batch()
    before = model(**batch).logits.clone()
    calls = []
    real = MaskedLinear.use_fixed_mask

    def fail_on_the_fifth(self, fixed):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self, fixed)

    monkeypatch.setattr(MaskedLinear, "use_fixed_mask", fail_on_the_fifth)
    with pytest.raises(RuntimeError, match="simulated"):
        model.set_active_mask("other")
    monkeypatch.undo()
    assert model.active_mask == "default"
    assert torch.equal(model(**batch).logits, before)
    model.set_active_mask("other")
    model.set_active_mask("default")
    assert torch.equal(model(**batch).logits, before)
