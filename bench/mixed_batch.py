"""Mixed-mask batches: 32 rows spread over 1, 2, 4 and 11 masks, against the alternatives, in one run.

For each model (all-MiniLM-L6-v2 and the BERT-base shape) and sequence length, the median time (the
variants measured in turns, each once per turn, `--repeats` turns) of:
- base: the plain model, no masking, on the batch (the reference of every ratio);
- mixed: ``model(**batch, mask_names=[...])`` on the resident base, with the compiled kernel that
  computes every mask's sparse correction in one call per layer (`hf_masking.row_kernel`);
- mixed-sorted: the same with the batch's rows ordered by mask (what `hf-masking serve` does), so that the
  layers take each mask's rows as a slice instead of gathering and scattering them;
- mixed-torch: the same (interleaved) without that kernel (``HF_MASKING_ROW_KERNEL=0``: torch's sparse
  product per mask);
- grouped: one forward per mask on its rows, with ``set_active_mask`` in between;
- lora-mixed: PEFT LoRA (r=8 on query/value, PEFT's default for BERT) with as many adapters,
  ``model(**batch, adapter_names=[...])``.
The masks are random masks at 8% sparsity (the SST-2 demo mask has 8.3%). ``--kernels`` adds the
sweep behind `hf_masking.fixed_mask`'s choice between its dense and sparse kernels.

    python bench/mixed_batch.py [--models minilm bert-base] [--lengths 128 8] [--repeats 3] [--kernels]
    python bench/mixed_batch.py --many   # 1, 2, 4, 11, 32, 100 masks loaded, rows spread over all of them
    python bench/mixed_batch.py --generate   # generate(..., mask_names=...) on a GPT-2 (124M) shape
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import build  # noqa: E402

ROWS = 32
SPREADS = (1, 2, 4, 11)


def timed(call, repeats: int) -> float:
    call()  # warm-up: allocator, kernels, decoded-mask cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(calls: dict, repeats: int) -> dict:
    """Median time of each call, measured in turns (each call once per turn, after one warm-up round), so that
    a slower stretch of a shared machine hits every variant alike and each ratio compares like with like."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def masked_models(base, n_masks: int, heads: bool = True):
    """A serving MaskedModel with n loaded masks (m0…) at 8%, each with its own head if `heads`, on a copy of `base`."""
    from hf_masking import MaskedModel, MaskingConfig
    from hf_masking.binarizer import init_scores

    trainer = MaskedModel(copy.deepcopy(base), MaskingConfig(initial_sparsity=0.08))
    stored = []
    for seed in range(n_masks):
        config = MaskingConfig(initial_sparsity=0.08, seed=seed)
        with torch.no_grad():
            for name, layer in trainer.masked_modules().items():
                layer.mask_scores.copy_(init_scores(layer.weight.shape, name, config))
            if heads:
                torch.manual_seed(seed)
                trainer.get_base_model().classifier.weight.normal_(std=0.02)
        stored.append(trainer.to_stored_mask())
    serving = MaskedModel(
        copy.deepcopy(base), stored[0].config, trainable=False, masked_modules=stored[0].record["masked_modules"]
    )
    for seed, mask in enumerate(stored):
        serving.load_mask(mask, f"m{seed}")
    serving.set_active_mask("m0")
    return serving.eval()


def gpt2_shape(small: bool = False):
    """A GPT-2 LM from its config (no download): the 124M shape, or a 4-block 64-wide one for CI."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # Decoders mask every block but the bottom two by default: the small shape has four.
    size = {"n_embd": 64, "n_layer": 4, "n_head": 4} if small else {"n_embd": 768, "n_layer": 12, "n_head": 12}
    vocab = 1000 if small else 50257
    config = GPT2Config(vocab_size=vocab, n_positions=256, bos_token_id=vocab - 1, eos_token_id=vocab - 1, **size)
    return GPT2LMHeadModel(config).eval()


def lora_model(base, n_adapters: int):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], init_lora_weights=False)
    model = get_peft_model(copy.deepcopy(base), config, adapter_name="a0")
    for i in range(1, n_adapters):
        model.add_adapter(f"a{i}", config)
    return model.eval()


def run_model(name: str, lengths: list[int], repeats: int) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    base = build(name).eval()
    masked = masked_models(base, max(SPREADS))
    lora = lora_model(base, max(SPREADS))
    vocab = base.config.vocab_size
    print(f"\n{name}: {sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters, batch {ROWS} rows")
    with torch.no_grad():
        for length in lengths:
            generator = torch.Generator().manual_seed(length)
            batch = {"input_ids": torch.randint(1000, vocab, (ROWS, length), generator=generator)}
            batch["attention_mask"] = torch.ones_like(batch["input_ids"])
            print(f"  length {length}:")
            print(
                f"    {'masks':>5} {'base':>9} {'mixed':>16} {'mixed-sorted':>16} {'mixed-torch':>16} "
                f"{'grouped+switch':>16} {'lora-mixed':>16}   (ms, ratio to base)"
            )
            for spread in SPREADS:
                names = [f"m{i % spread}" for i in range(ROWS)]
                adapters = [f"a{i % spread}" for i in range(ROWS)]

                def mixed_torch(names=names, batch=batch) -> None:
                    with without_row_kernel():
                        masked(**batch, mask_names=names)

                calls = {
                    "base": partial(base, **batch),
                    "mixed": partial(masked, **batch, mask_names=names),
                    "mixed-sorted": partial(masked, **batch, mask_names=sorted(names)),
                    "mixed-torch": mixed_torch,
                    "grouped": partial(grouped_forward, masked, batch, names),
                    "lora": partial(lora, **batch, adapter_names=adapters),
                }
                times = interleaved(calls, repeats)
                plain = times["base"]
                cells = [f"{times[k] * 1000:8.1f} {times[k] / plain:5.2f}x" for k in list(calls)[1:]]
                print(f"    {spread:5d} {plain * 1000:9.1f} " + " ".join(f"{cell:>16}" for cell in cells), flush=True)
            masked.set_active_mask("m0")
    cache = masked.fixed_masks
    print(f"  decoded-mask cache after the runs: {cache.nbytes / 2**20:.1f} MB in {len(cache)} layer entries")


@contextlib.contextmanager
def without_row_kernel():
    """Mixed batches with torch's per-mask sparse products, as where the kernel cannot be built."""
    from hf_masking import row_kernel

    before = os.environ.get(row_kernel.ENV_SWITCH)
    os.environ[row_kernel.ENV_SWITCH] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[row_kernel.ENV_SWITCH]
        else:
            os.environ[row_kernel.ENV_SWITCH] = before


def grouped_forward(model, batch: dict, names: list[str]) -> torch.Tensor:
    """The way without mixed batches: one forward per mask on its rows, switching in between."""
    out = None
    for name in dict.fromkeys(names):
        rows = torch.tensor([i for i, n in enumerate(names) if n == name])
        model.set_active_mask(name)
        logits = model(**{k: v[rows] for k, v in batch.items()}).logits
        if out is None:
            out = logits.new_empty((len(names), *logits.shape[1:]))
        out[rows] = logits
    return out


def kernel_sweep() -> None:
    """Time of each kernel (sparse / dense) per layer shape, tokens and share of masked-out weights."""
    from hf_masking.fixed_mask import DecodedMask

    print("\nkernel sweep: time of the sparse kernel / time of the dense kernel (< 1: sparse is faster)")
    tokens = (1, 4, 16, 64, 256, 1024)
    print(f"  {'layer':>10} {'masked':>6} " + " ".join(f"{'N=' + str(n):>7}" for n in tokens))
    for rows, cols in ((32, 32), (128, 128), (384, 384), (1536, 384), (768, 768), (3072, 768)):
        for share in (0.05, 0.2):
            torch.manual_seed(0)
            weight = torch.randn(rows, cols)
            decoded = DecodedMask.from_bool(torch.rand(rows, cols) >= share)
            ratios = []
            for n in tokens:
                x = torch.randn(n, cols)
                sparse = timed(partial(sparse_kernel, decoded, x, weight), 20)
                ratios.append(sparse / timed(partial(dense_kernel, decoded, x, weight), 20))
            cells = " ".join(f"{r:7.2f}" for r in ratios)
            print(f"  {f'{rows}x{cols}':>10} {share:6.0%} {cells}")


def group_sweep() -> None:
    """Behind `row_kernel.MAX_GROUP_TOKENS`: 11 masks' rows in one compiled call vs one dense product per mask
    (a copy of W ⊙ M each), by rows per mask, as time / the plain product of all rows."""
    from hf_masking import row_kernel
    from hf_masking.fixed_mask import DecodedMask

    if not row_kernel.available():
        print("\ngroup sweep: the compiled kernel is not available here")
        return
    per_group = (16, 64, 128, 192, 256, 384)
    print("\ngroup sweep, 11 masks at 8%: (shared product + one compiled call) / plain, and (a masked copy and a")
    print("product per mask) / plain, by rows per mask")
    print(f"  {'layer':>10} " + " ".join(f"{'n=' + str(n):>13}" for n in per_group))
    for rows, cols in ((384, 384), (768, 768), (3072, 768)):
        torch.manual_seed(0)
        weight = torch.randn(rows, cols) * 0.05
        masks = [DecodedMask.from_bool(torch.rand(rows, cols) >= 0.08) for _ in range(11)]
        cells = []
        for n in per_group:
            x = torch.randn(11 * n, cols)
            starts = list(range(0, 11 * n + 1, n))
            positions = [m.row_positions(weight.shape, False) for m in masks]
            values = [m.row_values(weight, False) for m in masks]

            def batched(x=x, starts=starts, positions=positions, values=values, weight=weight) -> None:
                y = F.linear(x, weight)
                row_kernel.subtract_corrections(y, x, starts, positions, values)

            def dense(x=x, n=n, masks=masks, weight=weight) -> None:
                for g, m in enumerate(masks):
                    F.linear(x[g * n : (g + 1) * n], m.apply_to(weight))

            times = interleaved({"plain": partial(F.linear, x, weight), "batched": batched, "dense": dense}, 10)
            cells.append(f"{times['batched'] / times['plain']:5.2f} / {times['dense'] / times['plain']:5.2f}")
        print(f"  {f'{rows}x{cols}':>10} " + " ".join(f"{c:>13}" for c in cells), flush=True)


def sparse_kernel(decoded, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight) - decoded.correction(x, weight, False)


def dense_kernel(decoded, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x, decoded.apply_to(weight))


MANY = (1, 2, 4, 11, 32, 100)


def many_masks(name: str, repeats: int, cache_bytes: int | None = None) -> None:
    """Masks loaded 1…100, the rows of each batch spread over all of them (a different slice per batch):
    time per mixed forward / the plain base forward, and resident memory. Each count runs in a process of
    its own, so the memory of one count's models is not counted in the next."""
    import json
    import subprocess

    print(f"\n{name}: 32 rows x 32 tokens per batch spread over every loaded mask")
    print(
        f"  {'masks':>5} {'base ms':>8} {'mixed ms':>9} {'x base':>7} {'repos MB':>9} {'cache MB':>9} "
        f"{'bound MB':>9} {'RSS base':>9} {'RSS mixed':>10} {'extra/allowed':>14}"
    )
    for count in MANY:
        command = [sys.executable, __file__, "--many_one", str(count), "--repeats", str(repeats)]
        if cache_bytes is not None:
            command += ["--cache_gib", str(cache_bytes / 2**30)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        mb = 2**20
        allowed = r["repo_bytes"] + r["cache_bound"]
        extra = r["rss_mixed"] - r["rss_base"]
        print(
            f"  {count:5d} {r['base_s'] * 1000:8.1f} {r['mixed_s'] * 1000:9.1f} {r['mixed_s'] / r['base_s']:6.2f}x "
            f"{r['repo_bytes'] / mb:9.1f} {r['cache_bytes'] / mb:9.1f} {r['cache_bound'] / mb:9.0f} "
            f"{r['rss_base'] / mb:9.0f} {r['rss_mixed'] / mb:10.0f} {extra / mb:6.0f}/{allowed / mb:<6.0f}",
            flush=True,
        )


def many_one(name: str, count: int, repeats: int, cache_bytes: int | None, rows: int = 32, length: int = 32) -> None:
    """One row of `many_masks`, as JSON: RSS of the plain base, then of the serving model alone (base copy, mask
    repos, decoded-mask cache) once it ran, each after handing freed memory back to the OS."""
    import ctypes
    import gc
    import json

    import psutil
    import transformers

    transformers.logging.set_verbosity_error()

    def resident() -> int:
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        return psutil.Process().memory_info().rss

    base = build(name).eval()
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, base.config.vocab_size, (rows, length), generator=generator)}
    with torch.no_grad():
        base(**batch)
    rss_base = resident()
    model = masked_models(base, count)
    if cache_bytes is not None:
        model.fixed_masks.max_bytes = cache_bytes
    repo = sum(e.nbytes for n in model.mask_names for e in model.to_stored_mask(n).masks.values())
    turn = iter(range(10**9))

    def forward() -> None:
        start = next(turn) * rows
        model(**batch, mask_names=[f"m{(start + i) % count}" for i in range(rows)])

    with torch.no_grad():
        for _ in range(0, count, rows):  # every mask once, as a server does before long: its decoding is not timed
            forward()
        plains, mixeds = [], []
        for _ in range(repeats):  # interleaved, so that a slower stretch of the machine hits both alike
            plains.append(timed(partial(base, **batch), 1))
            mixeds.append(timed(forward, 1))
    plain, mixed = statistics.median(plains), statistics.median(mixeds)
    del base
    result = {
        "base_s": plain,
        "mixed_s": mixed,
        "repo_bytes": repo,
        "cache_bytes": model.fixed_masks.nbytes,
        "cache_bound": model.fixed_masks.max_bytes,
        "rss_base": rss_base,
        "rss_mixed": resident(),
    }
    print(json.dumps(result))


def generation(repeats: int, prompts: int = 32, masks: int = 11, new_tokens: int = 32) -> None:
    """``generate`` with the KV cache, 32 prompts of 8 tokens over 11 masks, 32 new tokens each (greedy), against
    the plain base's ``generate`` on the same prompts: with the compiled kernel and with torch's products."""
    import transformers

    transformers.logging.set_verbosity_error()
    base = gpt2_shape()
    model = masked_models(base, masks, heads=False)
    names = [f"m{i % masks}" for i in range(prompts)]
    ids = torch.randint(5, base.config.vocab_size, (prompts, 8), generator=torch.Generator().manual_seed(0))
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}

    def mixed_torch() -> None:
        with without_row_kernel():
            model.generate(ids, mask_names=names, **kwargs)

    with torch.no_grad():
        times = interleaved(
            {
                "base": lambda: base.generate(ids, **kwargs),
                "mixed": lambda: model.generate(ids, mask_names=names, **kwargs),
                "mixed-torch": mixed_torch,
            },
            repeats,
        )
    plain, mixed, mixed_torch_s = times["base"], times["mixed"], times["mixed-torch"]
    print(f"\ngpt2 (124M shape): generate, {prompts} prompts x 8 tokens over {masks} masks, {new_tokens} new tokens")
    print(f"  base {plain * 1000:8.1f} ms")
    print(f"  mixed {mixed * 1000:8.1f} ms  {mixed / plain:5.2f}x")
    print(f"  mixed-torch {mixed_torch_s * 1000:8.1f} ms  {mixed_torch_s / plain:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["minilm", "bert-base"], choices=["minilm", "bert-base"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[128, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kernels", action="store_true")
    parser.add_argument("--many", action="store_true", help="only the 1…100 masks loaded table (BERT-base shape)")
    parser.add_argument("--generate", action="store_true", help="only the generate timing (GPT-2 shape)")
    parser.add_argument("--group_sweep", action="store_true", help="only the sweep behind MAX_GROUP_TOKENS")
    parser.add_argument("--cache_gib", type=float, help="--many: the decoded-mask cache bound (default: 1 GiB)")
    parser.add_argument("--many_one", type=int, help=argparse.SUPPRESS)  # one count of --many, in its own process
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.many_one is None:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    cache = None if args.cache_gib is None else int(args.cache_gib * 2**30)
    if args.many_one is not None:
        many_one("bert-base", args.many_one, args.repeats, cache)
        return
    if args.many:
        many_masks("bert-base", args.repeats, cache_bytes=cache)
        return
    if args.generate:
        generation(args.repeats)
        return
    if args.group_sweep:
        group_sweep()
        return
    for name in args.models:
        run_model(name, args.lengths, args.repeats)
    if args.kernels:
        kernel_sweep()
        group_sweep()


if __name__ == "__main__":
    main()
