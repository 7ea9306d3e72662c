"""Lossless mask compression: binary mask ⇄ bytes, no pickle.

A trained mask is ~95% ones, so it is stored by the positions of its minority value: the gaps
between consecutive positions go into a uint8 stream (gaps >= 255 escape to a uint32 side
stream), and zstd entropy-codes the result. The gaps of i.i.d. positions are geometric, so this
lands within a few percent of the Shannon bound n·H(p) and decodes with a handful of vectorised
numpy passes, fast enough to switch masks per request.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np
import torch
import zstandard

CODEC_NAME = "gaps-u8-zstd"
CODEC_VERSION = 1
_ESCAPE = 0  # gaps are >= 1, so 0 marks "read this gap from the uint32 side stream"
_HEADER = struct.Struct("<4sBBxxQQQ")  # magic, version, minority value, numel, count, n_escapes
_MAGIC = b"HFMK"


class MaskCodecError(ValueError):
    """A stored mask is truncated, corrupted or written by an unknown codec."""


@dataclass(frozen=True)
class EncodedMask:
    data: bytes
    shape: tuple[int, ...]
    digest: str  # sha256 of the packed mask bits, checked after decoding

    @property
    def nbytes(self) -> int:
        return len(self.data)


def mask_digest(mask: np.ndarray) -> str:
    return hashlib.sha256(np.packbits(mask.reshape(-1).astype(np.bool_)).tobytes()).hexdigest()


def encode(mask: torch.Tensor, level: int = 3) -> EncodedMask:
    """Compress a boolean mask."""
    flat = mask.detach().to("cpu", torch.bool).reshape(-1).numpy()
    numel = flat.size
    ones = int(np.count_nonzero(flat))
    minority = 0 if ones * 2 >= numel else 1
    positions = np.flatnonzero(flat == bool(minority)).astype(np.int64)
    gaps = np.diff(positions, prepend=-1)
    large = gaps >= 256
    small = gaps.astype(np.uint8)
    small[large] = _ESCAPE
    escapes = gaps[large].astype("<u4").tobytes()
    header = _HEADER.pack(_MAGIC, CODEC_VERSION, minority, numel, positions.size, int(large.sum()))
    payload = header + escapes + small.tobytes()
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    return EncodedMask(compressor.compress(payload), tuple(mask.shape), mask_digest(flat))


def decode_positions(data: bytes) -> tuple[np.ndarray, int, int]:
    """(positions of the minority value, the minority value, numel) without building the mask."""
    try:
        payload = zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as err:
        raise MaskCodecError(f"mask data is corrupted or truncated ({err})") from err
    if len(payload) < _HEADER.size:
        raise MaskCodecError("mask data is truncated (no header)")
    magic, version, minority, numel, count, n_escapes = _HEADER.unpack_from(payload)
    if magic != _MAGIC:
        raise MaskCodecError("mask data was not written by this codec (bad magic)")
    if version != CODEC_VERSION:
        raise MaskCodecError(f"mask codec version {version} is not supported (this version reads {CODEC_VERSION})")
    body = memoryview(payload)[_HEADER.size :]
    if len(body) != 4 * n_escapes + count or minority not in (0, 1):
        raise MaskCodecError("mask data is corrupted (lengths do not match its header)")
    escapes = np.frombuffer(body[: 4 * n_escapes], dtype="<u4")
    gaps = np.frombuffer(body[4 * n_escapes :], dtype=np.uint8).astype(np.int64)
    escaped = np.flatnonzero(gaps == _ESCAPE)
    if escaped.size != n_escapes:
        raise MaskCodecError("mask data is corrupted (escape count does not match its header)")
    gaps[escaped] = escapes
    positions = np.cumsum(gaps) - 1
    if count and (positions[-1] >= numel or gaps.min() < 1):
        raise MaskCodecError("mask data is corrupted (positions out of range)")
    return positions, minority, numel


def decode(encoded: EncodedMask) -> torch.Tensor:
    """Decompress to a boolean tensor, verified against the stored digest."""
    positions, minority, numel = decode_positions(encoded.data)
    expected = int(np.prod(encoded.shape, dtype=np.int64))
    if numel != expected:
        raise MaskCodecError(f"mask data holds {numel} values but its shape {list(encoded.shape)} needs {expected}")
    flat = np.full(numel, not minority, dtype=np.bool_)
    flat[positions] = bool(minority)
    if mask_digest(flat) != encoded.digest:
        raise MaskCodecError("mask data is corrupted (checksum mismatch after decoding)")
    return torch.from_numpy(flat).reshape(encoded.shape)


def shannon_bound_bytes(numel: int, zeros: int) -> float:
    """n·H(p) in bytes: what any lossless code of an i.i.d. mask needs on average."""
    p = zeros / numel
    if p in (0.0, 1.0):
        return 0.0
    return numel * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) / 8
