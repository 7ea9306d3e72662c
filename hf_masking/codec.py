"""Lossless mask compression: binary mask ⇄ bytes, no pickle.

A trained mask is ~95% ones, so it is stored by the positions of its minority value. The gaps
between consecutive positions are Rice-coded: gap - 1 = q·2^k + r, with the quotients q in a
unary bit stream and the k-bit remainders in a fixed-width one. For i.i.d. positions the gaps are
geometric, for which a well-chosen Rice code is within ~1% of the Shannon bound n·H(p); keeping
the two streams apart makes both encoding and decoding a handful of vectorised numpy passes.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

CODEC_NAME = "rice-gaps"
CODEC_VERSION = 1
# magic, version, minority value, rice k, numel, count, unary bits, crc32 of the body
_HEADER = struct.Struct("<4sBBBxQQQI")
_MAGIC = b"HFMK"


class MaskCodecError(ValueError):
    """A stored mask is truncated, corrupted or written by an unknown codec."""


@dataclass(frozen=True)
class EncodedMask:
    data: bytes
    shape: tuple[int, ...]
    digest: str  # `positions_digest` of the mask, checked after decoding

    @property
    def nbytes(self) -> int:
        return len(self.data)


def positions_digest(positions: np.ndarray, minority: int, numel: int) -> str:
    """sha256 of what a mask is (its size, minority value and their positions), to check decoding."""
    digest = hashlib.sha256(f"{numel}:{minority}:".encode())
    digest.update(np.ascontiguousarray(positions, dtype="<i8").tobytes())
    return digest.hexdigest()


def _rice_bits(values: np.ndarray, k: int) -> int:
    return int((values >> k).sum()) + values.size * (k + 1)


def _best_k(values: np.ndarray) -> int:
    if values.size == 0:
        return 0
    guess = max(0, int(np.round(np.log2(max(values.mean(), 1.0) * np.log(2)))))
    candidates = [k for k in (guess - 1, guess, guess + 1) if 0 <= k <= 62]
    return min(candidates, key=lambda k: _rice_bits(values, k))


def encode(mask: torch.Tensor) -> EncodedMask:
    """Compress a boolean mask."""
    flat = mask.detach().to("cpu", torch.bool).reshape(-1).numpy()
    numel = flat.size
    minority = 0 if np.count_nonzero(flat) * 2 >= numel else 1
    positions = np.flatnonzero(flat == bool(minority)).astype(np.int64)
    values = (np.diff(positions, prepend=-1) - 1).astype(np.uint64)  # gap - 1 >= 0
    k = _best_k(values)
    quotients = (values >> np.uint64(k)).astype(np.int64)
    unary_bits = int(quotients.sum()) + values.size
    unary = np.ones(unary_bits, dtype=np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 0  # each quotient: q ones, then a zero
    # Remainders as k bit planes (bit j of every value, then bit j + 1…): each decodes in one pass.
    planes = [np.packbits(((values >> np.uint64(j)) & np.uint64(1)).astype(np.uint8)).tobytes() for j in range(k)]
    body = np.packbits(unary).tobytes() + b"".join(planes)
    header = _HEADER.pack(_MAGIC, CODEC_VERSION, minority, k, numel, positions.size, unary_bits, zlib.crc32(body))
    return EncodedMask(header + body, tuple(mask.shape), positions_digest(positions, minority, numel))


def decode_positions(data: bytes) -> tuple[np.ndarray, int, int]:
    """(positions of the minority value, the minority value, numel) without building the mask."""
    if len(data) < _HEADER.size:
        raise MaskCodecError("mask data is truncated (no header)")
    magic, version, minority, k, numel, count, unary_bits, crc = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise MaskCodecError("mask data was not written by this codec (bad magic)")
    if version != CODEC_VERSION:
        raise MaskCodecError(f"mask codec version {version} is not supported (this version reads {CODEC_VERSION})")
    body = memoryview(data)[_HEADER.size :]
    unary_bytes, plane_bytes = (unary_bits + 7) // 8, (count + 7) // 8
    if len(body) != unary_bytes + k * plane_bytes:
        raise MaskCodecError("mask data is truncated or corrupted (its length does not match its header)")
    if zlib.crc32(body) != crc or minority not in (0, 1) or count > numel:
        raise MaskCodecError("mask data is corrupted (checksum mismatch)")
    unary = np.unpackbits(np.frombuffer(body[:unary_bytes], dtype=np.uint8), count=unary_bits)
    ends = np.flatnonzero(unary == 0)
    if ends.size != count:
        raise MaskCodecError("mask data is corrupted (wrong number of values)")
    # int32 halves the memory traffic of the passes below; layers beyond 2^31 weights need int64.
    index_type = np.int32 if numel < 2**31 and k < 31 else np.int64
    values = (np.diff(ends.astype(index_type), prepend=index_type(-1)) - 1) << k
    remainders = np.zeros(count, dtype=index_type)
    for j in range(k):
        plane = np.frombuffer(body[unary_bytes + j * plane_bytes : unary_bytes + (j + 1) * plane_bytes], np.uint8)
        remainders |= np.unpackbits(plane, count=count).astype(remainders.dtype) << j
    values |= remainders
    positions = np.cumsum(values + 1, dtype=index_type) - 1  # numpy would widen int32 sums to int64
    if count and positions[-1] >= numel:
        raise MaskCodecError("mask data is corrupted (positions out of range)")
    return positions, minority, numel


def masked_out(encoded: EncodedMask) -> tuple[int, int]:
    """(how many weights the mask removes, how many it covers)."""
    positions, minority, numel = decode_positions(encoded.data)
    return (positions.size if minority == 0 else numel - positions.size), numel


def verify(encoded: EncodedMask) -> tuple[np.ndarray, int, int]:
    """Decode the positions and check them against the stored digest and shape."""
    positions, minority, numel = decode_positions(encoded.data)
    expected = int(np.prod(encoded.shape, dtype=np.int64))
    if numel != expected:
        raise MaskCodecError(f"mask data holds {numel} values but its shape {list(encoded.shape)} needs {expected}")
    if positions_digest(positions, minority, numel) != encoded.digest:
        raise MaskCodecError("mask data is corrupted (checksum mismatch after decoding)")
    return positions, minority, numel


def decode(encoded: EncodedMask) -> torch.Tensor:
    """Decompress to a boolean tensor, verified against the stored digest."""
    positions, minority, numel = verify(encoded)
    flat = np.full(numel, not minority, dtype=np.bool_)
    flat[positions] = bool(minority)
    return torch.from_numpy(flat).reshape(encoded.shape)


def shannon_bound_bytes(numel: int, zeros: int) -> float:
    """n·H(p) in bytes: what any lossless code of an i.i.d. mask needs on average."""
    p = zeros / numel
    if p in (0.0, 1.0):
        return 0.0
    return numel * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) / 8
