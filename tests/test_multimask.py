import pytest
import torch
from conftest import load_quietly, random_batch, save_pretrained_base, train_a_little
from transformers import AutoModelForSequenceClassification

from hf_masking import MaskedModel, MaskEnsemble, MaskingConfig


@pytest.fixture()
def three_masks(tmp_path):
    """Three masks trained on one base (different seeds and data), saved as repos."""
    base_dir = save_pretrained_base(tmp_path / "base")
    logits = {}
    for seed in range(3):
        base = load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3)
        torch.manual_seed(seed)
        base.classifier.reset_parameters()  # each task has its own random head
        model = train_a_little(MaskedModel(base, MaskingConfig(initial_sparsity=0.1, seed=seed)), seed=seed)
        model.save_pretrained(tmp_path / f"task{seed}")
        logits[f"task{seed}"] = model(**random_batch()).logits
    return tmp_path, base_dir, logits


def test_switching_masks_on_one_resident_base(three_masks):
    root, _, expected = three_masks
    model = MaskedModel.from_pretrained(root / "task0")
    base_weight = model.get_base_model().bert.encoder.layer[2].attention.self.query.weight
    for name in ("task1", "task2"):
        model.load_mask(root / name, name)
    assert model.mask_names == ["default", "task1", "task2"] and model.active_mask == "default"
    for name in ("task2", "task1", "default", "task2"):
        model.set_active_mask(name)
        assert model.active_mask == name
        want = expected["task0" if name == "default" else name]
        assert torch.equal(model(**random_batch()).logits, want), name
    assert model.get_base_model().bert.encoder.layer[2].attention.self.query.weight is base_weight
    assert model.sparsity("task1")["global"] != model.sparsity("task2")["global"]

    with pytest.raises(ValueError, match="is active"):
        model.delete_mask("task2")
    model.delete_mask("task1")
    assert model.mask_names == ["default", "task2"]
    with pytest.raises(KeyError, match="'task1'.*\\['default', 'task2'\\]"):
        model.set_active_mask("task1")
    with pytest.raises(ValueError, match="already loaded"):
        model.load_mask(root / "task2", "task2")


def test_trainable_model_keeps_its_own_mask_and_head_across_switches(three_masks):
    root, base_dir, expected = three_masks
    base = load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3)
    model = train_a_little(MaskedModel(base, MaskingConfig(initial_sparsity=0.1, seed=5)), seed=5)
    own = model(**random_batch()).logits
    model.load_mask(root / "task1", "task1")
    assert model.mask_labels() == model.mask_labels("task1") == ["LABEL_0", "LABEL_1", "LABEL_2"]
    model.set_active_mask("task1")
    assert torch.equal(model(**random_batch()).logits, expected["task1"])
    model.set_active_mask("default")
    assert torch.equal(model(**random_batch()).logits, own)
    model.save_pretrained(root / "saved-task1", mask_name="task1")
    assert torch.equal(MaskedModel.from_pretrained(root / "saved-task1")(**random_batch()).logits, expected["task1"])


def test_a_mask_for_another_label_set_brings_its_own_head(three_masks, tmp_path):
    root, base_dir, expected = three_masks
    binary = MaskedModel(load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=2))
    own = binary.eval()(**random_batch()).logits
    binary.load_mask(root / "task0", "three-way")
    binary.set_active_mask("three-way")
    assert torch.equal(binary(**random_batch()).logits, expected["task0"])
    assert binary.config.num_labels == 3
    binary.set_active_mask("default")
    assert torch.equal(binary(**random_batch()).logits, own) and binary.config.num_labels == 2
    with pytest.raises(ValueError, match="needs masks of one label set and head"):
        MaskEnsemble(binary, ["default", "three-way"])


@pytest.mark.parametrize("combine", ["logits", "probs", "labels"])
def test_ensemble_combines_member_predictions(three_masks, combine):
    root, _, expected = three_masks
    model = MaskedModel.from_pretrained(root / "task0")
    model.load_mask(root / "task1", "task1")
    model.load_mask(root / "task2", "task2")
    ensemble = MaskEnsemble(model, ["default", "task1", "task2"], combine=combine)
    out = ensemble(**random_batch()).logits
    members = torch.stack([expected["task0"], expected["task1"], expected["task2"]])
    if combine == "logits":
        torch.testing.assert_close(out, members.mean(0))
    elif combine == "probs":
        torch.testing.assert_close(out, members.softmax(-1).mean(0))
        torch.testing.assert_close(out.sum(-1), torch.ones(out.shape[0]))
    else:
        votes = torch.nn.functional.one_hot(members.argmax(-1), 3).sum(0)
        assert torch.equal(out.floor().long(), votes)
        assert torch.equal(out.argmax(-1), torch.where(votes.max(-1).values > 1, votes.argmax(-1), out.argmax(-1)))
    assert model.active_mask == "default"  # the ensemble leaves the model as it found it
    with pytest.raises(KeyError, match="nope"):
        MaskEnsemble(model, ["default", "nope"])
