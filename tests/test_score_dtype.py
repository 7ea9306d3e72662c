"""`MaskingConfig.score_dtype`: bfloat16 scores halve the trainable state and still give the binary mask."""

import pytest
import torch
from conftest import build_model, load_quietly, random_batch
from trainer_utils import trainer_for
from transformers import AutoModelForSequenceClassification

from hf_masking import MaskedModel, MaskingConfig
from hf_masking.binarizer import init_scores, scores_for_mask


def _bf16_model():
    base = build_model(AutoModelForSequenceClassification, "bert")
    return MaskedModel(base, MaskingConfig(score_dtype="bfloat16", initial_sparsity=0.1))


def test_config_refuses_other_score_dtypes():
    for value in ("float16", "fp32", 32, None):
        with pytest.raises(ValueError, match="score_dtype"):
            MaskingConfig(score_dtype=value)


def test_bf16_scores_stay_bf16_through_casts_and_keep_the_fp32_runs_initial_mask_nearly():
    model = _bf16_model()
    model.to(torch.float16)
    scores = [m.mask_scores for m in model.masked_modules().values()]
    assert scores and all(s.dtype == torch.bfloat16 for s in scores)
    fp32 = MaskedModel(build_model(AutoModelForSequenceClassification, "bert"), MaskingConfig(initial_sparsity=0.1))
    a, b = model.masks(), fp32.masks()
    differing = sum(int((a[n] != b[n]).sum()) for n in a)
    total = sum(m.numel() for m in a.values())
    # Only scores within bf16's rounding of the threshold can change side: a tiny fraction.
    assert differing / total < 0.01
    assert abs(model.sparsity()["global"] - 0.1) < 0.01


def test_bf16_scores_train_with_the_trainer_and_the_saved_mask_reloads_exactly(tiny_bert_dir, tmp_path):
    base = load_quietly(AutoModelForSequenceClassification, tiny_bert_dir)
    model = MaskedModel(base, MaskingConfig(score_dtype="bfloat16", initial_sparsity=0.1))
    before = model.masks()
    trainer_for(model, tmp_path / "run", max_steps=4).train()
    assert all(m.mask_scores.dtype == torch.bfloat16 for m in model.masked_modules().values())
    after = model.masks()
    assert any(not torch.equal(before[n], after[n]) for n in after)
    model.eval()
    batch = random_batch()
    logits = model(**batch).logits
    model.save_pretrained(tmp_path / "mask")
    loaded = MaskedModel.from_pretrained(tmp_path / "mask")
    assert loaded.masking_config.score_dtype == "bfloat16"
    assert torch.equal(loaded(**batch).logits, logits)
    again = MaskedModel.from_pretrained(tmp_path / "mask", is_trainable=True)
    assert all(m.mask_scores.dtype == torch.bfloat16 for m in again.masked_modules().values())
    assert all(torch.equal(again.masks()[n], after[n]) for n in after)  # training resumes from the saved mask


def test_scores_for_mask_lands_each_bf16_score_on_the_right_side_of_the_threshold():
    config = MaskingConfig(score_dtype="bfloat16")
    initial = init_scores(torch.Size([64, 64]), "layer", config)
    assert initial.dtype == torch.bfloat16
    target = torch.rand(64, 64, generator=torch.Generator().manual_seed(1)) < 0.7
    scores = scores_for_mask(initial, target, config)
    assert scores.dtype == torch.bfloat16
    assert torch.equal(scores >= config.threshold, target)
