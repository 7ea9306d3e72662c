"""Computing with a loaded (fixed) mask while the base weight stays untouched.

A loaded mask is kept compressed (its repo bytes). When a layer first computes with it, its
positions are decoded into a bounded cache shared by the whole model, and each call picks the
cheaper of two kernels, which agree up to float rounding:

- ``dense``: build W ⊙ M for the call (a copy of W with the masked-out entries zeroed) and run
  one ordinary product. Its cost is a pass over W, whatever the batch.
- ``sparse``: W·x − (W ⊙ (1 − M))·x, the plain product with the shared base minus a sparse
  correction over the few masked-out weights. Its cost grows with the tokens, so it wins for
  short inputs (generation steps, small batches), where the dense kernel's copy of W dominates.

Because W is never written, switching masks is a pointer change, any number of masks can serve
different rows of one batch, and the base's pages stay shared with its checkpoint file. In a mixed
batch the sparse corrections of all masks are one compiled call per layer where `row_kernel` can be
built (`MaskedLinear._mixed_forward`).
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from . import codec, row_kernel

Kernel = Literal["auto", "dense", "sparse"]
KERNELS = ("auto", "dense", "sparse")
DEFAULT_CACHE_BYTES = 1 << 30

# When "auto" takes the sparse kernel: measured on a 2-core AVX-512 CPU, fp32, with layers from
# 32x32 to 3072x768 and 5-20% masked out (bench/mixed_batch.py --kernels prints the sweep).
# Below ~2^17 weights copying W is cheaper than any sparse call; above, the sparse kernel wins
# while tokens x masked-out weights stays under ~3 x the weights.
SPARSE_MIN_WEIGHTS = 1 << 17
SPARSE_MAX_TOKEN_RATIO = 3.0


@dataclass(eq=False)
class DecodedMask:
    """One layer's mask as the flat positions (in the weight's layout) of its minority value."""

    positions: torch.Tensor  # int32, or int64 for layers beyond 2^31 weights
    minority: int  # 0: the positions are masked out; 1: the positions are the only ones kept
    numel: int
    _rows: tuple | None = field(default=None, repr=False)  # ((shape, transposed), row pointers, positions by row)
    _values: tuple | None = field(default=None, repr=False)  # (weight, its version, W at the positions by row)
    _sparse: tuple | None = field(default=None, repr=False)  # (the values it was built on, CSR matrix)
    nbytes: int = 0  # what it holds: the positions, their row pointers and the sparse matrix once built
    _owner: tuple | None = field(default=None, repr=False)  # (cache, key) that counts its bytes

    def __post_init__(self) -> None:
        self._positions_bytes = self.positions.numel() * self.positions.element_size()
        self.nbytes = self._positions_bytes

    @classmethod
    def from_encoded(cls, encoded: codec.EncodedMask, device: torch.device) -> DecodedMask:
        positions, minority, numel = codec.decode_positions(encoded)
        return cls(torch.from_numpy(positions).to(device), minority, numel)

    @classmethod
    def from_bool(cls, mask: torch.Tensor) -> DecodedMask:
        flat = mask.reshape(-1)
        minority = 0 if int(flat.count_nonzero()) * 2 >= flat.numel() else 1
        index = torch.int32 if flat.numel() < 2**31 else torch.int64
        positions = torch.nonzero(flat == bool(minority)).view(-1).to(index)
        return cls(positions, minority, flat.numel())

    def to_bool(self, shape: torch.Size) -> torch.Tensor:
        flat = torch.full((self.numel,), not self.minority, dtype=torch.bool, device=self.positions.device)
        flat[self.positions.long()] = bool(self.minority)
        return flat.view(shape)

    def apply_to(self, weight: torch.Tensor) -> torch.Tensor:
        """A new tensor W ⊙ M (the base weight is not written)."""
        index = self.positions.long()
        if self.minority == 0:
            return weight.detach().clone().view(-1).index_fill_(0, index, 0).view_as(weight)
        out = torch.zeros_like(weight)
        out.view(-1)[index] = weight.detach().reshape(-1)[index]
        return out

    def row_positions(self, shape: torch.Size, transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The minority positions by output row: (row pointers [out + 1], flat positions o * in + i in the
        ``F.linear`` orientation [out, in]), both int32. Row o's positions are ``positions[rows[o]:rows[o + 1]]``.

        What the sparse matrix and `row_kernel` index with; kept with the decoded mask. For ``nn.Linear`` the
        positions are the decoded ones (only the row pointers are new); GPT-2's Conv1D stores [in, out], so
        its positions are reordered once.
        """
        if self._rows is not None and self._rows[0] == (tuple(shape), transposed):
            return self._rows[1], self._rows[2]
        if shape.numel() != self.numel or len(shape) != 2:
            raise ValueError(f"A mask of {self.numel} positions cannot index a weight of shape {tuple(shape)}.")
        positions = self.positions
        index = positions.dtype
        rows_stored, cols_stored = shape
        out_features, in_features = (cols_stored, rows_stored) if transposed else (rows_stored, cols_stored)
        increasing = bool((positions[1:] > positions[:-1]).all())
        if positions.numel() and (int(positions[0]) < 0 or int(positions[-1]) >= self.numel or not increasing):
            raise ValueError("A decoded mask's positions must be increasing and within the weight.")
        if transposed:  # position i * out + o becomes o * in + i, in increasing order
            wide = positions.long()
            positions = torch.sort((wide % cols_stored) * in_features + wide // cols_stored).values.to(index)
        bounds = torch.arange(out_features + 1, device=positions.device, dtype=torch.long) * in_features
        rows = torch.searchsorted(positions, bounds.to(index)).to(index)
        self._rows = ((tuple(shape), transposed), rows, positions)
        self._recount()
        return rows, positions

    def row_values(self, weight: torch.Tensor, transposed: bool) -> torch.Tensor:
        """W at `row_positions`, in their order (fp32 for `row_kernel`, else W's dtype), kept with the decoded mask.

        Rebuilt when the weight is another tensor or was written since (a head's weight is per mask, and
        a switch copies the new head in).
        """
        cached = self._values
        if cached is not None and cached[0] is weight and cached[1] == weight._version:
            return cached[2]
        rows, positions = self.row_positions(weight.shape, transposed)
        out_features = rows.numel() - 1
        in_features = self.numel // max(out_features, 1)
        wide = positions.long()
        flat = weight.detach().reshape(-1)
        values = flat[(wide % in_features) * out_features + wide // in_features] if transposed else flat[wide]
        self._values = (weight, weight._version, values)
        self._recount()
        return values

    def sparse_matrix(self, weight: torch.Tensor, transposed: bool) -> torch.Tensor:
        """The minority entries of W in the orientation of ``F.linear`` ([out, in]), as a CSR matrix
        (its values are `row_values`), kept with the decoded mask while the weight is unchanged."""
        values = self.row_values(weight, transposed)
        cached = self._sparse
        if cached is not None and cached[0] is values:
            return cached[1]
        rows, positions = self.row_positions(weight.shape, transposed)
        out_features = rows.numel() - 1
        in_features = self.numel // max(out_features, 1)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are stable
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            matrix = torch.sparse_csr_tensor(
                rows, positions % in_features, values, (out_features, in_features), check_invariants=False
            )
        self._sparse = (values, matrix)
        self._recount()
        return matrix

    def _recount(self) -> None:
        """Count what the entry now holds, and tell the cache that bounds it (at once, not at the next lookup)."""
        held = self._positions_bytes
        if self._rows is not None:
            held += self._rows[1].numel() * self._rows[1].element_size()
            if self._rows[2] is not self.positions:
                held += self._rows[2].numel() * self._rows[2].element_size()
        if self._values is not None:
            held += self._values[2].numel() * self._values[2].element_size()
        if self._sparse is not None:  # its values are the ones counted above; its column indices are its own
            indices = self._sparse[1].col_indices()
            held += indices.numel() * indices.element_size()
        self.nbytes = held
        if self._owner is not None:
            cache, key = self._owner
            cache._grown(key, self)

    def uses_sparse(self, kernel: Kernel, weight: torch.Tensor, tokens: int, batched: bool = False) -> bool:
        """Whether a call on `tokens` tokens takes the sparse kernel ("auto": the one measured cheaper).

        `batched`: the correction is one group of a mixed batch's compiled call (`row_kernel`), which
        costs no call of its own, so it wins up to `row_kernel.MAX_GROUP_TOKENS` rows of this mask.
        """
        if kernel != "auto":
            return kernel == "sparse"
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            return False  # measured only on CPU fp32; elsewhere the dense kernel is the safe choice
        numel = weight.numel()
        if numel < SPARSE_MIN_WEIGHTS:
            return False
        if batched:
            return tokens <= row_kernel.MAX_GROUP_TOKENS
        return tokens * self.positions.numel() <= SPARSE_MAX_TOKEN_RATIO * numel

    def correction(self, x: torch.Tensor, weight: torch.Tensor, transposed: bool) -> torch.Tensor:
        """x (W ⊙ P)ᵀ for the listed positions P only, in x's shape with the output features last."""
        matrix = self.sparse_matrix(weight, transposed)
        flat = x.reshape(-1, x.shape[-1])
        if matrix.dtype != flat.dtype or not _sparse_supported(flat):  # CPU sparse kernels are fp32/fp64 only
            product = (matrix.float() @ flat.float().t()).t().to(x.dtype)
        else:
            product = (matrix @ flat.t()).t()
        return product.reshape(*x.shape[:-1], product.shape[-1])

    def linear(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool, kernel: Kernel
    ) -> torch.Tensor:
        """x (W ⊙ M)ᵀ + b, with the kernel `kernel` chooses."""
        tokens = x.numel() // max(x.shape[-1], 1)
        if not self.uses_sparse(kernel, weight, tokens):
            masked = self.apply_to(weight)
            return F.linear(x, masked.t() if transposed else masked, bias)
        product = self.correction(x, weight, transposed)
        if self.minority == 0:
            return F.linear(x, weight.t() if transposed else weight, bias).sub_(product)
        return product if bias is None else product.add_(bias)


def _sparse_supported(x: torch.Tensor) -> bool:
    return x.device.type != "cpu" or x.dtype in (torch.float32, torch.float64)


class FixedMaskCache:
    """Decoded layer masks of a model's loaded masks, least recently used dropped beyond `max_bytes`.

    A loaded mask costs its compressed repo bytes; this cache adds, per layer in use, 4 bytes per
    minority position; once a sparse kernel ran, 4 per output row and 4 more per position (the
    weights there; a Conv1D layer: 4 more, its positions reordered), and 4 more per position when
    torch's sparse product ran (its column indices).
    ``max_bytes = 0`` decodes on every
    call: nothing beyond the compressed masks stays resident. `kernel` chooses the kernel of every
    layer computing with a loaded mask ("auto", "dense" or "sparse").
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, kernel: Kernel = "auto") -> None:
        self._entries: OrderedDict[tuple, DecodedMask] = OrderedDict()
        self._sizes: dict[tuple, int] = {}  # as last counted: an entry grows when its sparse matrix is built
        self._lock = threading.Lock()
        self.max_bytes = max_bytes
        self.kernel = kernel

    def __getstate__(self) -> dict:  # a copy (deepcopy, pickle) starts empty, with a lock of its own
        return {"max_bytes": self._max_bytes, "kernel": self._kernel}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_bytes"], state["kernel"])

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"max_bytes must be an int >= 0, not {value!r}.")
        self._max_bytes = value
        with self._lock:
            self._evict()

    @property
    def kernel(self) -> Kernel:
        return self._kernel

    @kernel.setter
    def kernel(self, value: Kernel) -> None:
        if value not in KERNELS:
            raise ValueError(f"kernel={value!r} is invalid: expected one of {KERNELS}.")
        self._kernel = value

    @property
    def nbytes(self) -> int:
        """Bytes the decoded masks now hold (their sparse matrices included)."""
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._sizes.clear()

    def drop(self, mask_name: str) -> None:
        """Forget every layer of one mask (it was deleted)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == mask_name]:
                del self._entries[key]
                del self._sizes[key]

    def get(self, mask_name: str, module_name: str, encoded: codec.EncodedMask, device: torch.device) -> DecodedMask:
        key = (mask_name, module_name, device)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                if entry.nbytes != self._sizes[key]:  # its sparse matrix was built since
                    self._sizes[key] = entry.nbytes
                    self._evict()
                return entry
        entry = DecodedMask.from_encoded(encoded, device)
        with self._lock:
            if key not in self._entries:
                self._entries[key] = entry
                self._sizes[key] = entry.nbytes
                entry._owner = (self, key)
                self._evict()
        return entry

    def _grown(self, key: tuple, entry: DecodedMask) -> None:
        """An entry built its sparse matrix: count it, and drop what the bound no longer holds."""
        with self._lock:
            if self._entries.get(key) is entry:
                self._sizes[key] = entry.nbytes
                self._evict()

    def _evict(self) -> None:
        total = sum(self._sizes.values())
        while self._entries and total > self._max_bytes:
            key, _ = self._entries.popitem(last=False)
            total -= self._sizes.pop(key)


@dataclass(eq=False)
class FixedMask:
    """A layer's share of one loaded mask: its compressed bytes, decoded through the model's cache."""

    mask_name: str
    module_name: str
    encoded: codec.EncodedMask
    cache: FixedMaskCache

    def decoded(self, device: torch.device) -> DecodedMask:
        decoded = self.cache.get(self.mask_name, self.module_name, self.encoded, device)
        if codec.is_conditional(self.encoded):  # decode once from the initial scores, later from the positions
            positions = decoded.positions.cpu().numpy()
            self.encoded = codec.plain(
                positions, decoded.minority, decoded.numel, self.encoded.shape, self.encoded.digest
            )
        return decoded
