"""Mask codec on the BERT-base shape: stored bytes vs the Shannon bound, encode/decode time.

The masked weights are blocks 2-11 and the pooler (71,368,704 weights), masked i.i.d. at each
sparsity, which is what a freshly initialised (and, to the codec, a trained) mask looks like.

    python bench/codec.py
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

from hf_masking import MaskedModel, MaskingConfig, codec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.05, 0.10])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig())
    print(
        f"{'p':>5} {'weights':>12} {'bound MB':>9} {'stored MB':>9} {'ratio':>6} {'1-bit MB':>8} "
        f"{'encode s':>8} {'decode s':>8}"
    )
    for sparsity in args.sparsities:
        model = MaskedModel(base, MaskingConfig(initial_sparsity=sparsity, mask_classifier=False))
        masks = model.masks()
        numel = sum(m.numel() for m in masks.values())
        zeros = sum(int(m.numel() - m.count_nonzero()) for m in masks.values())
        encode_times, decode_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            encoded = {name: codec.encode(mask) for name, mask in masks.items()}
            encode_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            decoded = {name: codec.decode(e) for name, e in encoded.items()}
            decode_times.append(time.perf_counter() - start)
        assert all(torch.equal(decoded[n], masks[n]) for n in masks)
        stored = sum(e.nbytes for e in encoded.values())
        bound = codec.shannon_bound_bytes(numel, zeros)
        print(
            f"{zeros / numel:5.3f} {numel:>12,} {bound / 1e6:9.3f} {stored / 1e6:9.3f} {stored / bound:6.3f} "
            f"{numel / 8 / 1e6:8.3f} {min(encode_times):8.3f} {min(decode_times):8.3f}"
        )
        model.unload()  # the next sparsity wraps the same base again


if __name__ == "__main__":
    main()
