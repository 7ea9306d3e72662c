"""Lossless mask compression: binary mask ⇄ bytes, no pickle.

A trained mask is ~95% ones, so it is stored by the positions of its minority value. The gaps
between consecutive positions are Rice-coded: gap - 1 = q·2^k + r, with the quotients q in a
unary bit stream and the k-bit remainders in a fixed-width one. For i.i.d. positions the gaps are
geometric, for which a well-chosen Rice code is within ~1% of the Shannon bound n·H(p); keeping
the two streams apart makes both encoding and decoding a handful of vectorised numpy passes.

Coding a mask alone cannot beat n·H(p). But the loader regenerates every weight's initial score
(`binarizer.init_draw`), and where a score started predicts where it ends: ``rice-gaps-by-init``
(`InitContext`) sorts a layer's weights into equal-width buckets of initial score and codes each
bucket's minority positions (or its raw bits, where that is smaller) in a stream of its own.
On trained masks that is ~0.55 of n·H(p). Only the decoder's context comes from the repo's
config, never a pattern or a code path; the digest of the decoded positions is checked on
every decode, so a context that does not regenerate exactly fails loudly.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

CODEC_NAME = "rice-gaps"
CODEC_VERSION = 1
CONDITIONAL_CODEC_NAME = "rice-gaps-by-init"
CONDITIONAL_CODEC_VERSION = 1
# magic, version, minority value, rice k, numel, count, unary bits, crc32 of the body
_HEADER = struct.Struct("<4sBBBxQQQI")
_MAGIC = b"HFMK"
# magic, version, buckets, ranked buckets, numel, zeros, crc32 of the body (the bucket table, then the streams)
_HEADER3 = struct.Struct("<4sBBBxQQI")
_MAGIC3 = b"HFM3"
NUM_BUCKETS = 32
_MAX_BUCKETS = 64
_BITMAP = 0x80  # table flag: the bucket is stored as raw bits


class MaskCodecError(ValueError):
    """A stored mask is truncated, corrupted or written by an unknown codec."""


@dataclass(frozen=True)
class InitContext:
    """What the loader knows before reading a mask: how training drew this layer's initial scores.

    Rebuilt from the repo's config (seed, initial range, threshold) and the module's name, never
    read from the mask data. `buckets` sorts the weights by initial score into equal-width bins with
    a boundary at τ itself, fine where training moves the mask (near and below τ) and one bin for
    the scores far above; exact fp32 arithmetic, the same at encoding and decoding.
    """

    seed: int
    module_name: str
    low: float
    high: float
    threshold: float

    def buckets(self, shape: tuple[int, ...], count: int) -> np.ndarray:
        """Each weight's bucket (uint8, flat): equal-width bins from the bottom of the initial range, with τ on a
        boundary (as many bins below it as its share of the range, at least one); scores above the last bin's
        edge share it. One pass of torch's vectorised kernels over the regenerated draw."""
        from .binarizer import init_draw

        draw = init_draw(tuple(shape), self.module_name, self.seed, self.low, self.high).reshape(-1)
        below = min(max(1, round(count * (self.threshold - self.low) / (self.high - self.low))), count - 1)
        draw.sub_(self.low).mul_(below / (self.threshold - self.low)).clamp_(0, count - 1)
        return draw.to(torch.uint8).numpy()


@dataclass(frozen=True)
class EncodedMask:
    data: bytes
    shape: tuple[int, ...]
    digest: str  # `positions_digest` of the mask, checked after decoding
    context: InitContext | None = None  # set for rice-gaps-by-init data: what decoding needs besides the bytes

    @property
    def nbytes(self) -> int:
        return len(self.data)


def positions_digest(positions: np.ndarray, minority: int, numel: int) -> str:
    """sha256 of what a mask is (its size, minority value and their positions), to check decoding."""
    digest = hashlib.sha256(f"{numel}:{minority}:".encode())
    digest.update(np.ascontiguousarray(positions, dtype="<i8").tobytes())
    return digest.hexdigest()


def digest_matches(full: str, recorded: str) -> bool:
    """A recorded digest is the full sha256 or its first characters (format 3 keeps 16)."""
    return len(recorded) >= 16 and full[: len(recorded)] == recorded


def _rice_bits(values: np.ndarray, k: int) -> int:
    return int((values >> k).sum()) + values.size * (k + 1)


def _best_k(values: np.ndarray) -> int:
    if values.size == 0:
        return 0
    guess = max(0, int(np.round(np.log2(max(values.mean(), 1.0) * np.log(2)))))
    candidates = [k for k in (guess - 1, guess, guess + 1) if 0 <= k <= 62]
    return min(candidates, key=lambda k: _rice_bits(values, k))


def _rice_encode(values: np.ndarray) -> tuple[int, int, bytes]:
    """(k, unary bits, bytes) of the Rice code of non-negative `values`: the unary quotients, then k bit planes."""
    values = values.astype(np.uint64)
    k = _best_k(values)
    quotients = (values >> np.uint64(k)).astype(np.int64)
    unary_bits = int(quotients.sum()) + values.size
    unary = np.ones(unary_bits, dtype=np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 0  # each quotient: q ones, then a zero
    # Remainders as k bit planes (bit j of every value, then bit j + 1…): each decodes in one pass.
    planes = [np.packbits(((values >> np.uint64(j)) & np.uint64(1)).astype(np.uint8)).tobytes() for j in range(k)]
    return k, unary_bits, np.packbits(unary).tobytes() + b"".join(planes)


def _rice_length(count: int, unary_bits: int, k: int) -> int:
    return (unary_bits + 7) // 8 + k * ((count + 7) // 8)


def _rice_decode(body: memoryview, count: int, unary_bits: int, k: int, index_type: type) -> np.ndarray:
    """The values `_rice_encode` coded, from exactly `_rice_length` bytes."""
    unary_bytes, plane_bytes = (unary_bits + 7) // 8, (count + 7) // 8
    unary = np.unpackbits(np.frombuffer(body[:unary_bytes], dtype=np.uint8), count=unary_bits)
    ends = np.flatnonzero(unary == 0)
    if ends.size != count:
        raise MaskCodecError("mask data is corrupted (wrong number of values)")
    values = (np.diff(ends.astype(index_type), prepend=index_type(-1)) - 1) << k
    remainders = np.zeros(count, dtype=index_type)
    for j in range(k):
        plane = np.frombuffer(body[unary_bytes + j * plane_bytes : unary_bytes + (j + 1) * plane_bytes], np.uint8)
        remainders |= np.unpackbits(plane, count=count).astype(remainders.dtype) << j
    return values | remainders


def _gaps(positions: np.ndarray) -> np.ndarray:
    return np.diff(positions, prepend=-1) - 1  # gap - 1 >= 0


def _positions(gaps: np.ndarray, index_type: type) -> np.ndarray:
    return np.cumsum(gaps + 1, dtype=index_type) - 1  # numpy would widen int32 sums to int64


def _index_type(numel: int, k: int = 0) -> type:
    # int32 halves the memory traffic of the passes; layers beyond 2^31 weights need int64.
    return np.int32 if numel < 2**31 and k < 31 else np.int64


def encode(mask: torch.Tensor, context: InitContext | None = None) -> EncodedMask:
    """Compress a boolean mask; given the layer's `context`, conditionally on its initial scores."""
    flat = mask.detach().to("cpu", torch.bool).reshape(-1).numpy()
    numel = flat.size
    minority = 0 if np.count_nonzero(flat) * 2 >= numel else 1
    positions = np.flatnonzero(flat == bool(minority)).astype(np.int64)
    digest = positions_digest(positions, minority, numel)
    k, unary_bits, body = _rice_encode(_gaps(positions))
    header = _HEADER.pack(_MAGIC, CODEC_VERSION, minority, k, numel, positions.size, unary_bits, zlib.crc32(body))
    data = header + body
    if context is not None:  # coded given the initial scores, unless that comes out larger (tiny or untrained layers)
        conditional = _encode_by_init(flat, tuple(mask.shape), context)
        data = conditional if len(conditional) < len(data) else data
    return EncodedMask(data, tuple(mask.shape), digest, context)


def is_conditional(encoded: EncodedMask) -> bool:
    """Whether decoding `encoded` regenerates the layer's initial scores (rice-gaps-by-init data)."""
    return encoded.data[:4] == _MAGIC3


def plain(positions: np.ndarray, minority: int, numel: int, shape: tuple[int, ...], digest: str) -> EncodedMask:
    """The context-free code of already-decoded positions: what a loaded mask keeps after its first decode,
    so that decoding again (after a cache eviction, or with the cache off) needs no initial scores."""
    positions = np.asarray(positions, dtype=np.int64)
    k, unary_bits, body = _rice_encode(_gaps(positions))
    header = _HEADER.pack(_MAGIC, CODEC_VERSION, minority, k, numel, positions.size, unary_bits, zlib.crc32(body))
    return EncodedMask(header + body, tuple(shape), digest, None)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: memoryview, offset: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        if offset >= len(data):
            raise MaskCodecError("mask data is truncated (in its bucket table)")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
    raise MaskCodecError("mask data is corrupted (a bucket table entry is too long)")


def _ranked_order(buckets: np.ndarray, ranked: int, numel: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices of the weights in buckets below `ranked`, sorted by bucket stably; where each bucket
    starts in them, with the end appended). Only these need sorting: the rest are coded by flat position."""
    index_type = _index_type(numel)
    if ranked == NUM_BUCKETS:
        chosen = np.arange(numel, dtype=index_type)
        keys = buckets
    else:
        chosen = np.flatnonzero(buckets < ranked).astype(index_type)
        keys = buckets[chosen]
    order = chosen[np.argsort(keys, kind="stable")]  # a radix sort for uint8
    starts = np.zeros(ranked + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys, minlength=ranked)[:ranked], out=starts[1:])
    return order, starts


def _rice_entry(values: np.ndarray, coded: int) -> tuple[bytes, bytes]:
    """(table entry, stream) of Rice-coded gaps: flags (coded value | k << 1), count, unary bits."""
    k, unary_bits, stream = _rice_encode(_gaps(values))
    entry = bytes([coded | (k << 1)]) + _varint(values.size) + (_varint(unary_bits) if values.size else b"")
    return entry, (stream if values.size else b"")


def _bucket_entry(bits: np.ndarray) -> tuple[bytes, bytes]:
    """One ranked bucket: the ranks of its rarer value, Rice-coded, or its raw bits where that is smaller."""
    coded = 0 if np.count_nonzero(bits) * 2 >= bits.size else 1
    entry, stream = _rice_entry(np.flatnonzero(bits == bool(coded)), coded)
    bitmap = np.packbits(bits).tobytes()
    if len(bitmap) + 1 < len(stream) + len(entry):
        return bytes([_BITMAP]), bitmap
    return entry, stream


# How many of the low buckets (where training moves the mask) to code by rank within the bucket; above them
# masked-out weights are rare, and their flat positions cost little more than ranks while needing no sort.
_RANKED_CHOICES = (4, 8, 12, 16, 20, 24, 28, 32)


def _encode_by_init(flat: np.ndarray, shape: tuple[int, ...], context: InitContext) -> bytes:
    buckets = context.buckets(shape, NUM_BUCKETS)
    order, starts = _ranked_order(buckets, NUM_BUCKETS, flat.size)
    ordered = flat[order]
    per_bucket = [_bucket_entry(ordered[starts[b] : starts[b + 1]]) for b in range(NUM_BUCKETS)]
    zeros = np.flatnonzero(~flat)
    zero_buckets = buckets[zeros]
    options = []
    for ranked in _RANKED_CHOICES:
        parts = [*per_bucket[:ranked], _rice_entry(zeros[zero_buckets >= ranked], 0)]
        options.append((sum(len(entry) + len(stream) for entry, stream in parts), ranked, parts))
    # The fewest ranked buckets within 1% of the smallest: decoding sorts only the weights of those.
    smallest = min(size for size, _, _ in options)
    _, ranked, parts = next(option for option in options if option[0] <= 1.01 * smallest)
    body = b"".join(entry for entry, _ in parts) + b"".join(stream for _, stream in parts)
    header = _HEADER3.pack(
        _MAGIC3, CONDITIONAL_CODEC_VERSION, NUM_BUCKETS, ranked, flat.size, int(zeros.size), zlib.crc32(body)
    )
    return header + body


def _parse_by_init(data: bytes) -> tuple[int, int, int, list[tuple[int, int, int, int]], memoryview]:
    """Check a rice-gaps-by-init stream without its context: (numel, zeros, ranked buckets, table, streams).

    The table holds one entry per ranked bucket, then one for the flat positions of the masked-out
    weights in the other buckets.
    """
    if len(data) < _HEADER3.size:
        raise MaskCodecError("mask data is truncated (no header)")
    magic, version, buckets, ranked, numel, zeros, crc = _HEADER3.unpack_from(data)
    if magic != _MAGIC3:
        raise MaskCodecError(f"mask data was not written by {CONDITIONAL_CODEC_NAME} (bad magic)")
    if version != CONDITIONAL_CODEC_VERSION:
        raise MaskCodecError(
            f"mask codec {CONDITIONAL_CODEC_NAME} version {version} is not supported (this version reads "
            f"{CONDITIONAL_CODEC_VERSION})"
        )
    body = memoryview(data)[_HEADER3.size :]
    if zlib.crc32(body) != crc:
        raise MaskCodecError("mask data is corrupted (checksum mismatch)")
    if buckets != NUM_BUCKETS or not 0 < ranked <= buckets or zeros > numel:
        raise MaskCodecError("mask data is corrupted (its header is out of range)")
    entries, offset = [], 0  # (flags, count, unary bits, k): flags bit 0 the coded value, _BITMAP raw bits
    for i in range(ranked + 1):
        if offset >= len(body):
            raise MaskCodecError("mask data is truncated (in its bucket table)")
        flags = body[offset]
        offset += 1
        if flags & _BITMAP:
            if i == ranked:
                raise MaskCodecError("mask data is corrupted (its flat entry is marked as raw bits)")
            entries.append((flags, 0, 0, 0))
            continue
        count, offset = _read_varint(body, offset)
        unary_bits, offset = _read_varint(body, offset) if count else (0, offset)
        k = flags >> 1
        if count > numel or k > 62 or unary_bits < count or unary_bits > count + (numel >> k) + 1:
            raise MaskCodecError("mask data is corrupted (a bucket table entry is out of range)")
        entries.append((flags & 1, count, unary_bits, k))
    return numel, zeros, ranked, entries, body[offset:]


def _decode_rice(streams: memoryview, offset: int, entry: tuple, size: int, index_type: type) -> tuple[np.ndarray, int]:
    """(values, bytes used) of one Rice entry whose values lie in [0, size)."""
    _, count, unary_bits, k = entry
    if not count:
        return np.zeros(0, index_type), 0
    length = _rice_length(count, unary_bits, k)
    if offset + length > len(streams) or count > size:
        raise MaskCodecError("mask data is truncated or corrupted (a bucket's stream does not fit)")
    values = _positions(_rice_decode(streams[offset : offset + length], count, unary_bits, k, index_type), index_type)
    if values[-1] >= size:
        raise MaskCodecError("mask data is corrupted (positions out of range)")
    return values, length


def _decode_by_init(encoded: EncodedMask) -> tuple[np.ndarray, int, int]:
    numel, zeros, ranked, entries, streams = _parse_by_init(encoded.data)
    _check_numel(encoded, numel)
    if encoded.context is None:
        raise MaskCodecError(f"{CONDITIONAL_CODEC_NAME} data needs the layer's initial-score context to decode")
    buckets = encoded.context.buckets(encoded.shape, NUM_BUCKETS)
    order, starts = _ranked_order(buckets, ranked, numel)
    index_type = _index_type(numel)
    found, offset = [], 0  # flat positions of the masked-out weights
    for b, entry in enumerate(entries[:ranked]):
        size = int(starts[b + 1] - starts[b])
        if entry[0] & _BITMAP:
            length = (size + 7) // 8
            if offset + length > len(streams):
                raise MaskCodecError("mask data is truncated (a bucket's bits are missing)")
            bits = np.unpackbits(np.frombuffer(streams[offset : offset + length], np.uint8), count=size)
            ranks = np.flatnonzero(bits == 0)
        else:
            ranks, length = _decode_rice(streams, offset, entry, size, index_type)
            if entry[0] == 1:  # the bucket coded its kept weights: the masked-out ones are the others
                keep = np.ones(size, dtype=bool)
                keep[ranks] = False
                ranks = np.flatnonzero(keep)
        found.append(order[starts[b] + ranks])
        offset += length
    rest, length = _decode_rice(streams, offset, entries[ranked], numel, index_type)
    if entries[ranked][0] != 0 or (rest.size and (buckets[rest] < ranked).any()):
        raise MaskCodecError("mask data is corrupted (its flat entry names weights of a ranked bucket)")
    found.append(rest)
    if offset + length != len(streams):
        raise MaskCodecError("mask data is truncated or corrupted (its length does not match its table)")
    masked_out = np.sort(np.concatenate(found))
    if masked_out.size != zeros or (masked_out.size > 1 and not (np.diff(masked_out) > 0).all()):
        raise MaskCodecError("mask data is corrupted (wrong number of values)")
    if zeros * 2 <= numel:
        return masked_out.astype(index_type, copy=False), 0, numel
    kept = np.ones(numel, dtype=bool)
    kept[masked_out] = False
    return np.flatnonzero(kept).astype(index_type), 1, numel


def decode_positions(data: bytes | EncodedMask) -> tuple[np.ndarray, int, int]:
    """(positions of the minority value, the minority value, numel) without building the mask.

    Conditionally coded data (an `EncodedMask` with a context) is checked against its digest here,
    on every decode, since only decoding regenerates its context.
    """
    if isinstance(data, EncodedMask):
        if data.data[:4] == _MAGIC3:
            try:
                positions, minority, numel = _decode_by_init(data)
            except MaskCodecError as err:
                raise MaskCodecError(f"{err}, or its initial scores did not regenerate as at training") from err
            if not digest_matches(positions_digest(positions, minority, numel), data.digest):
                raise MaskCodecError(
                    "mask data is corrupted, or its initial scores did not regenerate as at training (checksum "
                    "mismatch after decoding)"
                )
            return positions, minority, numel
        data = data.data
    if len(data) < _HEADER.size:
        raise MaskCodecError("mask data is truncated (no header)")
    if data[:4] == _MAGIC3:
        raise MaskCodecError(f"{CONDITIONAL_CODEC_NAME} data needs the layer's initial-score context to decode")
    magic, version, minority, k, numel, count, unary_bits, crc = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise MaskCodecError("mask data was not written by this codec (bad magic)")
    if version != CODEC_VERSION:
        raise MaskCodecError(f"mask codec version {version} is not supported (this version reads {CODEC_VERSION})")
    body = memoryview(data)[_HEADER.size :]
    if len(body) != _rice_length(count, unary_bits, k):
        raise MaskCodecError("mask data is truncated or corrupted (its length does not match its header)")
    if zlib.crc32(body) != crc or minority not in (0, 1) or count > numel:
        raise MaskCodecError("mask data is corrupted (checksum mismatch)")
    index_type = _index_type(numel, k)
    positions = _positions(_rice_decode(body, count, unary_bits, k, index_type), index_type)
    if count and positions[-1] >= numel:
        raise MaskCodecError("mask data is corrupted (positions out of range)")
    return positions, minority, numel


def masked_out(encoded: EncodedMask) -> tuple[int, int]:
    """(how many weights the mask removes, how many it covers); conditionally coded data says it in its header."""
    if encoded.data[:4] == _MAGIC3:
        numel, zeros, _, _, _ = _parse_by_init(encoded.data)
        return zeros, numel
    positions, minority, numel = decode_positions(encoded.data)
    return (positions.size if minority == 0 else numel - positions.size), numel


def _verified_plain(encoded: EncodedMask) -> tuple[np.ndarray, int, int]:
    positions, minority, numel = decode_positions(encoded.data)
    _check_numel(encoded, numel)
    if not digest_matches(positions_digest(positions, minority, numel), encoded.digest):
        raise MaskCodecError("mask data is corrupted (checksum mismatch after decoding)")
    return positions, minority, numel


def _check_numel(encoded: EncodedMask, numel: int) -> None:
    expected = math.prod(int(n) for n in encoded.shape)  # exact: numpy's int64 product wraps ([2**40, 2**40] -> 0)
    if numel != expected:
        raise MaskCodecError(f"mask data holds {numel} values but its shape {list(encoded.shape)} needs {expected}")


def verify(encoded: EncodedMask) -> None:
    """Check a mask as far as it can be checked without its context, as a loader does.

    Plain data is decoded and checked against the stored digest and shape. Conditionally coded
    data is checked for structure, checksum and shape here; the digest of its positions is
    checked when it is decoded (the first forward), so loading costs no pass over the initial scores.
    """
    if encoded.data[:4] == _MAGIC3:
        _check_numel(encoded, _parse_by_init(encoded.data)[0])
    else:
        _verified_plain(encoded)


def decode(encoded: EncodedMask) -> torch.Tensor:
    """Decompress to a boolean tensor, verified against the stored digest."""
    if encoded.data[:4] == _MAGIC3:
        verify(encoded)
        positions, minority, numel = decode_positions(encoded)
    else:
        positions, minority, numel = _verified_plain(encoded)
    flat = np.full(numel, not minority, dtype=np.bool_)
    flat[positions] = bool(minority)
    return torch.from_numpy(flat).reshape(encoded.shape)


def shannon_bound_bytes(numel: int, zeros: int) -> float:
    """n·H(p) in bytes: what any lossless code of an i.i.d. mask needs on average."""
    p = zeros / numel
    if p in (0.0, 1.0):
        return 0.0
    return numel * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) / 8
