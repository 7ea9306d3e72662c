"""Each row of a batch with its own mask: every row equals what its mask computes alone."""

import pytest
import torch
from conftest import load_quietly, random_batch, save_pretrained_base, tiny_config
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from hf_masking import MaskedModel, MaskingConfig

HEADS = {
    "sequence": (AutoModelForSequenceClassification, {"num_labels": 3}),
    "token": (AutoModelForTokenClassification, {"num_labels": 5}),
    "choice": (AutoModelForMultipleChoice, {}),
}
DECODERS = ("gpt2", "llama")  # GPT-2: Conv1D layers, stored transposed
NAMES = ["m1", "default", None, "m2", "m1", "default"]  # one per example; None: the base without a mask
SORTED = ["m1", "m1", "default", "default", None, "m2"]  # each mask's examples together: layers take slices


def _inputs(head: str) -> dict[str, torch.Tensor]:
    batch = random_batch(batch=len(NAMES), length=8)
    if head == "choice":  # 3 choices per example: the model flattens them into rows
        batch = {k: v.unsqueeze(1).repeat(1, 3, 1) for k, v in batch.items()}
        batch["input_ids"][:, 1:] = batch["input_ids"][:, 1:].roll(1, dims=-1)
    return batch


def _save_masks(tmp_path, make_base, seeds=(0, 1, 2)) -> None:
    for seed in seeds:
        torch.manual_seed(seed)  # each task's own random head
        model = MaskedModel(make_base(), MaskingConfig(initial_sparsity=0.3, seed=seed))
        model.save_pretrained(tmp_path / f"m{seed}")


def _loaded(tmp_path, kernel: str) -> MaskedModel:
    model = MaskedModel.from_pretrained(tmp_path / "m0")
    model.load_mask(tmp_path / "m1", "m1")
    model.load_mask(tmp_path / "m2", "m2")
    model.fixed_masks.kernel = kernel
    return model


def _alone(model: MaskedModel, name, call):
    """What mask `name` computes with it active alone (None: inside disable_masks)."""
    active = model.active_mask
    if name is None:
        with model.disable_masks():
            return call()
    model.set_active_mask(name)
    try:
        return call()
    finally:
        model.set_active_mask(active)


def _base_state(model: MaskedModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.get_base_model().state_dict().items() if "mask_scores" not in k}


def _assert_rows_match(model, names, call_mixed, call_alone):
    mixed = call_mixed()
    outputs = {name: call_alone(name) for name in dict.fromkeys(names)}
    rows = mixed.shape[0] // len(names)
    for i, name in enumerate(names):
        torch.testing.assert_close(
            mixed[i * rows : (i + 1) * rows], outputs[name][i * rows : (i + 1) * rows], atol=1e-5, rtol=0
        )
    different = [(a, b) for a in outputs for b in outputs if a != b]
    assert all((outputs[a] - outputs[b]).abs().max() > 1e-3 for a, b in different)  # the masks do differ


@pytest.mark.parametrize("names", [NAMES, SORTED], ids=["interleaved", "sorted"])
@pytest.mark.parametrize("kernel", ["dense", "sparse"])
@pytest.mark.parametrize("head", sorted(HEADS))
def test_each_row_computes_with_its_own_mask_and_head(head, kernel, names, tmp_path):
    head_cls, kwargs = HEADS[head]
    base_dir = save_pretrained_base(tmp_path / "base")
    _save_masks(tmp_path, lambda: load_quietly(head_cls, base_dir, **kwargs))
    model = _loaded(tmp_path, kernel)
    batch = _inputs(head)
    before = _base_state(model)
    _assert_rows_match(
        model,
        names,
        lambda: model(**batch, mask_names=names).logits,
        lambda name: _alone(model, name, lambda: model(**batch).logits),
    )
    after = _base_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # not a weight written, heads restored
    assert model.active_mask == "default"
    assert torch.equal(model(**batch).logits, _alone(model, "default", lambda: model(**batch).logits))


@pytest.mark.parametrize("names", [NAMES, SORTED], ids=["interleaved", "sorted"])
@pytest.mark.parametrize("kernel", ["dense", "sparse"])
@pytest.mark.parametrize("family", DECODERS)
def test_causal_lm_rows_and_generated_sequences_keep_their_masks(family, kernel, names, tmp_path):
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config(family)).save_pretrained(tmp_path / "base")
    _save_masks(tmp_path, lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "base"))
    model = _loaded(tmp_path, kernel)
    prompts = random_batch(batch=len(names), length=6)
    _assert_rows_match(
        model,
        names,
        lambda: model(**prompts, mask_names=names).logits,
        lambda name: _alone(model, name, lambda: model(**prompts).logits),
    )
    # generate: the cache is reused step by step, and beams repeat each prompt's rows.
    settings = dict(max_new_tokens=5, do_sample=False, num_beams=2, num_return_sequences=2, pad_token_id=0)
    mixed = model.generate(**prompts, mask_names=names, **settings)
    for i, name in enumerate(names):
        alone = _alone(model, name, lambda: model.generate(**prompts, **settings))
        assert torch.equal(mixed[2 * i : 2 * i + 2], alone[2 * i : 2 * i + 2]), (i, name)


def test_a_trainable_mask_joins_loaded_ones(tmp_path):
    base_dir = save_pretrained_base(tmp_path / "base")
    _save_masks(tmp_path, lambda: load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3), (1,))
    torch.manual_seed(5)
    base = load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3)
    model = MaskedModel(base, MaskingConfig(initial_sparsity=0.3, seed=5)).eval()
    model.load_mask(tmp_path / "m1", "m1")
    batch = random_batch(batch=4)
    names = ["default", "m1", None, "m1"]
    for active in ("default", "m1"):  # the trainable head is kept aside while another mask is active
        model.set_active_mask(active)
        _assert_rows_match(
            model,
            names,
            lambda: model(**batch, mask_names=names).logits,
            lambda name: _alone(model, name, lambda: model(**batch).logits),
        )


def test_mixed_batches_refuse_what_they_cannot_do(tmp_path):
    base_dir = save_pretrained_base(tmp_path / "base")
    _save_masks(tmp_path, lambda: load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3))
    torch.manual_seed(9)
    MaskedModel(load_quietly(AutoModelForTokenClassification, base_dir, num_labels=5)).save_pretrained(
        tmp_path / "tags"
    )
    model = _loaded(tmp_path, "auto")
    model.load_mask(tmp_path / "tags", "tags")
    batch = random_batch(batch=2)
    with pytest.raises(KeyError, match=r"'m7'.*\['default', 'm1', 'm2', 'tags'\]"):
        model(**batch, mask_names=["m1", "m7"])
    with pytest.raises(ValueError, match="3 names for a batch of 2"):
        model(**batch, mask_names=["m1", "m2", "m1"])
    with pytest.raises(TypeError, match="one mask name"):
        model(**batch, mask_names="m1")
    with pytest.raises(ValueError, match="different heads"):
        model(**batch, mask_names=["m1", "tags"])
    with pytest.raises(ValueError, match="None"):
        model(**batch, mask_names=[None, "tags"])
    tags = model(**batch, mask_names=["tags", "tags"]).logits  # another head alone: its own task model
    assert tags.shape == (2, 8, 5)
    torch.testing.assert_close(tags, _alone(model, "tags", lambda: model(**batch).logits), atol=1e-5, rtol=0)
    model.train()
    with pytest.raises(RuntimeError, match="eval"):
        model(**batch, mask_names=["m1", "m2"])


def test_switching_writes_nothing_and_the_cache_bound_only_trades_speed(tmp_path):
    base_dir = save_pretrained_base(tmp_path / "base")
    _save_masks(tmp_path, lambda: load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3))
    model = _loaded(tmp_path, "auto")
    batch = random_batch(batch=len(NAMES))
    weights = {name: layer.weight for name, layer in model.masked_modules().items()}
    before = _base_state(model)
    expected = model(**batch, mask_names=NAMES).logits
    assert len(model.fixed_masks) > 0 and model.fixed_masks.nbytes > 0
    for name in ("m2", "m1", "default"):
        model.set_active_mask(name)
    assert all(layer.weight is weights[name] for name, layer in model.masked_modules().items())
    assert all(torch.equal(v, before[k]) for k, v in _base_state(model).items())

    model.fixed_masks.max_bytes = 0  # nothing kept: every call decodes, the answers stay the same
    assert len(model.fixed_masks) == 0
    # (equal up to float rounding: BLAS results can depend on how a gathered row is aligned)
    torch.testing.assert_close(model(**batch, mask_names=NAMES).logits, expected, atol=1e-6, rtol=0)
    assert len(model.fixed_masks) == 0 and model.fixed_masks.nbytes == 0

    import copy

    twin = copy.deepcopy(model)  # its own empty cache, same masks
    torch.testing.assert_close(twin(**batch, mask_names=NAMES).logits, expected, atol=1e-6, rtol=0)
    model.fixed_masks.max_bytes = 1 << 20
    model(**batch, mask_names=NAMES)
    model.to(torch.float64)  # decoded masks are per device and dtype: dropped on a move or cast
    assert len(model.fixed_masks) == 0
    torch.testing.assert_close(model(**batch, mask_names=NAMES).logits.float(), expected, atol=1e-5, rtol=0)
    model.delete_mask("m2")
    assert not [key for key in model.fixed_masks._entries if key[0] == "m2"]
