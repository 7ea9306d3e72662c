import os

import pytest
import torch
from conftest import build_model, random_batch, train_a_little
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from hf_masking import MaskedLinear, MaskedModel, MaskingConfig

BERT_BLOCK = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
]
DISTIL_BLOCK = ["attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"]
PAPER_DEFAULTS = {
    # (model type, blocks in a base model) -> (block list, block modules, masked range, extra per head kind)
    "bert": (
        "bert.encoder.layer",
        BERT_BLOCK,
        12,
        {"seq": ["bert.pooler.dense", "classifier"], "tok": ["classifier"], "mc": ["bert.pooler.dense", "classifier"]},
    ),
    "roberta": (
        "roberta.encoder.layer",
        BERT_BLOCK,
        12,
        {
            "seq": ["classifier.dense", "classifier.out_proj"],
            "tok": ["classifier"],
            "mc": ["roberta.pooler.dense", "classifier"],
        },
    ),
    "distilbert": (
        "distilbert.transformer.layer",
        DISTIL_BLOCK,
        6,
        {"seq": ["distilbert_pre", "classifier"], "tok": ["classifier"], "mc": ["distilbert_pre", "classifier"]},
    ),
}
HEADS = {
    "seq": AutoModelForSequenceClassification,
    "tok": AutoModelForTokenClassification,
    "mc": AutoModelForMultipleChoice,
}


@pytest.mark.parametrize("head", ["seq", "tok", "mc"])
@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_default_targets_are_exactly_the_papers(model_type, head):
    prefix, block, n_blocks, heads = PAPER_DEFAULTS[model_type]
    layers_key = "n_layers" if model_type == "distilbert" else "num_hidden_layers"
    # The paper masks every head; head="auto" trains a tagging head instead (tests/test_heads.py).
    model = MaskedModel(build_model(HEADS[head], model_type, **{layers_key: n_blocks}), MaskingConfig(head="mask"))
    expected = [f"{prefix}.{i}.{name}" for i in range(2, n_blocks) for name in block]
    expected += [("pre_classifier" if m == "distilbert_pre" else m) for m in heads[head]]
    assert model.targets.modules == expected
    masked = [n for n, m in model.model.named_modules() if isinstance(m, MaskedLinear)]
    assert masked == expected
    # Embeddings, biases and LayerNorm never train; only scores do.
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".mask_scores") for n in trainable)


def test_block_range_is_configurable_and_checked():
    base = build_model(AutoModelForSequenceClassification, "bert")
    model = MaskedModel(
        base,
        MaskingConfig(layers=[0], mask_pooler=False, mask_classifier=False, target_modules=["attention.self.query"]),
    )
    assert model.targets.modules == ["bert.encoder.layer.0.attention.self.query"]


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        ({"layers": [1, 4]}, ["MaskingConfig.layers", "[1, 4]", "4 blocks (0-3)"]),
        (
            {"target_modules": ["attention.self.qeury"]},
            ["MaskingConfig.target_modules", "'attention.self.qeury'", "attention.self.query"],
        ),
        (
            {"extra_patterns": ["bert.encoder.layer.9.*"]},
            ["MaskingConfig.extra_patterns", "'bert.encoder.layer.9.*'", "bert.encoder.layer.0.attention.self.query"],
        ),
    ],
)
def test_bad_targets_get_a_clear_error_listing_what_exists(kwargs, fragments):
    base = build_model(AutoModelForSequenceClassification, "bert")
    with pytest.raises(ValueError) as err:
        MaskedModel(base, MaskingConfig(**kwargs))
    for fragment in fragments:
        assert fragment in str(err.value)


def test_gpt2_conv1d_and_llama_by_default_and_by_pattern():
    gpt2 = MaskedModel(
        build_model(AutoModelForSequenceClassification, "gpt2"),
        MaskingConfig(extra_patterns=[r"transformer\.h\.0\.attn\.c_attn"]),
    )
    assert "transformer.h.0.attn.c_attn" in gpt2.targets.modules
    assert "transformer.h.3.mlp.c_proj" in gpt2.targets.modules and "score" in gpt2.targets.modules
    assert "transformer.h.1.mlp.c_fc" not in gpt2.targets.modules
    batch = random_batch()
    out = gpt2(**batch, labels=torch.tensor([0, 1, 0, 1]))
    out.loss.backward()
    assert gpt2.model.transformer.h[0].attn.c_attn.mask_scores.grad.abs().sum() > 0

    llama = MaskedModel(build_model(AutoModelForCausalLM, "llama"), MaskingConfig(mask_classifier=False))
    assert llama.targets.modules[:7] == [
        f"model.layers.2.{n}"
        for n in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    ]
    assert llama.accepts_loss_kwargs  # a causal LM sums its loss over num_items_in_batch
    loss = llama(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert llama.model.model.layers[3].mlp.down_proj.mask_scores.grad is not None


def test_initial_sparsity_is_p_on_a_million_weights_and_seed_reproducible():
    kwargs = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=12, num_attention_heads=2)
    for p in (0.05, 0.2):
        model = MaskedModel(
            build_model(AutoModelForSequenceClassification, "bert", **kwargs), MaskingConfig(initial_sparsity=p)
        )
        report = model.sparsity()
        assert report["masked_weights"] >= 1_000_000
        assert abs(report["global"] - p) < 0.002, report["global"]
    again = MaskedModel(
        build_model(AutoModelForSequenceClassification, "bert", **kwargs), MaskingConfig(initial_sparsity=0.2)
    )
    assert all(torch.equal(a, b) for a, b in zip(model.masks().values(), again.masks().values(), strict=True))
    other_seed = MaskedModel(
        build_model(AutoModelForSequenceClassification, "bert", **kwargs), MaskingConfig(initial_sparsity=0.2, seed=1)
    )
    assert not torch.equal(next(iter(model.masks().values())), next(iter(other_seed.masks().values())))


def test_mask_changes_outputs_and_training_leaves_base_bit_identical():
    base = build_model(AutoModelForSequenceClassification, "bert")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    unmasked_logits = base(**random_batch()).logits
    model = MaskedModel(base, MaskingConfig(initial_sparsity=0.3))
    assert not torch.allclose(model(**random_batch()).logits, unmasked_logits)

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.0)
    initial_masks = model.masks()
    for step in range(5):
        loss = model(**random_batch(seed=step), labels=torch.tensor([0, 1, 1, 0])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert any(not torch.equal(a, b) for a, b in zip(initial_masks.values(), model.masks().values(), strict=True))
    after = model.get_base_model().state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_wrapping_twice_is_an_error():
    model = MaskedModel(build_model(AutoModelForSequenceClassification, "bert"))
    with pytest.raises(ValueError, match="already masked"):
        MaskedModel(model)
    with pytest.raises(ValueError, match="already masked"):
        MaskedModel(model.get_base_model())


def test_passthrough_sparsity_report_and_state_dict():
    model = MaskedModel(build_model(AutoModelForSequenceClassification, "bert"))
    assert model.config.num_labels == 2 and type(model).__name__ == "MaskedBertForSequenceClassification"
    report = model.sparsity()
    assert set(report["blocks"]) == {2, 3}
    assert set(report["modules"]) == set(model.targets.modules)
    keys = set(model.state_dict())
    assert all(k.endswith("mask_scores") or k.startswith("model.classifier.") or k == "hf_masking_record" for k in keys)
    assert "model.classifier.weight" in keys and "model.bert.embeddings.word_embeddings.weight" not in keys
    trainable, total = model.num_trainable_parameters()
    assert trainable == sum(m.weight.numel() for m in model.masked_modules().values())


def test_merge_gives_a_plain_model_with_identical_outputs():
    model = MaskedModel(build_model(AutoModelForSequenceClassification, "bert"), MaskingConfig(initial_sparsity=0.3))
    merged = model.merge()
    assert type(merged).__name__ == "BertForSequenceClassification"
    assert not any(isinstance(m, MaskedLinear) for m in merged.modules())
    batch = random_batch()
    torch.testing.assert_close(merged(**batch).logits, model(**batch).logits, rtol=0, atol=1e-6)
    # The masked model still works after merging.
    assert any(isinstance(m, MaskedLinear) for m in model.modules())


def test_unload_restores_the_original_model():
    base = build_model(AutoModelForSequenceClassification, "bert")
    expected = base(**random_batch()).logits
    model = MaskedModel(base, MaskingConfig(initial_sparsity=0.3))
    plain = model.unload()
    assert plain is base and not any(isinstance(m, MaskedLinear) for m in plain.modules())
    assert torch.equal(plain(**random_batch()).logits, expected)
    MaskedModel(plain)  # and it can be wrapped again


def test_merge_shares_nothing_writable_in_either_direction():
    model = train_a_little(MaskedModel(build_model(AutoModelForSequenceClassification)))
    model.eval()
    batch = random_batch()
    before = model(**batch).logits.detach().clone()
    merged = model.merge()
    merged_before = merged(**batch).logits.detach().clone()
    torch.testing.assert_close(merged_before, before, rtol=0, atol=1e-6)
    owned = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert not owned & {t.data_ptr() for t in [*merged.parameters(), *merged.buffers()]}
    optimizer = torch.optim.SGD(merged.parameters(), lr=1.0)  # train the merged model hard
    merged.train()
    merged(**batch, labels=torch.zeros(len(batch["input_ids"]), dtype=torch.long)).loss.backward()
    optimizer.step()
    assert torch.equal(model(**batch).logits, before)  # the masked model and its base are untouched
    with torch.no_grad():
        for module in model.masked_modules().values():
            module.mask_scores.mul_(-1)  # and changing the mask changes nothing in the merged model
        merged.eval()
    assert not torch.equal(merged(**batch).logits, merged_before)  # (it did train)


@pytest.mark.parametrize("method", ["merge_and_unload", "unload"])
def test_merge_and_unload_and_unload_consume_the_wrapper(method):
    model = MaskedModel(build_model(AutoModelForSequenceClassification))
    plain = getattr(model, method)()
    assert not any(isinstance(m, MaskedLinear) for m in plain.modules())
    uses = [
        lambda: model(**random_batch()),
        model.sparsity,
        lambda: model.save_pretrained("unused"),
        model.merge,
        lambda: model.set_active_mask("default"),
    ]
    for use in uses:
        with pytest.raises(RuntimeError, match=rf"consumed by {method}\(\).*from_pretrained"):
            use()


def test_unclear_uses_name_the_argument_and_the_problem(tmp_path):
    with pytest.raises(TypeError, match="wraps a loaded model .*not str 'bert'"):
        MaskedModel("bert")
    frozen = MaskedModel(build_model(AutoModelForSequenceClassification), trainable=False)
    with pytest.raises(ValueError, match="trainable=False and has no loaded mask"):
        frozen.save_pretrained(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists() or not os.listdir(tmp_path / "nothing")
    with pytest.raises(TypeError, match="a list of mask names"):
        MaskedModel(build_model(AutoModelForSequenceClassification)).group_mask_names("m1")
