"""One list of cases over architectures x heads, each run through the same checks (as PEFT's
test_custom_models.py runs its TEST_CASES): masked forward and `disable_masks`, a stock-Trainer step,
save -> from_pretrained with identical logits, `merge`, and a mixed-mask batch equal to each mask alone.

Feature tests elsewhere check what this matrix does not (repo safety, the scripts, decoders' generate…).
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from datasets import Dataset
from test_decoders import FAMILIES
from trainer_utils import training_args
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    Trainer,
)

from hf_masking import MaskedModel, MaskingCallback, MaskingConfig

HEADS = {
    "seq-cls": AutoModelForSequenceClassification,
    "token-cls": AutoModelForTokenClassification,
    "multiple-choice": AutoModelForMultipleChoice,
    "causal-lm": AutoModelForCausalLM,
    "regression": AutoModelForSequenceClassification,  # one label: the head trains (head="auto")
}
# (architecture, head) pairs the architecture has in transformers.
TEST_CASES = [
    *[
        (arch, head)
        for arch in ("bert", "roberta", "distilbert")
        for head in ("seq-cls", "token-cls", "multiple-choice")
    ],
    *[(arch, "regression") for arch in ("bert", "llama")],
    *[(arch, head) for arch in ("gpt2", "llama") for head in ("seq-cls", "token-cls", "causal-lm")],
    *[(arch, head) for arch in ("mistral", "qwen2") for head in ("seq-cls", "causal-lm")],
    *[(arch, "causal-lm") for arch in ("gemma", "phi", "opt")],
]
IDS = [f"{arch}-{head}" for arch, head in TEST_CASES]
BATCH, LENGTH, CHOICES = 4, 8, 3


def _config(arch: str, head: str):
    config = tiny_config(arch) if arch in ("bert", "roberta", "distilbert", "gpt2", "llama") else FAMILIES[arch]()
    config.pad_token_id = 0 if arch != "roberta" else 1
    config.num_labels = 1 if head == "regression" else 3
    return config


def _model(arch: str, head: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return HEADS[head].from_config(_config(arch, head)).eval()


def _inputs(head: str, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (BATCH, CHOICES, LENGTH) if head == "multiple-choice" else (BATCH, LENGTH)
    return {"input_ids": torch.randint(3, 120, shape, generator=generator), "attention_mask": torch.ones(shape).long()}


def _labels(head: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    ids = inputs["input_ids"]
    if head == "causal-lm":
        return ids.clone()
    if head == "token-cls":
        return ids % 3
    if head == "regression":
        return (ids[:, 0] % 5).float()
    return ids[:, 0, 0] % CHOICES if head == "multiple-choice" else ids[:, 0] % 3


def _masked(arch: str, head: str) -> MaskedModel:
    return MaskedModel(_model(arch, head), MaskingConfig(initial_sparsity=0.1))


def _moved(model: MaskedModel, seed: int, heads: bool = True) -> MaskedModel:
    """Another mask (and head values) on the same base, as a differently trained task would have."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.masked_modules().values():
            scores = layer.mask_scores
            scores.add_(0.05 * torch.randn(scores.shape, generator=generator).to(scores.dtype))
        for name, tensor in model.get_base_model().named_parameters():
            if heads and name in model.head_tensor_names():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("arch, head", TEST_CASES, ids=IDS)
def test_forward_masks_and_disable_masks_gives_the_base(arch, head):
    base = _model(arch, head)
    model = _moved(_masked(arch, head), seed=1, heads=False)  # disable_masks keeps the head: keep the base's
    inputs = _inputs(head)
    expected = _logits(base, inputs)
    masked = _logits(model, inputs)
    assert masked.shape == expected.shape and not torch.allclose(masked, expected)
    with model.disable_masks():
        torch.testing.assert_close(_logits(model, inputs), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch, head", TEST_CASES, ids=IDS)
def test_a_trainer_step_moves_the_mask_and_nothing_of_the_base(arch, head, tmp_path):
    model = _masked(arch, head)
    base_before = {n: t.clone() for n, t in model.get_base_model().named_parameters() if not t.requires_grad}
    masks_before = model.masks()
    rows = []
    for seed in range(2):
        inputs = _inputs(head, seed)
        labels = _labels(head, inputs)
        for i in range(BATCH):
            rows.append({"input_ids": inputs["input_ids"][i].tolist(), "labels": labels[i].tolist()})
    trainer = Trainer(
        model=model,
        args=training_args(str(tmp_path), max_steps=2, learning_rate=0.2),
        train_dataset=Dataset.from_list(rows),
        callbacks=[MaskingCallback()],
    )
    trainer.train()
    assert any(not torch.equal(masks_before[n], m) for n, m in model.masks().items())
    after = dict(model.get_base_model().named_parameters())
    assert all(torch.equal(after[n], t) for n, t in base_before.items())


@pytest.mark.parametrize("arch, head", TEST_CASES, ids=IDS)
def test_save_and_from_pretrained_give_identical_logits(arch, head, tmp_path):
    model = _moved(_masked(arch, head), seed=1)
    model.save_pretrained(tmp_path / "mask")
    loaded = MaskedModel.from_pretrained(tmp_path / "mask", base_model=_model(arch, head))
    inputs = _inputs(head)
    assert torch.equal(_logits(loaded, inputs), _logits(model, inputs))


@pytest.mark.parametrize("arch, head", TEST_CASES, ids=IDS)
def test_merge_gives_a_plain_model_with_the_same_logits(arch, head):
    model = _moved(_masked(arch, head), seed=1)
    merged = model.merge()
    assert type(merged) is type(model.get_base_model())
    inputs = _inputs(head)
    torch.testing.assert_close(_logits(merged, inputs), _logits(model, inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch, head", TEST_CASES, ids=IDS)
def test_a_mixed_batch_equals_each_mask_alone(arch, head, tmp_path):
    for seed in (1, 2):
        _moved(_masked(arch, head), seed).save_pretrained(tmp_path / f"mask{seed}")
    served = MaskedModel(_model(arch, head), MaskingConfig(initial_sparsity=0.1), trainable=False).eval()
    for seed in (1, 2):
        served.load_mask(str(tmp_path / f"mask{seed}"), f"m{seed}")
    inputs = _inputs(head)
    names = ["m1", "m2", None, "m2"]
    mixed = served(**inputs, mask_names=names).logits
    for row, name in enumerate(names):  # None: the base unmasked, with the served model's own head
        alone = (
            MaskedModel.from_pretrained(tmp_path / f"mask{name[-1]}", base_model=_model(arch, head)) if name else None
        )
        expected = _logits(alone if alone is not None else _model(arch, head), inputs)
        torch.testing.assert_close(mixed[row], expected[row], rtol=1e-5, atol=1e-5)
