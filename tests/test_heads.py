"""Heads that learn what a mask cannot: `MaskingConfig.head`, PEFT's `modules_to_save`, a head learning rate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import build_model, random_batch
from datasets import Dataset
from safetensors import safe_open
from trainer_utils import toy_dataset, training_args
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    Trainer,
)

from hf_masking import MaskedModel, MaskingCallback, MaskingConfig, masking_optimizer
from hf_masking.repo import encode_repo
from hf_masking.targets import head_kind


def _regression_dataset(n: int = 48, seed: int = 0) -> Dataset:
    """Targets on STS-B's 0-5 scale: a masked random projection cannot reach them, a trained head can."""
    data = toy_dataset(n, seed=seed)
    rng = np.random.default_rng(seed)
    return data.map(lambda row: {"label": float(3.0 + 2.0 * row["label"] - rng.random())})


def _train(model, output_dir, dataset, **overrides) -> Trainer:
    optimizer = overrides.pop("optimizer_cls_and_kwargs", None)
    trainer = Trainer(
        model=model,
        args=training_args(str(output_dir), **overrides),
        train_dataset=dataset,
        callbacks=[MaskingCallback()],
        optimizer_cls_and_kwargs=optimizer,
    )
    trainer.train()
    model.eval()
    return trainer


def _head_state(model: MaskedModel, prefix: str = "classifier") -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.get_base_model().named_parameters() if n.startswith(prefix + ".")}


def _reload_matches(model: MaskedModel, folder, base) -> MaskedModel:
    """Save, reload on a fresh copy of the base, and check the logits are identical."""
    model.save_pretrained(folder)
    reloaded = MaskedModel.from_pretrained(folder, base_model=base)
    batch = random_batch(seed=7)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)
    return reloaded


@pytest.mark.parametrize(
    "auto_cls, overrides, kind, mode",
    [
        (AutoModelForSequenceClassification, {"num_labels": 1}, "regression", "train"),
        (
            AutoModelForSequenceClassification,
            {"num_labels": 3, "problem_type": "multi_label_classification"},
            "multi_label_classification",
            "train",
        ),
        (AutoModelForSequenceClassification, {"num_labels": 3}, "sequence_classification", "mask"),
        (AutoModelForTokenClassification, {"num_labels": 5}, "token_classification", "train"),
        (AutoModelForMultipleChoice, {}, "multiple_choice", "mask"),
    ],
)
def test_auto_trains_heads_whose_output_scale_matters(auto_cls, overrides, kind, mode):
    model = MaskedModel(build_model(auto_cls, **overrides), MaskingConfig())
    assert head_kind(model.get_base_model()) == kind
    head_layers = [n for n in model.targets.modules if n.startswith("classifier")]
    head_trains = [n for n, p in model.named_parameters() if p.requires_grad and ".classifier." in n]
    if mode == "train":
        assert head_layers == [] and model.trained_modules == ["classifier"]
        assert sorted(head_trains) == ["model.classifier.bias", "model.classifier.weight"]
    else:  # the paper's: masked, never trained
        assert head_layers == ["classifier"] and model.trained_modules == []
        assert head_trains == ["model.classifier.mask_scores"]


def test_regression_head_trains_with_the_stock_trainer_and_reloads(tmp_path):
    base = build_model(AutoModelForSequenceClassification, num_labels=1)
    model = MaskedModel(base, MaskingConfig(initial_sparsity=0.1))
    before = _head_state(model)
    trainer = _train(model, tmp_path / "run", _regression_dataset())
    after = _head_state(model)
    assert all(not torch.equal(before[n], after[n]) for n in before), "the regression head did not train"
    assert trainer.model.get_base_model().config.problem_type == "regression"
    # Saved in the repo beside the mask; reloads to the same logits on a fresh base.
    reloaded = _reload_matches(model, tmp_path / "repo", build_model(AutoModelForSequenceClassification, num_labels=1))
    assert "classifier" not in json.loads((tmp_path / "repo" / "masking_config.json").read_text())["masked_modules"]
    assert torch.equal(_head_state(reloaded)["classifier.weight"], after["classifier.weight"])


def test_trained_head_learns_the_scale_a_masked_head_cannot(tmp_path):
    """Targets around 3-5: the trained head's predictions reach them, the masked head's stay near 0."""
    data = _regression_dataset()
    errors = {}
    for mode in ("mask", "train"):
        model = MaskedModel(build_model(AutoModelForSequenceClassification, num_labels=1), MaskingConfig(head=mode))
        _train(model, tmp_path / mode, data, max_steps=30, learning_rate=0.05)
        batch = {k: torch.tensor(data[k]) for k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            predictions = model(**batch).logits.squeeze(-1)
        errors[mode] = float(((predictions - torch.tensor(data["label"])) ** 2).mean())
    assert errors["train"] < 0.5 * errors["mask"], errors


def test_modules_to_save_trains_the_module_in_full_as_in_peft(tmp_path):
    base = build_model(AutoModelForSequenceClassification, num_labels=2)
    config = MaskingConfig(modules_to_save=["classifier", "bert.encoder.layer.3.output.dense"])
    model = MaskedModel(base, config)
    assert model.trained_modules == ["classifier", "bert.encoder.layer.3.output.dense"]
    assert "classifier" not in model.targets.modules  # trained instead of masked
    assert "bert.encoder.layer.3.output.dense" not in model.targets.modules
    assert "bert.encoder.layer.3.intermediate.dense" in model.targets.modules  # the rest of the block is masked
    layer = "bert.encoder.layer.3.output.dense"
    before = {**_head_state(model), **_head_state(model, layer)}
    _train(model, tmp_path / "run", toy_dataset())
    after = {**_head_state(model), **_head_state(model, layer)}
    assert set(before) == {"classifier.weight", "classifier.bias", f"{layer}.weight", f"{layer}.bias"}
    assert all(not torch.equal(before[n], after[n]) for n in before), "a listed module did not train"
    assert set(before) <= set(model.head_tensor_names())
    fresh = build_model(AutoModelForSequenceClassification, num_labels=2)
    reloaded = _reload_matches(model, tmp_path / "repo", fresh)
    with safe_open(str(tmp_path / "repo" / "mask.safetensors"), framework="pt") as handle:
        assert torch.equal(handle.get_tensor(f"head.{layer}.weight"), after[f"{layer}.weight"])
    # The trained module comes from the repo, not from the base it was loaded on.
    assert torch.equal(_head_state(reloaded, layer)[f"{layer}.weight"], after[f"{layer}.weight"])


def test_head_learning_rate_is_its_own_and_scores_keep_theirs(tmp_path):
    base = build_model(AutoModelForSequenceClassification, num_labels=1)
    model = MaskedModel(base, MaskingConfig())
    args = training_args(str(tmp_path), learning_rate=0.02, weight_decay=0.1)
    trainer = _train(
        model,
        tmp_path,
        _regression_dataset(),
        learning_rate=0.02,
        weight_decay=0.1,
        optimizer_cls_and_kwargs=masking_optimizer(args, head_learning_rate=1e-3),
    )
    score_ids = {id(m.mask_scores) for m in model.masked_modules().values()}
    groups = trainer.optimizer.param_groups
    by_kind = {}
    for group in groups:
        kinds = {"scores" if id(p) in score_ids else ("bias" if p.dim() < 2 else "weight") for p in group["params"]}
        assert len(kinds) == 1, "a group mixes scores and head tensors"
        by_kind[kinds.pop()] = (group["initial_lr"], group["weight_decay"])
    assert by_kind == {"scores": (0.02, 0.0), "weight": (1e-3, 0.1), "bias": (1e-3, 0.0)}
    assert isinstance(getattr(trainer.optimizer, "optimizer", trainer.optimizer), torch.optim.AdamW)  # --optim's


def test_masking_optimizer_refuses_a_bad_rate(tmp_path):
    with pytest.raises(ValueError, match="head_learning_rate=-1 is invalid"):
        masking_optimizer(training_args(str(tmp_path)), head_learning_rate=-1)


def test_callback_keeps_decay_off_scores_that_share_a_group_with_a_trained_head(tmp_path, caplog):
    model = MaskedModel(build_model(AutoModelForSequenceClassification, num_labels=1), MaskingConfig())
    with caplog.at_level("WARNING", logger="hf_masking.callback"):
        trainer = _train(model, tmp_path, _regression_dataset(), weight_decay=0.5)
    assert all(g["weight_decay"] == 0.0 for g in trainer.optimizer.param_groups if g["params"])
    assert "masking_optimizer" in caplog.text


def test_head_mask_keeps_the_papers_masked_regression_head():
    model = MaskedModel(build_model(AutoModelForSequenceClassification, num_labels=1), MaskingConfig(head="mask"))
    assert "classifier" in model.targets.modules and model.trained_modules == []


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match=r"MaskingConfig.head='masked' is invalid: expected one of \['auto'"):
        MaskingConfig(head="masked")
    base = build_model(AutoModelForSequenceClassification, num_labels=1)
    with pytest.raises(ValueError, match="extra_patterns: 'classifier' selects classifier, which is trained in full"):
        MaskedModel(base, MaskingConfig(extra_patterns=["classifier"]))
    gpt2 = build_model(AutoModelForCausalLM, "gpt2")  # lm_head tied to the input embeddings
    with pytest.raises(ValueError, match="'lm_head' shares lm_head.weight with another module"):
        MaskedModel(gpt2, MaskingConfig(modules_to_save=["lm_head"]))
    with pytest.raises(ValueError, match="'bert.embeddings.dropout' has no parameters to train"):
        MaskedModel(
            build_model(AutoModelForSequenceClassification), MaskingConfig(modules_to_save=["bert.embeddings.dropout"])
        )


def test_repos_from_before_heads_trained_load_with_their_masked_head(tmp_path):
    """A 0.3 repo has no `head` field: its regression head was masked, and reloads masked (not 'auto')."""
    model = MaskedModel(build_model(AutoModelForSequenceClassification, num_labels=1), MaskingConfig(head="mask"))
    stored = model.to_stored_mask()
    del stored.record["masking_config"]["head"]  # as 0.3 wrote it
    config_bytes, weights_bytes = encode_repo(stored)
    (tmp_path / "masking_config.json").write_bytes(config_bytes)
    (tmp_path / "mask.safetensors").write_bytes(weights_bytes)
    reloaded = MaskedModel.from_pretrained(
        tmp_path, base_model=build_model(AutoModelForSequenceClassification, num_labels=1)
    )
    assert reloaded.masking_config.head == "mask" and "classifier" in reloaded.targets.modules
    trainable = MaskedModel.from_pretrained(
        tmp_path, base_model=build_model(AutoModelForSequenceClassification, num_labels=1), is_trainable=True
    )
    assert trainable.trained_modules == []


# ----- the example scripts -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from script_utils import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def _stsb_file(path) -> str:
    from script_utils import sentiment_rows, write

    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    rows = sentiment_rows(40)
    write(
        path,
        header
        + "".join(
            f"{i}\tg\tf\t2012\t{i}\ts\ts\t{s}\tthe film\t{4.5 * y + 0.1 * (i % 5)}\n" for i, (s, y) in enumerate(rows)
        ),
    )
    return str(path)


def _glue(monkeypatch, model, out, *args) -> None:
    from script_utils import COMMON, run_script

    argv = ["--model_name_or_path", model, "--output_dir", str(out), *COMMON, "--do_train", "--do_eval", *args]
    run_script("run_glue_masking.py", argv, monkeypatch)


@pytest.mark.slow
def test_scripts_train_a_regression_head_by_default_and_at_its_own_rate(tmp_path, tiny_model, monkeypatch, caplog):
    from script_utils import read_json

    data = _stsb_file(tmp_path / "stsb.tsv")
    task = ["--task_name", "stsb", "--train_file", data, "--validation_file", data, "--max_steps", "3"]
    with caplog.at_level("INFO", logger="hf_masking.scripts"):
        _glue(monkeypatch, tiny_model, tmp_path / "default", *task, "--head_learning_rate", "1e-3")
    record = read_json(tmp_path / "default" / "masking_config.json")
    assert "classifier" not in record["masked_modules"] and record["masking_config"]["head"] == "auto"
    assert "Training the mask scores at 0.008, ['classifier'] at 0.001" in caplog.text

    # The paper's masked head on request; then a head rate is refused, since nothing trains at it.
    _glue(monkeypatch, tiny_model, tmp_path / "masked", *task, "--mask_head", "mask")
    assert "classifier" in read_json(tmp_path / "masked" / "masking_config.json")["masked_modules"]
    # The head's 32 weights + 1 bias train instead of its 32 scores.
    trained = read_json(tmp_path / "default" / "all_results.json")["train_trainable_params"]
    masked = read_json(tmp_path / "masked" / "all_results.json")["train_trainable_params"]
    assert trained == masked - 32 + 33
    with pytest.raises(ValueError, match="--head_learning_rate: nothing trains in full here"):
        _glue(monkeypatch, tiny_model, tmp_path / "bad", *task, "--mask_head", "mask", "--head_learning_rate", "1e-3")
    with pytest.raises(ValueError, match="--head_learning_rate sets a rate of masking's own parts"):
        _glue(monkeypatch, tiny_model, tmp_path / "bad2", *task, "--no_masking", "--head_learning_rate", "1e-3")


@pytest.mark.slow
def test_scripts_mask_modules_to_save_trains_and_saves_the_classifier(tmp_path, tiny_model, monkeypatch):
    from script_utils import read_json, sentiment_rows, write

    rows = sentiment_rows(40)
    write(tmp_path / "sst2.tsv", "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    data = str(tmp_path / "sst2.tsv")
    task = ["--task_name", "sst2", "--train_file", data, "--validation_file", data, "--max_steps", "3"]
    _glue(monkeypatch, tiny_model, tmp_path / "out", *task, "--mask_modules_to_save", "classifier")
    record = read_json(tmp_path / "out" / "masking_config.json")
    assert "classifier" not in record["masked_modules"]
    assert record["masking_config"]["modules_to_save"] == ["classifier"]
    assert read_json(tmp_path / "out" / "all_results.json")["train_trainable_params"] > 0
    # The saved head is the trained one: evaluating the repo again gives the same metrics.
    _glue_eval = ["--model_name_or_path", tiny_model, "--output_dir", str(tmp_path / "again"), "--do_eval"]
    from script_utils import COMMON, run_script

    run_script(
        "run_glue_masking.py",
        [*_glue_eval, *COMMON, "--task_name", "sst2", "--validation_file", data, "--mask_from", str(tmp_path / "out")],
        monkeypatch,
    )
    first = read_json(tmp_path / "out" / "eval_results.json")
    again = read_json(tmp_path / "again" / "eval_results.json")
    assert first["eval_accuracy"] == again["eval_accuracy"] and first["eval_loss"] == pytest.approx(again["eval_loss"])
