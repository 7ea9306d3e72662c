"""Mask codec: stored bytes against the bounds, and encode/decode time, for masks as training leaves them.

An untrained mask equals its initial mask and codes to almost nothing given the initial scores, so
byte counts must come from trained masks: `--masks` takes trained repos (e.g. `make demo`'s
runs/demo-sst2, or what `bench/accuracy.py --preset cpu_heads` kept in bench/out/cpu_heads). Times
on the BERT-base shape (71M masked weights, config-built: no pretrained BERT-base offline) use
masks drawn like trained ones (initial scores plus noise, 8% masked out), and are labelled so.

    python bench/codec.py --masks runs/demo-sst2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

from hf_masking import MaskedModel, MaskingConfig, codec, repo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load_time import trained_like  # noqa: E402
from storage import conditional_bound_bytes  # noqa: E402


def report(label: str, stored: repo.StoredMask, repeats: int) -> None:
    masks = {name: codec.decode(m) for name, m in stored.masks.items()}
    contexts = {name: m.context for name, m in stored.masks.items()}
    numel = sum(m.numel() for m in masks.values())
    zeros = sum(int(m.numel() - m.count_nonzero()) for m in masks.values())
    timings = {}
    for codec_name, context_of in (("v2 codec (alone)", lambda n: None), ("v3 (given init)", contexts.get)):
        encode_times, decode_times = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            encoded = {name: codec.encode(mask, context_of(name)) for name, mask in masks.items()}
            encode_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            for e in encoded.values():
                codec.decode_positions(e)
            decode_times.append(time.perf_counter() - start)
        assert all(torch.equal(codec.decode(encoded[n]), masks[n]) for n in masks)
        timings[codec_name] = (sum(e.nbytes for e in encoded.values()), min(encode_times), min(decode_times))
    alone = codec.shannon_bound_bytes(numel, zeros)
    conditional = conditional_bound_bytes(stored)
    print(f"{label}: {numel:,} masked weights, {zeros / numel:.4f} masked out")
    print(f"  n·H(p) {alone:,.0f} B; given the initial-score bucket {conditional:,.0f} B ({conditional / alone:.3f})")
    for codec_name, (size, encode_s, decode_s) in timings.items():
        print(
            f"  {codec_name:18s} {size:>10,} B = {size / alone:.3f} n·H(p) = {size / conditional:.3f} conditional "
            f"bound; encode {encode_s:.3f} s, decode {decode_s:.3f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masks", nargs="*", default=[], help="trained mask repos to measure")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for folder in args.masks:
        report(f"trained mask {folder}", repo.read_folder(folder), args.repeats)
    torch.manual_seed(0)
    model = MaskedModel(BertForSequenceClassification(BertConfig()), MaskingConfig(mask_classifier=False))
    trained_like(model)
    report("BERT-base shape, masks drawn like trained ones (timing only)", model.to_stored_mask(), args.repeats)


if __name__ == "__main__":
    main()
