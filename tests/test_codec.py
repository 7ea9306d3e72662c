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
