"""`MaskedLinear`: a drop-in for `nn.Linear` (and GPT-2's `Conv1D`) computing with W ⊙ mask.

The layer reuses the original weight and bias Parameters, so the base model's state-dict
keys and values stay exactly as they were; it only adds a ``mask_scores`` Parameter (fp32 unless
`MaskingConfig.score_dtype` says otherwise).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

Binarize = Callable[[torch.Tensor], torch.Tensor]
MASKABLE_TYPES = (nn.Linear, Conv1D)


class _MaskedLinearFunction(torch.autograd.Function):
    """y = x (W ⊙ B(S))ᵀ + b with the straight-through estimator dL/dS = dL/dŴ ⊙ W.

    Fused on purpose: composing ``weight * mask`` and ``F.linear`` under autograd would keep
    the float mask and the masked weight alive until backward (two weight-sized tensors per
    layer). Here backward recomputes the boolean mask from the scores, which are resident
    anyway, so training saves nothing beyond the input that a plain linear layer saves too.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, scores, binarize: Binarize, transposed: bool):  # noqa: D102
        mask = binarize(scores)
        masked = weight * mask
        out = F.linear(x, masked.t() if transposed else masked, bias)
        ctx.save_for_backward(x, weight, scores)
        ctx.binarize = binarize
        ctx.transposed = transposed
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        x, weight, scores = ctx.saved_tensors
        needs_x, needs_w, needs_b, needs_s = ctx.needs_input_grad[:4]
        mask = ctx.binarize(scores)
        dtype = grad_out.dtype
        # One contiguous 2-D view of the incoming gradient serves every product below
        # (gradients arriving through attention's transposes are not contiguous).
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = grad_b = grad_s = None
        if needs_x:
            masked = (weight * mask).to(dtype)
            grad_x = (flat_grad @ (masked.t() if ctx.transposed else masked)).view(x.shape).to(x.dtype)
        if needs_w or needs_s:
            flat_x = x.reshape(-1, x.shape[-1]).to(dtype)
            # Gradient of the effective weight, in the weight's own orientation.
            grad_eff = flat_x.t() @ flat_grad if ctx.transposed else flat_grad.t() @ flat_x
            if needs_w:
                grad_w = (grad_eff * mask).to(weight.dtype)
            if needs_s:  # in place: grad_eff is a temporary, and fresh weight-sized buffers cost page faults
                grad_s = grad_eff.mul_(weight.to(dtype)).to(scores.dtype)
        if needs_b:
            grad_b = flat_grad.sum(0)
        return grad_x, grad_w, grad_b, grad_s, None, None


class MaskedLinear(nn.Module):
    """A linear layer whose weight is multiplied by a binary mask.

    The mask comes from trainable scores (``mask_scores``, through the binarizer) or, for a
    mask loaded for inference, from a fixed mask (``set_fixed_mask``), which wins when set.
    """

    def __init__(self, base: nn.Linear | Conv1D, binarize: Binarize, scores: torch.Tensor | None) -> None:
        super().__init__()
        if not isinstance(base, MASKABLE_TYPES):
            raise TypeError(f"MaskedLinear wraps nn.Linear or Conv1D, not {type(base).__name__}.")
        self.weight = base.weight
        self.bias = base.bias
        self.transposed = isinstance(base, Conv1D)
        self.binarize = binarize
        self.mask_scores = nn.Parameter(scores, requires_grad=True) if scores is not None else None
        # A loaded mask, stored compactly as the flat positions of its minority value.
        self.register_buffer("fixed_positions", None, persistent=False)
        self.fixed_minority = 0
        self._removed: torch.Tensor | None = None  # weight values a fixed mask has zeroed in place
        self.disabled = False  # inside MaskedModel.disable_masks(): compute with the unmasked weight
        # Kept outside the module tree (a tuple is not registered) so unwrapping restores it.
        self._original = (base,)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001
        """Casts (``.half()``, ``.to(torch.bfloat16)``) reach the weight, never the scores.

        Scores keep the dtype `MaskingConfig.score_dtype` chose (fp32 by default): a cast would
        round scores near the threshold across it and flip mask entries, as PEFT keeps adapter
        weights in fp32 (``autocast_adapter_dtype``). Moves between devices apply.
        """
        scores = self._parameters.pop("mask_scores", None)
        try:
            result = super()._apply(fn, recurse)
        finally:
            self._parameters["mask_scores"] = scores
        if scores is not None and scores.device != self.weight.device:
            moved = scores.data.to(self.weight.device)
            scores.data = moved
            if scores.grad is not None:
                scores.grad = scores.grad.to(self.weight.device)
        return result

    @property
    def in_features(self) -> int:
        return self.weight.shape[0] if self.transposed else self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[1] if self.transposed else self.weight.shape[0]

    def set_fixed_mask(self, positions: torch.Tensor | None, minority: int = 0) -> None:
        """Compute with a fixed mask, given by the flat positions of its minority value (0 or 1).

        The mask is applied to the weight in place and the values it removes are kept aside, so
        inference runs at the speed of a plain linear layer and costs ~8 bytes per masked-out
        weight (position + value) instead of a bool per weight. ``None`` restores the original
        weight exactly and goes back to the mask of the scores.
        """
        self._restore_weight()
        if positions is None:
            return
        flat = self.weight.data.view(-1)
        positions = positions.to(device=self.weight.device, dtype=torch.int32)
        with torch.no_grad():
            if minority == 0:
                index = positions.long()
                self._removed = torch.index_select(flat, 0, index)
                flat.index_fill_(0, index, 0)
            else:  # mostly zeros: keep the whole weight aside, then keep only the listed entries
                self._removed = flat.clone()
                flat.zero_()
                index = positions.long()
                flat[index] = self._removed[index]
        self.fixed_positions = positions
        self.fixed_minority = minority

    def _restore_weight(self) -> None:
        if self.fixed_positions is None:
            return
        flat = self.weight.data.view(-1)
        with torch.no_grad():
            if self.fixed_minority == 0:
                flat.index_copy_(0, self.fixed_positions.long(), self._removed)
            else:
                flat.copy_(self._removed)
        self.fixed_positions = None
        self._removed = None

    def original_weight(self) -> torch.Tensor:
        """The unmasked weight, even while a fixed mask has zeroed part of it in place."""
        if self.fixed_positions is None:
            return self.weight.detach()
        if self.fixed_minority == 1:
            return self._removed.view_as(self.weight)
        weight = self.weight.detach().clone()
        weight.view(-1)[self.fixed_positions.long()] = self._removed
        return weight

    def mask(self) -> torch.Tensor:
        """The current boolean mask, in the weight's shape."""
        if self.fixed_positions is not None:
            flat = torch.full(
                (self.weight.numel(),), not self.fixed_minority, dtype=torch.bool, device=self.weight.device
            )
            flat[self.fixed_positions.long()] = bool(self.fixed_minority)
            return flat.view_as(self.weight)
        if self.mask_scores is None:
            return torch.ones_like(self.weight, dtype=torch.bool)
        with torch.no_grad():
            return self.binarize(self.mask_scores)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.mask_scores
        if self.disabled or self.fixed_positions is not None:
            return F.linear(x, self.weight.t() if self.transposed else self.weight, self.bias)  # masked in place
        if scores is None:  # a layer only loaded masks use: unmasked until one is set
            return F.linear(x, self.weight.t() if self.transposed else self.weight, self.bias)
        if torch.is_grad_enabled():
            return _MaskedLinearFunction.apply(x, self.weight, self.bias, scores, self.binarize, self.transposed)
        masked = self.weight * self.mask()
        return F.linear(x, masked.t() if self.transposed else masked, self.bias)

    def original(self) -> nn.Module:
        """The module this layer replaced, sharing the same weight and bias."""
        return self._original[0]

    def merged(self) -> nn.Module:
        """A plain module of the original type with W ⊙ mask baked into a new weight."""
        base = self.original()
        if self.transposed:
            merged: nn.Module = Conv1D(self.out_features, self.in_features)
        else:
            merged = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        merged = merged.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(self.weight * self.mask())
            if self.bias is not None:
                merged.bias.copy_(self.bias)
        merged.train(base.training)
        return merged

    def extra_repr(self) -> str:
        kind = "Conv1D" if self.transposed else "Linear"
        return f"{kind}(in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None})"
