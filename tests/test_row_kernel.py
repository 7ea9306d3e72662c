"""The compiled kernel for mixed batches: every mask's correction in one call equals each mask's own product."""

import copy
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from hf_masking import row_kernel
from hf_masking.fixed_mask import DecodedMask

needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler: the kernel cannot be built here"
)


def _reference(x: torch.Tensor, weight: torch.Tensor, transposed: bool, groups) -> torch.Tensor:
    """x (W ⊙ M_g)ᵀ for each group's rows, in float64: what each mask computes alone."""
    w = (weight.t() if transposed else weight).double()
    out = torch.empty(x.shape[0], w.shape[0], dtype=torch.float64)
    for (start, end), kept in groups:
        kept = kept.t() if transposed else kept
        out[start:end] = x[start:end].double() @ (w * kept).t()
    return out


@needs_compiler
@pytest.mark.parametrize("transposed", [False, True], ids=["linear", "conv1d"])
def test_one_call_equals_each_mask_alone(transposed):
    """Groups of 0, 1, 15, 16, 17, 33 and 40 rows (the kernel's block edges), masks from 3% to 60% masked out."""
    assert row_kernel.available(), "a C++ compiler is here, so the kernel must build"
    torch.manual_seed(0)
    out_features, in_features = 48, 40
    weight = torch.randn(in_features, out_features) if transposed else torch.randn(out_features, in_features)
    sizes, shares = [0, 1, 15, 16, 17, 33, 40], [0.03, 0.1, 0.3, 0.6, 0.08, 0.2, 0.05]
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + size)
    x = torch.randn(starts[-1], in_features)
    kept = [torch.rand(weight.shape) >= share for share in shares]
    y = torch.nn.functional.linear(x, weight.t() if transposed else weight)
    positions = [_masked_out_rows(k, weight.shape, transposed) for k in kept]
    expected = _reference(x, weight, transposed, [((starts[i], starts[i + 1]), kept[i]) for i in range(len(sizes))])
    values = [_values(weight, transposed, flat) for _, flat in positions]
    assert row_kernel.subtract_corrections(y, x, starts, positions, values)
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=0)


def _values(weight: torch.Tensor, transposed: bool, flat: torch.Tensor) -> torch.Tensor:
    """The weights at positions o * in + i of the [out, in] orientation."""
    out_features = weight.shape[1] if transposed else weight.shape[0]
    in_features = weight.numel() // out_features
    wide = flat.long()
    if transposed:
        return weight.reshape(-1)[(wide % in_features) * out_features + wide // in_features].contiguous()
    return weight.reshape(-1)[wide].contiguous()


def _masked_out_rows(kept: torch.Tensor, shape, transposed: bool):
    flat = torch.nonzero(~kept.reshape(-1)).view(-1).to(torch.int32)
    return DecodedMask(flat, 0, kept.numel()).row_positions(shape, transposed)


def _serving_model(kernel: str):
    """A serving MaskedModel (tiny BERT) with three loaded random masks, 20% masked out."""
    from transformers import BertConfig, BertForSequenceClassification

    from hf_masking import MaskedModel, MaskingConfig
    from hf_masking.binarizer import init_scores

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=2
    )
    base = BertForSequenceClassification(config)
    trainer = MaskedModel(copy.deepcopy(base), MaskingConfig(initial_sparsity=0.2))
    serving = None
    for seed in range(3):
        with torch.no_grad():
            for name, layer in trainer.masked_modules().items():
                layer.mask_scores.copy_(init_scores(layer.weight.shape, name, MaskingConfig(seed=seed)))
        stored = trainer.to_stored_mask()
        if serving is None:
            serving = MaskedModel(
                copy.deepcopy(base),
                stored.config,
                trainable=False,
                masked_modules=stored.record["masked_modules"],
            )
        serving.load_mask(stored, f"m{seed}")
    serving.fixed_masks.kernel = kernel
    return serving.eval()


@needs_compiler
def test_a_mixed_forward_takes_one_kernel_call_per_layer_and_equals_the_torch_path(monkeypatch):
    model = _serving_model("sparse")
    ids = torch.randint(5, 99, (6, 7))
    names = ["m0", "m1", "m2", "m2", "m0", None]
    calls = []
    subtract = row_kernel.subtract_corrections

    def counted(*args):
        calls.append(len(args[3]))  # the groups in this call
        return subtract(*args)

    monkeypatch.setattr(row_kernel, "subtract_corrections", counted)
    with torch.no_grad():
        fast = model(input_ids=ids, mask_names=names).logits
        layers = len(model.masked_modules())
        assert len(calls) >= layers - 1 and set(calls) == {3}  # every backbone layer: one call for 3 masks
        monkeypatch.setenv(row_kernel.ENV_SWITCH, "0")
        calls.clear()
        slow = model(input_ids=ids, mask_names=names).logits
    assert calls == []
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_row_positions_refuse_positions_that_do_not_fit_the_weight():
    with pytest.raises(ValueError, match="cannot index a weight of shape"):
        DecodedMask(torch.tensor([1, 5], dtype=torch.int32), 0, 12).row_positions(torch.Size([4, 4]), False)
    with pytest.raises(ValueError, match="increasing and within the weight"):
        DecodedMask(torch.tensor([5, 1], dtype=torch.int32), 0, 16).row_positions(torch.Size([4, 4]), False)
    with pytest.raises(ValueError, match="increasing and within the weight"):
        DecodedMask(torch.tensor([3, 16], dtype=torch.int32), 0, 16).row_positions(torch.Size([4, 4]), False)


@needs_compiler
def test_the_kernel_refuses_inconsistent_inputs():
    weight = torch.randn(8, 6)
    x, y = torch.randn(5, 6), torch.zeros(5, 8)
    decoded = DecodedMask.from_bool(torch.rand(8, 6) >= 0.2)
    rows, values = [decoded.row_positions(weight.shape, False)], [decoded.row_values(weight, False)]
    with pytest.raises(RuntimeError, match="starts out of range"):
        row_kernel.subtract_corrections(y, x, [0, 6], rows, values)
    with pytest.raises(RuntimeError, match="out \\+ 1 entries"):
        row_kernel.subtract_corrections(torch.zeros(5, 6), x, [0, 5], rows, values)
    with pytest.raises(RuntimeError, match="float32"):
        row_kernel.subtract_corrections(y.double(), x.double(), [0, 5], rows, values)
    with pytest.raises(RuntimeError, match="one per position"):
        row_kernel.subtract_corrections(y, x, [0, 5], rows, [values[0][:-1].contiguous()])
    pointers, positions = rows[0]
    with pytest.raises(RuntimeError, match="row pointers"):
        row_kernel.subtract_corrections(y, x, [0, 5], [(pointers.flip(0).contiguous(), positions)], values)
    assert torch.equal(y, torch.zeros(5, 8))  # nothing was written by a refused call


def test_the_switch_turns_the_kernel_off(monkeypatch):
    monkeypatch.setenv(row_kernel.ENV_SWITCH, "0")
    assert not row_kernel.supports(torch.zeros(2, 2), torch.zeros(2, 2))
    monkeypatch.setenv(row_kernel.ENV_SWITCH, "1")
    assert row_kernel.supports(torch.zeros(2, 2), torch.zeros(2, 2))
    assert not row_kernel.supports(torch.zeros(2, 2, dtype=torch.bfloat16), torch.zeros(2, 2, dtype=torch.bfloat16))


@pytest.mark.slow
def test_without_a_compiler_mixed_batches_still_compute_and_say_why_once(tmp_path):
    """A machine with no compiler: one RuntimeWarning naming the reason, and rows equal to each mask alone."""
    script = textwrap.dedent(
        """
        import sys
        import warnings
        import torch
        sys.path.insert(0, sys.argv[1])
        from test_row_kernel import _serving_model

        serving = _serving_model("sparse")
        ids = torch.randint(5, 99, (6, 7))
        names = ["m0", "m1", "m2", "m2", "m0", "m1"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.no_grad():
                mixed = serving(input_ids=ids, mask_names=names).logits
                serving(input_ids=ids, mask_names=names)
        said = [str(w.message) for w in caught if "mixed-batch kernel" in str(w.message)]
        assert len(said) == 1, said
        assert "could not build" in said[0] and "HF_MASKING_ROW_KERNEL=0" in said[0], said[0]
        for i, name in enumerate(names):
            serving.set_active_mask(name)
            with torch.no_grad():
                alone = serving(input_ids=ids[i : i + 1]).logits
            torch.testing.assert_close(mixed[i : i + 1], alone, atol=1e-5, rtol=0)
        print("ok")
        """
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    env.pop(row_kernel.ENV_SWITCH, None)
    tests = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run([sys.executable, "-c", script, tests], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_auto_sends_short_groups_of_large_layers_to_the_one_call():
    """In a mixed batch the compiled call costs no call per mask, so "auto" takes it up to MAX_GROUP_TOKENS rows."""
    from hf_masking.fixed_mask import SPARSE_MIN_WEIGHTS

    large, small = torch.zeros(512, 512), torch.zeros(8, 8)
    assert large.numel() >= SPARSE_MIN_WEIGHTS > small.numel()
    decoded = DecodedMask.from_bool(torch.rand(512, 512) >= 0.08)
    limit = row_kernel.MAX_GROUP_TOKENS
    assert decoded.uses_sparse("auto", large, limit, batched=True)
    assert not decoded.uses_sparse("auto", large, limit + 1, batched=True)
    assert not decoded.uses_sparse("auto", large, 1000, batched=False)  # alone: torch's rule (tokens x positions)
    assert not DecodedMask.from_bool(torch.rand(8, 8) >= 0.08).uses_sparse("auto", small, 4, batched=True)
    assert decoded.uses_sparse("sparse", large, 10**6, batched=True)  # a forced kernel is kept


def test_a_batch_sorted_by_mask_is_seen_as_slices():
    from hf_masking.row_masks import RowMasks

    sorted_rows = RowMasks(["a", "a", "b", None, None, "c"], {}, "auto")
    assert sorted_rows.spans(6) == [("a", 0, 2), ("b", 2, 3), (None, 3, 5), ("c", 5, 6)]
    assert sorted_rows.spans(18) == [("a", 0, 6), ("b", 6, 9), (None, 9, 15), ("c", 15, 18)]  # 3 rows an example
    assert RowMasks(["a", "b", "a"], {}, "auto").spans(3) is None  # a's examples apart: gathered
    assert sorted_rows.spans(7) is None
