"""Habits of transformers + PEFT users work on masks: one base for tasks with any head, Trainer-native
saving, continuing a saved mask, PEFT-style module selection, and clear errors instead of silence."""

import os
import warnings

import pytest
import torch
from conftest import build_model, load_quietly, random_batch, save_pretrained_base, train_a_little
from safetensors import safe_open
from trainer_utils import trainer_for
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from hf_masking import MaskedModel, MaskingCallback, MaskingConfig


def _train_token_classifier(model, steps=3):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for step in range(steps):
        batch = random_batch(seed=step)
        labels = torch.randint(
            0, model.config.num_labels, batch["input_ids"].shape, generator=torch.Generator().manual_seed(step)
        )
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def task_masks(tmp_path_factory):
    """Three tasks on one tiny base: 2-way and 6-way sequence classification, 9-tag token classification."""
    root = tmp_path_factory.mktemp("tasks")
    base_dir = save_pretrained_base(root / "base")
    heads = {
        "sst2": (AutoModelForSequenceClassification, 2),
        "trec": (AutoModelForSequenceClassification, 6),
        "conll": (AutoModelForTokenClassification, 9),
    }
    logits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed, (name, (head, labels)) in enumerate(heads.items()):
            torch.manual_seed(seed)
            model = MaskedModel(load_quietly(head, base_dir, num_labels=labels), MaskingConfig(initial_sparsity=0.1))
            trained = _train_token_classifier(model) if name == "conll" else train_a_little(model, seed=seed)
            trained.save_pretrained(root / name)
            logits[name] = MaskedModel.from_pretrained(root / name)(**random_batch()).logits
    return root, base_dir, logits


def test_one_base_serves_tasks_with_different_heads(task_masks):
    root, _, expected = task_masks
    model = MaskedModel.from_pretrained(root / "sst2")
    model.load_mask(root / "trec", "trec")
    model.load_mask(root / "conll", "conll")
    backbone = model.get_base_model().bert
    for name in ["trec", "conll", "default", "conll", "trec", "default"]:
        model.set_active_mask(name)
        logits = model(**random_batch()).logits
        assert torch.equal(logits, expected["sst2" if name == "default" else name]), name
        assert model.get_base_model().bert is backbone  # one resident backbone
    model.set_active_mask("conll")
    assert model.config.num_labels == 9 and type(model.get_base_model()).__name__ == "BertForTokenClassification"
    model.save_pretrained(root / "conll-again", mask_name="conll")
    assert torch.equal(MaskedModel.from_pretrained(root / "conll-again")(**random_batch()).logits, expected["conll"])
    model.set_active_mask("default")
    model.delete_mask("conll")
    assert len(model._tasks) == 2  # the token-classification head is freed with its last mask


def test_trainer_saves_are_loadable_masks(tmp_path):
    base_dir = save_pretrained_base(tmp_path / "base")
    model = MaskedModel(load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=2))
    trainer = trainer_for(model, tmp_path / "run", max_steps=4, save_strategy="steps", save_steps=2)
    trainer.train()
    final = model.eval()(**random_batch()).logits
    trainer.save_model(str(tmp_path / "saved"))
    assert torch.equal(MaskedModel.from_pretrained(tmp_path / "saved")(**random_batch()).logits, final)
    checkpoint = MaskedModel.from_pretrained(tmp_path / "run" / "checkpoint-4")
    assert torch.equal(checkpoint(**random_batch()).logits, final)
    # A checkpoint keeps the fp32 scores: training on from it starts from exactly those.
    again = MaskedModel.from_pretrained(tmp_path / "run" / "checkpoint-4", is_trainable=True)
    for name, module in again.masked_modules().items():
        assert torch.equal(module.mask_scores, model.masked_modules()[name].mask_scores)


def test_state_dict_of_a_loaded_mask(task_masks, tmp_path):
    root, _, _ = task_masks
    loaded = MaskedModel.from_pretrained(root / "sst2")
    state = loaded.state_dict()
    assert "model.classifier.weight" in state and not any("fixed_positions" in k for k in state)
    torch.save(state, tmp_path / "state.pt")


def test_a_saved_mask_trains_on_from_exactly_where_it_was(task_masks, tmp_path):
    root, _, expected = task_masks
    model = MaskedModel.from_pretrained(root / "sst2", is_trainable=True)
    saved = MaskedModel.from_pretrained(root / "sst2").masks()
    assert all(torch.equal(model.masks()[name], mask) for name, mask in saved.items())  # the first step's mask
    assert model.num_trainable_parameters()[0] > 0 and model.active_mask == "default"
    assert torch.equal(model.eval()(**random_batch()).logits, expected["sst2"])
    trainer = trainer_for(model, tmp_path / "more", max_steps=3, learning_rate=0.05)
    trainer.train()  # no "element 0 of tensors does not require grad"
    assert any(not torch.equal(model.masks()[name], mask) for name, mask in saved.items())


@pytest.mark.parametrize(
    "model_type, auto, targets, expected",
    [
        (
            "bert",
            AutoModelForSequenceClassification,
            ["query", "value"],
            ["attention.self.query", "attention.self.value"],
        ),
        ("bert", AutoModelForSequenceClassification, "all-linear", None),
        (
            "bert",
            AutoModelForSequenceClassification,
            r".*\.(query|value)",
            ["attention.self.query", "attention.self.value"],
        ),
        ("gpt2", AutoModelForCausalLM, ["c_attn"], ["attn.c_attn"]),
        ("llama", AutoModelForCausalLM, ["q_proj", "v_proj"], ["self_attn.q_proj", "self_attn.v_proj"]),
    ],
)
def test_peft_style_target_modules(model_type, auto, targets, expected):
    model = MaskedModel(build_model(auto, model_type), MaskingConfig(target_modules=targets))
    prefix = model.targets.block_prefix
    in_blocks = sorted(
        {n.split(".", len(prefix.split(".")) + 1)[-1] for n in model.targets.modules if n.startswith(prefix)}
    )
    if expected is None:  # all-linear: every linear module of a block
        block = model.get_base_model().get_submodule(f"{prefix}.2")
        expected = [
            n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "MaskedLinear"
        ]
    assert in_blocks == sorted(expected)
    assert {model.targets.block_of(n) for n in model.targets.modules} - {None} == {2, 3}


@pytest.mark.parametrize("mask_classifier", [True, False])
def test_an_untied_lm_head_is_base_not_head(tmp_path, mask_classifier):
    torch.manual_seed(0)
    build_model(AutoModelForCausalLM, "llama", tie_word_embeddings=False).save_pretrained(tmp_path / "base")
    base = load_quietly(AutoModelForCausalLM, tmp_path / "base")
    model = MaskedModel(base, MaskingConfig(mask_classifier=mask_classifier))
    assert model.head_tensor_names() == [] and "lm_head" not in model.targets.modules
    model.save_pretrained(tmp_path / "mask")
    with safe_open(str(tmp_path / "mask" / "mask.safetensors"), "pt") as handle:
        assert not [k for k in handle.keys() if k.startswith("head.")]
    assert os.path.getsize(tmp_path / "mask" / "mask.safetensors") < 0.05 * os.path.getsize(
        tmp_path / "base" / "model.safetensors"
    )
    batch = {"input_ids": random_batch()["input_ids"]}
    assert torch.equal(MaskedModel.from_pretrained(tmp_path / "mask")(**batch).logits, model.eval()(**batch).logits)


def test_training_without_the_callback_warns_once(tmp_path):
    model = MaskedModel(build_model(AutoModelForSequenceClassification, "bert"))
    with pytest.warns(UserWarning, match="without MaskingCallback"):
        train_a_little(model, steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_a_little(model, steps=1)  # once only
        other = MaskedModel(build_model(AutoModelForSequenceClassification, "bert"))
        trainer_for(other, tmp_path / "run", max_steps=1, callbacks=[MaskingCallback()]).train()


def test_casts_keep_scores_in_fp32_and_the_mask_unchanged():
    model = train_a_little(MaskedModel(build_model(AutoModelForSequenceClassification, "bert")))
    before = model.masks()
    model.to(torch.bfloat16)
    assert model.get_base_model().dtype == torch.bfloat16
    assert {m.mask_scores.dtype for m in model.masked_modules().values()} == {torch.float32}
    assert all(torch.equal(before[n], m) for n, m in model.masks().items())
    model.half()
    assert {m.mask_scores.dtype for m in model.masked_modules().values()} == {torch.float32}


def test_peft_names_work_or_say_what_to_use(task_masks):
    root, base_dir, expected = task_masks
    model = MaskedModel.from_pretrained(root / "sst2")
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "BertForSequenceClassification"
    torch.testing.assert_close(merged(**random_batch()).logits, expected["sst2"])
    with pytest.raises(RuntimeError, match=r"consumed by merge_and_unload\(\)"):  # as PEFT's: the wrapper is spent
        model(**random_batch())
    model = MaskedModel.from_pretrained(root / "sst2")
    plain = load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=2)
    with torch.no_grad():
        plain.classifier.weight.copy_(model.get_base_model().classifier.weight)
        plain.classifier.bias.copy_(model.get_base_model().classifier.bias)
    with model.disable_masks():
        torch.testing.assert_close(model(**random_batch()).logits, plain(**random_batch()).logits)
    assert torch.equal(model(**random_batch()).logits, expected["sst2"])  # the mask is back
    for name, use in [
        ("set_adapter", "set_active_mask"),
        ("load_adapter", "load_mask"),
        ("active_adapters", "active_mask"),
    ]:
        with pytest.raises(AttributeError, match=f"no '{name}' \\(a PEFT adapter method\\); with masks use {use}"):
            getattr(model, name)


def test_a_base_from_the_hub_cache_is_recorded_by_id_and_commit(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--org--tiny-bert" / "snapshots" / commit
    save_pretrained_base(snapshot)
    model = MaskedModel(load_quietly(AutoModelForSequenceClassification, snapshot, num_labels=2))
    model.save_pretrained(tmp_path / "mask")
    record = model.to_stored_mask().record
    assert (record["base_model_name_or_path"], record["base_model_revision"]) == ("org/tiny-bert", commit)
    card = (tmp_path / "mask" / "README.md").read_text()
    assert "base_model: org/tiny-bert" in card and "[`org/tiny-bert`](https://huggingface.co/org/tiny-bert)" in card
    assert "# Sequence classification mask for tiny-bert" in card and "pipeline_tag: text-classification" in card
    assert "AutoModel" in card and "merge().save_pretrained" in card


def test_merging_after_another_heads_mask_gives_plain_modules(task_masks, tmp_path):
    root, base_dir, expected = task_masks
    torch.manual_seed(3)
    other_layers = MaskedModel(
        load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=6), MaskingConfig(layers=[1, 2])
    )
    other_layers.save_pretrained(tmp_path / "layers-1-2")
    model = MaskedModel.from_pretrained(root / "sst2")
    model.load_mask(tmp_path / "layers-1-2", "other-layers")  # masks block 1, which sst2's mask leaves alone
    model.set_active_mask("other-layers")
    assert torch.equal(model(**random_batch()).logits, other_layers.eval()(**random_batch()).logits)
    model.set_active_mask("default")
    merged = model.merge()
    assert not [m for m in merged.modules() if type(m).__name__ == "MaskedLinear"]
    torch.testing.assert_close(merged(**random_batch()).logits, expected["sst2"])
