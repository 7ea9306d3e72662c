import json
import os

import torch
from conftest import build_model
from safetensors import safe_open
from trainer_utils import accuracy, scores_of, toy_dataset, training_args
from transformers import AutoModelForSequenceClassification, Trainer

from hf_masking import MaskedModel, MaskingCallback, MaskingConfig


def _masked(head_seed: int | None = None) -> MaskedModel:
    base = build_model(AutoModelForSequenceClassification, "bert")
    if head_seed is not None:  # same pretrained base, another random head
        torch.manual_seed(head_seed)
        base.classifier.reset_parameters()
    return MaskedModel(base, MaskingConfig(initial_sparsity=0.1))


def _trainer(model, output_dir, **overrides) -> Trainer:
    return Trainer(
        model=model,
        args=training_args(str(output_dir), **overrides),
        train_dataset=toy_dataset(),
        eval_dataset=toy_dataset(16, seed=1),
        compute_metrics=accuracy,
        callbacks=[MaskingCallback()],
    )


def test_stock_trainer_trains_evaluates_and_logs_sparsity(tmp_path):
    model = _masked()
    base_before = {k: v.clone() for k, v in model.get_base_model().state_dict().items() if "mask_scores" not in k}
    masks_before = model.masks()
    trainer = _trainer(model, tmp_path)
    # No label_names, no remove_unused_columns=False: the Trainer reads both from the signature.
    assert trainer.label_names == ["labels"]
    trainer.train()
    metrics = trainer.evaluate()
    assert "eval_accuracy" in metrics and "eval_loss" in metrics

    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(train_logs) == 3
    assert all(0.0 <= e["mask_sparsity"] <= 1.0 and "mask_sparsity/block_2" in e for e in train_logs)
    assert train_logs[-1]["mask_sparsity"] == round(model.sparsity()["global"], 6)

    assert any(not torch.equal(a, b) for a, b in zip(masks_before.values(), model.masks().values(), strict=True))
    base_after = model.get_base_model().state_dict()
    for key, value in base_before.items():
        assert torch.equal(base_after[key], value), f"{key} changed"


def test_weight_decay_never_reaches_scores(tmp_path):
    results = []
    for decay in (0.0, 0.5):
        model = _masked()
        trainer = _trainer(model, tmp_path / str(decay), weight_decay=decay)
        trainer.train()
        assert all(g["weight_decay"] == 0.0 for g in trainer.optimizer.param_groups if g["params"])
        results.append(scores_of(model))
    for name, scores in results[0].items():
        assert torch.equal(scores, results[1][name]), name


def test_checkpoints_hold_no_base_weights_and_resume_is_exact(tmp_path):
    straight = _masked()
    _trainer(straight, tmp_path / "a", max_steps=6, save_strategy="steps", save_steps=3).train()

    checkpoint = tmp_path / "a" / "checkpoint-3"
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(
        k.endswith("mask_scores") or k.startswith("model.classifier.") or k == "hf_masking_record" for k in keys
    )
    assert not any("embeddings" in k for k in keys)
    base_bytes = sum(v.numel() * v.element_size() for v in straight.get_base_model().state_dict().values())
    assert os.path.getsize(checkpoint / "model.safetensors") < 0.5 * base_bytes

    resumed = _masked(head_seed=1)  # a different head init: the checkpoint must restore it
    trainer = _trainer(resumed, tmp_path / "b", max_steps=6, save_strategy="steps", save_steps=3)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    torch.testing.assert_close(
        resumed.get_base_model().classifier.weight, straight.get_base_model().classifier.weight, rtol=0, atol=0
    )
    final_straight, final_resumed = scores_of(straight), scores_of(resumed)
    for name in final_straight:
        assert torch.equal(final_straight[name], final_resumed[name]), name
    assert all(torch.equal(a, b) for a, b in zip(straight.masks().values(), resumed.masks().values(), strict=True))
    state = json.loads((tmp_path / "b" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
