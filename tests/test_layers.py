import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_masking import codec
from hf_masking.binarizer import ThresholdBinarizer, TopKBinarizer
from hf_masking.fixed_mask import FixedMask, FixedMaskCache
from hf_masking.layers import MaskedLinear


def _layer(kind: str, dtype=torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    base = nn.Linear(16, 8) if kind == "linear" else Conv1D(8, 16)
    base = base.to(dtype)
    for p in base.parameters():
        p.requires_grad_(False)
    scores = torch.empty(base.weight.shape).uniform_(-0.02, 0.58)
    return base, MaskedLinear(base, ThresholdBinarizer(0.01), scores)


def _reference(base, scores, x, transposed):
    """Unfused reference: W ⊙ STE(mask) through plain autograd."""
    hard = (scores >= 0.01).float()
    ste = hard + scores - scores.detach()  # forward: hard mask; backward: identity to scores
    w = base.weight.float() * ste
    return x @ w + base.bias.float() if transposed else torch.nn.functional.linear(x, w, base.bias.float())


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_forward_and_straight_through_gradient_match_reference(kind):
    base, layer = _layer(kind)
    x = torch.randn(3, 5, 16, requires_grad=True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)

    scores = layer.mask_scores.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = _reference(base, scores, x_ref, layer.transposed)
    ref.backward(grad_out)

    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(layer.mask_scores.grad, scores.grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert base.weight.grad is None  # the frozen weight never gets a gradient


def test_reuses_original_parameters():
    base, layer = _layer("linear")
    assert layer.weight is base.weight and layer.bias is base.bias
    assert set(layer.state_dict()) == {"weight", "bias", "mask_scores"}
    assert layer.mask_scores.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_bases_compute_in_their_dtype_with_fp32_scores(dtype):
    base, layer = _layer("linear", dtype=dtype)
    x = torch.randn(4, 16, dtype=dtype)
    out = layer(x)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert layer.mask_scores.grad.dtype == torch.float32
    assert torch.isfinite(layer.mask_scores.grad).all()
    expected = torch.nn.functional.linear(x, base.weight * (layer.mask_scores >= 0.01), base.bias)
    torch.testing.assert_close(out, expected)


def test_no_grad_path_matches_training_path():
    _, layer = _layer("linear")
    x = torch.randn(2, 16)
    with torch.no_grad():
        inference = layer(x)
    torch.testing.assert_close(inference, layer(x))


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("kernel", ["dense", "sparse"])
@pytest.mark.parametrize("kept", [0.9, 0.1])  # mostly kept (positions = removed) and mostly removed
def test_a_fixed_mask_overrides_scores_without_writing_the_weight(kind, kernel, kept):
    base, layer = _layer(kind)
    fixed = torch.rand(base.weight.shape, generator=torch.Generator().manual_seed(1)) < kept
    x = torch.randn(2, 3, 16)
    original = base.weight.detach().clone()
    weight = original * fixed
    expected = x @ weight + base.bias if kind == "conv1d" else torch.nn.functional.linear(x, weight, base.bias)
    layer.use_fixed_mask(FixedMask("task", "layer", codec.encode(fixed), FixedMaskCache(kernel=kernel)))
    assert torch.equal(layer.mask(), fixed)
    torch.testing.assert_close(layer(x), expected)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)
    assert torch.equal(base.weight, original)  # never written
    layer.use_fixed_mask(None)
    assert torch.equal(layer.mask(), layer.mask_scores >= 0.01)


def test_the_dense_kernel_is_bit_exact_and_auto_keeps_small_layers_dense():
    base, layer = _layer("linear")
    fixed = torch.rand(base.weight.shape, generator=torch.Generator().manual_seed(2)) < 0.8
    x = torch.randn(4, 16)
    cache = FixedMaskCache(kernel="auto")
    layer.use_fixed_mask(FixedMask("task", "layer", codec.encode(fixed), cache))
    with torch.no_grad():
        # What a trained model computes with the same mask: W * mask, one product.
        assert torch.equal(layer(x), torch.nn.functional.linear(x, base.weight * fixed, base.bias))
    decoded = layer.fixed.decoded(base.weight.device)
    assert not decoded.uses_sparse("auto", base.weight, tokens=4)  # 128 weights: a copy is cheapest
    big = torch.zeros(1024, 1024)
    assert decoded.uses_sparse("auto", big, tokens=1) and not decoded.uses_sparse("auto", big.half(), tokens=1)


def test_the_cache_stays_within_its_bound_and_decodes_again_after_eviction():
    masks = {
        f"layer{i}": codec.encode(torch.rand(64, 64, generator=torch.Generator().manual_seed(i)) < 0.9)
        for i in range(4)
    }
    cache = FixedMaskCache(max_bytes=2 * 4 * 500)  # about two layers' positions (4 bytes each)
    decoded = [cache.get("task", name, encoded, torch.device("cpu")) for name, encoded in masks.items()]
    assert 0 < cache.nbytes <= cache.max_bytes and len(cache) < 4
    again = cache.get("task", "layer0", masks["layer0"], torch.device("cpu"))  # evicted: decoded anew
    assert again is not decoded[0] and torch.equal(again.positions, decoded[0].positions)
    cache.max_bytes = 0
    assert len(cache) == 0 and cache.nbytes == 0
    with pytest.raises(ValueError, match="max_bytes"):
        cache.max_bytes = -1
    with pytest.raises(ValueError, match="kernel"):
        cache.kernel = "fast"


def test_a_sparse_matrix_built_after_a_lookup_counts_against_the_bound_at_once():
    """The sparse kernel triples an entry's bytes after the cache took it in: the bound holds right then,
    not at the entry's next lookup (with many masks in turn, there was none before the cache held 3x)."""
    weight = torch.randn(64, 64)
    masks = {
        f"layer{i}": codec.encode(torch.rand(64, 64, generator=torch.Generator().manual_seed(i)) < 0.9)
        for i in range(6)
    }
    cache = FixedMaskCache(max_bytes=3 * 4 * 420)  # about three layers' positions alone
    for name, encoded in masks.items():
        cache.get("task", name, encoded, torch.device("cpu")).sparse_matrix(weight, transposed=False)
        assert cache.nbytes <= cache.max_bytes
    assert 0 < len(cache) < 3  # with their matrices, fewer entries fit


def test_topk_keeps_a_fixed_fraction_per_layer():
    scores = torch.randn(100, 50)
    mask = TopKBinarizer(0.1)(scores)
    assert int((~mask).sum()) == 500
    assert bool(mask[scores >= scores.flatten().sort().values[500]].all())


def test_merged_layer_is_a_plain_module_of_the_original_type():
    for kind, cls in (("linear", nn.Linear), ("conv1d", Conv1D)):
        _, layer = _layer(kind)
        merged = layer.merged()
        assert type(merged) is cls
        x = torch.randn(2, 16)
        torch.testing.assert_close(merged(x), layer(x))
