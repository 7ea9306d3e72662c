import numpy as np
import pytest
import torch

from hf_masking import codec


def _mask(shape, p_zero, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random(shape) >= p_zero)


@pytest.mark.parametrize("p_zero", [0.0, 0.001, 0.05, 0.3, 0.5, 0.7, 0.999, 1.0])
@pytest.mark.parametrize("shape", [(1,), (7, 13), (64, 300)])
def test_round_trip_is_lossless(shape, p_zero):
    mask = _mask(shape, p_zero)
    encoded = codec.encode(mask)
    decoded = codec.decode(encoded)
    assert decoded.shape == mask.shape and torch.equal(decoded, mask)


def test_long_runs_and_structured_masks():
    mask = torch.ones(10_000, dtype=torch.bool)
    mask[[0, 5000, 9999]] = False  # gaps far larger than the Rice parameter suggests
    assert torch.equal(codec.decode(codec.encode(mask)), mask)
    rows = torch.ones(300, 200, dtype=torch.bool)
    rows[::7] = False  # whole rows masked out, as a trained mask may have
    assert torch.equal(codec.decode(codec.encode(rows)), rows)


@pytest.mark.parametrize("p_zero", [0.05, 0.10])
def test_size_is_within_two_percent_of_the_shannon_bound(p_zero):
    n = 4_000_000
    mask = _mask((n,), p_zero)
    encoded = codec.encode(mask)
    bound = codec.shannon_bound_bytes(n, int((~mask).sum()))
    assert encoded.nbytes <= 1.02 * bound, encoded.nbytes / bound
    assert encoded.nbytes < n / 8 / 2  # well under 1-bit packing


def test_corruption_and_truncation_are_detected():
    mask = _mask((100, 100), 0.05)
    encoded = codec.encode(mask)
    truncated = codec.EncodedMask(encoded.data[:-3], encoded.shape, encoded.digest)
    with pytest.raises(codec.MaskCodecError, match="truncated"):
        codec.decode(truncated)
    flipped = bytearray(encoded.data)
    flipped[-5] ^= 0x10
    with pytest.raises(codec.MaskCodecError, match="corrupted"):
        codec.decode(codec.EncodedMask(bytes(flipped), encoded.shape, encoded.digest))
    with pytest.raises(codec.MaskCodecError, match="bad magic"):
        codec.decode(codec.EncodedMask(b"XXXX" + encoded.data[4:], encoded.shape, encoded.digest))
    newer = bytearray(encoded.data)
    newer[4] = 99
    with pytest.raises(codec.MaskCodecError, match="version 99"):
        codec.decode(codec.EncodedMask(bytes(newer), encoded.shape, encoded.digest))
    with pytest.raises(codec.MaskCodecError, match="checksum"):
        codec.decode(codec.EncodedMask(encoded.data, encoded.shape, "0" * 64))
    with pytest.raises(codec.MaskCodecError, match="shape"):
        codec.decode(codec.EncodedMask(encoded.data, (10, 10), encoded.digest))


# ----- rice-gaps-by-init: a mask coded given its layer's initial scores ----------------------
LOW, HIGH, TAU = -0.02, 0.58, 0.01  # the default config's initial range (5% below τ)


def _context(name: str = "layer", seed: int = 0, threshold: float = TAU) -> codec.InitContext:
    return codec.InitContext(seed, name, LOW, HIGH, threshold)


def _trained_like(shape, name: str = "layer", seed: int = 0, noise: float = 0.05) -> torch.Tensor:
    """A mask as training leaves one: where a score started decides much of where it ends."""
    from hf_masking.binarizer import init_draw

    generator = torch.Generator().manual_seed(1)
    start = init_draw(shape, name, seed, LOW, HIGH)
    return start + noise * torch.randn(shape, generator=generator) >= TAU


@pytest.mark.parametrize("p_zero", [0.0, 0.05, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("shape", [(1,), (7, 13), (96, 300)])
def test_conditional_round_trip_is_lossless(shape, p_zero):
    for mask in (_mask(shape, p_zero), _trained_like(shape), ~_trained_like(shape)):
        encoded = codec.encode(mask, _context())
        assert torch.equal(codec.decode(encoded), mask)
        assert codec.masked_out(encoded) == (int((~mask).sum()), mask.numel())


def test_conditional_coding_of_a_trained_mask_beats_the_bound_for_the_mask_alone():
    mask = _trained_like((768, 768))
    encoded = codec.encode(mask, _context())
    assert encoded.data[:4] == b"HFM3"
    alone = codec.shannon_bound_bytes(mask.numel(), int((~mask).sum()))
    assert encoded.nbytes < 0.6 * alone, encoded.nbytes / alone
    # An untrained mask is its initial mask: it codes to almost nothing.
    initial = codec.encode(_trained_like((768, 768), noise=0.0), _context())
    assert initial.nbytes < 0.05 * alone


def test_a_layer_that_gains_nothing_keeps_the_plain_code():
    mask = _mask((64, 300), 0.05)  # independent of the initial scores
    encoded = codec.encode(mask, _context())
    assert encoded.data[:4] == b"HFMK" and encoded.nbytes == codec.encode(mask).nbytes
    assert torch.equal(codec.decode(encoded), mask)


def test_conditional_data_decodes_only_with_the_context_it_was_coded_with():
    mask = _trained_like((256, 300))
    encoded = codec.encode(mask, _context())
    codec.verify(encoded)  # structure and shape: no context needed, as at load time
    for other in (_context(seed=1), _context(name="other"), _context(threshold=0.3)):
        wrong = codec.EncodedMask(encoded.data, encoded.shape, encoded.digest, other)
        with pytest.raises(codec.MaskCodecError, match="did not regenerate as at training"):
            codec.decode(wrong)
    with pytest.raises(codec.MaskCodecError, match="needs the layer's initial-score context"):
        codec.decode(codec.EncodedMask(encoded.data, encoded.shape, encoded.digest))
    short = codec.EncodedMask(encoded.data, encoded.shape, encoded.digest[:16], encoded.context)
    assert torch.equal(codec.decode(short), mask)  # format 3 keeps 16 hex characters of the digest


def _resealed(data: bytes, body: bytes) -> bytes:
    """A conditional stream with a new body and a matching checksum, as a hostile author would write it."""
    import struct
    import zlib

    header = bytearray(data[:28])
    struct.pack_into("<I", header, 24, zlib.crc32(body))
    return bytes(header) + body


def test_every_damaged_conditional_stream_is_a_codec_error():
    """Truncations, bit flips (checksum fixed up, so the table and streams are parsed) and rewritten headers:
    each is refused with MaskCodecError or decodes to a mask the digest refuses, never another exception."""
    import random

    mask = _trained_like((64, 96))
    encoded = codec.encode(mask, _context())
    assert encoded.data[:4] == b"HFM3"
    body = encoded.data[28:]
    cases = [encoded.data[:n] for n in range(0, len(encoded.data), 3)]
    rng = random.Random(0)
    for bit in rng.sample(range(8 * len(body)), min(400, 8 * len(body))):
        flipped = bytearray(body)
        flipped[bit // 8] ^= 1 << (bit % 8)
        cases.append(_resealed(encoded.data, bytes(flipped)))
    for field, value in ((5, 7), (5, 0), (5, 255)):  # the bucket count
        header = bytearray(encoded.data)
        header[field] = value
        cases.append(bytes(header))
    for data in cases:
        damaged = codec.EncodedMask(data, encoded.shape, encoded.digest, encoded.context)
        try:
            decoded = codec.decode(damaged)
        except codec.MaskCodecError:
            continue
        assert torch.equal(decoded, mask)  # a flip that changes nothing decoded (e.g. padding bits)
