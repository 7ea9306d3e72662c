"""`MaskedLinear`: a drop-in for `nn.Linear` (and GPT-2's `Conv1D`) computing with W ⊙ mask.

The layer reuses the original weight and bias Parameters, so the base model's state-dict
keys and values stay exactly as they were; it only adds a ``mask_scores`` Parameter (fp32 unless
`MaskingConfig.score_dtype` says otherwise). Nothing ever writes the base weight.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from . import row_kernel
from .fixed_mask import DecodedMask, FixedMask
from .row_masks import SCORES, RowMasks

Binarize = Callable[[torch.Tensor], torch.Tensor]
MASKABLE_TYPES = (nn.Linear, Conv1D)
_NO_POSITIONS = torch.empty(0, dtype=torch.int32)
_NO_VALUES = torch.empty(0, dtype=torch.float32)


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
    mask loaded for inference, from a fixed mask (``use_fixed_mask``), which wins when set. The
    weight itself is never written: a fixed mask is applied per call (see `fixed_mask`).
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
        self.fixed: FixedMask | None = None  # a loaded mask, decoded on use
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

    def use_fixed_mask(self, fixed: FixedMask | None) -> None:
        """Compute with a loaded mask from now on; ``None`` goes back to the mask of the scores."""
        self.fixed = fixed

    def mask(self) -> torch.Tensor:
        """The current boolean mask, in the weight's shape."""
        if self.fixed is not None:
            return self.fixed.decoded(self.weight.device).to_bool(self.weight.shape)
        if self.mask_scores is None:
            return torch.ones_like(self.weight, dtype=torch.bool)
        with torch.no_grad():
            return self.binarize(self.mask_scores)

    def forward(self, x: torch.Tensor, rows: RowMasks | None = None) -> torch.Tensor:
        """`rows`: each row's mask, in a mixed-mask forward (passed by `mixed_batch` for that call only)."""
        if self.disabled:
            return F.linear(x, self.weight.t() if self.transposed else self.weight, self.bias)
        if rows is not None:
            return self._mixed_forward(x, rows)
        if self.fixed is not None:
            decoded = self.fixed.decoded(self.weight.device)
            return decoded.linear(x, self.weight, self.bias, self.transposed, self.fixed.cache.kernel)
        scores = self.mask_scores
        if scores is None:  # a layer only loaded masks use: unmasked until one is set
            return F.linear(x, self.weight.t() if self.transposed else self.weight, self.bias)
        if torch.is_grad_enabled():
            return _MaskedLinearFunction.apply(x, self.weight, self.bias, scores, self.binarize, self.transposed)
        masked = self.weight * self.mask()
        return F.linear(x, masked.t() if self.transposed else masked, self.bias)

    def _row_mask(self, rows: RowMasks, name: str | None) -> DecodedMask | None:
        """The decoded mask rows named `name` compute with here (None: the unmasked weight)."""
        source = rows.sources[name]
        if source is None:
            return None
        if source is SCORES:
            return DecodedMask.from_bool(self.binarize(self.mask_scores))
        return source[self].decoded(self.weight.device)

    def _mixed_forward(self, x: torch.Tensor, rows_of: RowMasks) -> torch.Tensor:
        """Each row with its own mask: one product with the shared weight for the rows whose mask is
        cheapest as a sparse correction (and the rows with no mask), the corrections of all those masks
        in one compiled call where `row_kernel` is available, and one product per other mask."""
        groups = rows_of.groups(x.shape[0], x.device)
        weight = self.weight.t() if self.transposed else self.weight
        kernel = rows_of.kernel
        batched = len(groups) > 1 and row_kernel.supports(x, self.weight) and row_kernel.available()
        per_row = x.numel() // x.shape[0] // x.shape[-1]  # tokens per row (a sequence's length)
        decoded_of: dict[str | None, DecodedMask | None] = {}
        correction_of: dict[str | None, bool] = {}  # whether the mask's rows take the shared product + a correction
        for name, rows in groups:
            decoded = decoded_of[name] = self._row_mask(rows_of, name)
            tokens = (x.shape[0] if rows is None else rows.numel()) * per_row
            correction_of[name] = decoded is None or (
                decoded.minority == 0 and decoded.uses_sparse(kernel, self.weight, tokens, batched)
            )
        if len(groups) == 1:  # the whole batch has one mask
            decoded = decoded_of[groups[0][0]]
            if decoded is None:
                return F.linear(x, weight, self.bias)
            return decoded.linear(x, self.weight, self.bias, self.transposed, kernel)
        spans = rows_of.spans(x.shape[0])
        if spans is not None and len(set(correction_of.values())) == 1:
            return self._sorted_forward(x, spans, decoded_of, all(correction_of.values()), kernel)
        shared = [(rows, decoded_of[name]) for name, rows in groups if correction_of[name]]
        own = [(rows, decoded_of[name]) for name, rows in groups if not correction_of[name]]
        out = None
        if shared:
            shared.sort(key=lambda group: group[1] is None)  # rows without a mask last: the kernel ends before them
            rows = torch.cat([r for r, _ in shared])
            inputs = x.index_select(0, rows)
            result = F.linear(inputs, weight, self.bias)
            self._subtract_corrections(result, inputs, [(r.numel(), decoded) for r, decoded in shared])
            out = result.new_empty((x.shape[0], *result.shape[1:]))
            out.index_copy_(0, rows, result)
        for rows, decoded in own:
            result = decoded.linear(x.index_select(0, rows), self.weight, self.bias, self.transposed, kernel)
            if out is None:
                out = result.new_empty((x.shape[0], *result.shape[1:]))
            out.index_copy_(0, rows, result)
        return out

    def _sorted_forward(
        self,
        x: torch.Tensor,
        spans: list[tuple[str | None, int, int]],
        decoded_of: dict[str | None, DecodedMask | None],
        corrections: bool,
        kernel: str,
    ) -> torch.Tensor:
        """A batch sorted by mask: each mask's rows are one slice, so nothing is gathered or scattered. With
        `corrections`, every mask is a sparse correction (one product with the shared weight, the corrections
        in one call); else every mask takes its own product on its slice."""
        if corrections:
            result = F.linear(x, self.weight.t() if self.transposed else self.weight, self.bias)
            self._subtract_corrections(result, x, [(end - start, decoded_of[name]) for name, start, end in spans])
            return result
        out = None
        for name, start, end in spans:
            part = decoded_of[name].linear(x[start:end], self.weight, self.bias, self.transposed, kernel)
            if out is None:
                out = part.new_empty((x.shape[0], *part.shape[1:]))
            out[start:end] = part
        return out

    def _subtract_corrections(
        self, result: torch.Tensor, inputs: torch.Tensor, groups: list[tuple[int, DecodedMask | None]]
    ) -> None:
        """result[rows of g] -= inputs[rows of g] (W ⊙ P_g)ᵀ for each group's masked-out positions P_g, in place.

        `groups`: (rows, decoded mask or None for no mask) in the order of the rows of `inputs`."""
        masked = sum(decoded is not None for _, decoded in groups)
        if not masked:
            return
        per_row = inputs.numel() // inputs.shape[0] // inputs.shape[-1]  # tokens per row (a sequence's length)
        if masked > 1 and row_kernel.supports(inputs, self.weight):
            starts, positions, values = [0], [], []
            for count, decoded in groups:
                if decoded is None and not positions:  # leading rows without a mask: start after them
                    starts[0] += count * per_row
                    continue
                starts.append(starts[-1] + count * per_row)
                if decoded is None:  # rows without a mask between masked ones: a group with nothing to subtract
                    positions.append((result.new_zeros(result.shape[-1] + 1, dtype=torch.int32), _NO_POSITIONS))
                    values.append(_NO_VALUES)
                else:
                    positions.append(decoded.row_positions(self.weight.shape, self.transposed))
                    values.append(decoded.row_values(self.weight, self.transposed))
            while values[-1] is _NO_VALUES:  # trailing rows without a mask: end before them
                starts.pop()
                positions.pop()
                values.pop()
            flat_inputs = inputs.reshape(-1, inputs.shape[-1]).contiguous()
            flat_result = result.view(-1, result.shape[-1])
            if row_kernel.subtract_corrections(flat_result, flat_inputs, starts, positions, values):
                return
        start = 0
        for count, decoded in groups:
            if decoded is not None:
                part = inputs[start : start + count]
                result[start : start + count] -= decoded.correction(part, self.weight, self.transposed)
            start += count

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
