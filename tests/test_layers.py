import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_masking.binarizer import ThresholdBinarizer, TopKBinarizer
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


def test_fixed_mask_overrides_scores():
    base, layer = _layer("linear")
    fixed = torch.zeros_like(base.weight, dtype=torch.bool)
    fixed[0] = True
    x = torch.randn(2, 16)
    original = base.weight.detach().clone()
    expected = torch.nn.functional.linear(x, original * fixed, base.bias)
    for minority in (0, 1):
        layer.set_fixed_mask(torch.nonzero(fixed.view(-1) == bool(minority)).view(-1), minority)
        assert torch.equal(layer.mask(), fixed)
        assert torch.equal(layer.original_weight(), original)
        torch.testing.assert_close(layer(x), expected)
    layer.set_fixed_mask(None)
    assert torch.equal(base.weight, original)  # restored bit for bit
    assert torch.equal(layer.mask(), layer.mask_scores >= 0.01)


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
