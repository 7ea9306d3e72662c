"""The GPU check, ready before any GPU is seen: run it first on a machine with one (under 8 minutes).

    python bench/gpu_check.py                       # cuda when available: full sizes
    python bench/gpu_check.py --device cpu --small  # the CI-sized run the suite makes (tests/test_bench.py)

Four parts, each reported in one JSON file (``--out``, default bench/results/gpu_check.json):
1. correctness: mixed-mask batches (4 masks over 8 rows) against each mask alone, fp32 and bf16,
   on a BERT shape (sequence classification) and a GPT-2 shape (causal LM, also ``generate``);
2. kernels: which of `fixed_mask`'s kernels each masked layer takes at 8 and 128 tokens on the device;
3. throughput: 32 rows over 11 masks vs the plain base forward, at 8 and 128 tokens, on the
   MiniLM-L6 shape and the BERT-base shape (config-built: no download), and ``generate`` with
   ``mask_names`` vs the plain base's ``generate``;
4. training: a short stock-Trainer run with bf16 autocast that must change the mask.
Exit status 1 when a correctness or training check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/: mixed_batch
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FULL = {"rows": 32, "masks": 11, "lengths": (8, 128), "repeats": 5, "new_tokens": 32, "train_steps": 30}
SMALL = {"rows": 8, "masks": 4, "lengths": (8, 32), "repeats": 2, "new_tokens": 4, "train_steps": 4}
SHAPES = {
    "minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(call, device: torch.device, repeats: int) -> float:
    call()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bert(shape: str, labels: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_labels=labels, vocab_size=30522, **SHAPES[shape])).eval()


def with_masks(base, count: int, heads: bool):
    """A serving MaskedModel holding `count` random masks (8% removed), each with its own head if `heads`."""
    from mixed_batch import masked_models

    return masked_models(base, count, heads)


def gpt2(small: bool):
    from mixed_batch import gpt2_shape

    return gpt2_shape(small)


def alone(model, batch: dict, names: list[str], call) -> torch.Tensor:
    """Each row computed with its own mask alone (the reference)."""
    rows = []
    for i, name in enumerate(names):
        model.set_active_mask(name)
        rows.append(call(model, {k: v[i : i + 1] for k, v in batch.items()}))
    return torch.cat(rows)


def check_correctness(device: torch.device, sizes: dict, small: bool) -> dict:
    results = {}
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        cases = {
            "bert-sequence-classification": (bert("tiny" if small else "minilm"), True),
            "gpt2-causal-lm": (gpt2(small), False),
        }
        for case, (base, heads) in cases.items():
            model = with_masks(base, 4, heads).to(device=device, dtype=dtype)
            vocab = model.config.vocab_size
            generator = torch.Generator().manual_seed(1)
            batch = {"input_ids": torch.randint(5, vocab, (8, 12), generator=generator).to(device)}
            names = [f"m{i % 4}" for i in range(8)]

            def logits(m, b):
                return m(**b).logits.float()

            with torch.no_grad():
                mixed = model(**batch, mask_names=names).logits.float()
                reference = alone(model, batch, names, logits)
            scale = reference.abs().max().item() or 1.0
            error = (mixed - reference).abs().max().item() / (scale if dtype is torch.bfloat16 else 1.0)
            entry = {"max_error": error, "tolerance": tolerance, "ok": error <= tolerance}
            if not heads:
                with torch.no_grad():
                    prompts = batch["input_ids"][:, :6]
                    together = model.generate(prompts, mask_names=names, max_new_tokens=4, do_sample=False)
                    apart = alone(model, {"input_ids": prompts}, names, _generate_four)
                entry["generate_equal"] = bool(torch.equal(together, apart))
                entry["ok"] = entry["ok"] and (entry["generate_equal"] or dtype is torch.bfloat16)
            results[f"{case}/{str(dtype).removeprefix('torch.')}"] = entry
    return results


def _generate_four(model, batch: dict) -> torch.Tensor:
    return model.generate(batch["input_ids"], max_new_tokens=4, do_sample=False)


def kernel_choices(device: torch.device, small: bool) -> dict:
    from hf_masking.layers import MaskedLinear

    model = with_masks(bert("tiny" if small else "minilm"), 1, True).to(device)
    choices = {}
    for tokens in (8, 128):
        taken = {}
        for module in model.get_base_model().modules():
            if isinstance(module, MaskedLinear) and module.fixed is not None:
                decoded = module.fixed.decoded(device)
                kind = "sparse" if decoded.uses_sparse(model.fixed_masks.kernel, module.weight, tokens) else "dense"
                taken[kind] = taken.get(kind, 0) + 1
        choices[f"{tokens} tokens"] = taken
    return choices


def throughput(device: torch.device, sizes: dict, small: bool) -> dict:
    results = {}
    shapes = ("tiny",) if small else ("minilm", "bert-base")
    rows, count = sizes["rows"], sizes["masks"]
    names = [f"m{i % count}" for i in range(rows)]
    for shape in shapes:
        base = bert(shape).to(device)
        model = with_masks(bert(shape), count, True).to(device)
        for length in sizes["lengths"]:
            generator = torch.Generator().manual_seed(length)
            batch = {"input_ids": torch.randint(1000, 30522, (rows, length), generator=generator).to(device)}
            with torch.no_grad():
                plain = timed(lambda b=batch, m=base: m(**b), device, sizes["repeats"])
                mixed = timed(lambda b=batch, m=model: m(**b, mask_names=names), device, sizes["repeats"])
            results[f"{shape}/{length} tokens"] = {"base_ms": 1000 * plain, "mixed_ms": 1000 * mixed,
                                                   "ratio": mixed / plain}  # fmt: skip
    base = gpt2(small).to(device)
    model = with_masks(gpt2(small), count, False).to(device)
    prompts = torch.randint(5, base.config.vocab_size, (rows, 8), generator=torch.Generator().manual_seed(0))
    prompts = prompts.to(device)
    new = sizes["new_tokens"]
    with torch.no_grad():
        kwargs = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": 0}
        repeats = max(1, sizes["repeats"] // 2)
        plain = timed(lambda: base.generate(prompts, **kwargs), device, repeats)
        mixed = timed(lambda: model.generate(prompts, mask_names=names, **kwargs), device, repeats)
    results[f"gpt2/generate {rows}x{new}"] = {"base_ms": 1000 * plain, "mixed_ms": 1000 * mixed, "ratio": mixed / plain}
    return results


def train_bf16(device: torch.device, sizes: dict, small: bool) -> dict:
    from transformers import Trainer, TrainingArguments

    from hf_masking import MaskedModel, MaskingCallback, MaskingConfig

    model = MaskedModel(bert("tiny" if small else "minilm"), MaskingConfig())
    before = {name: mask.clone() for name, mask in model.masks().items()}
    generator = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(5, 30522, (16,), generator=generator).tolist(), "labels": i % 2}
            for i in range(64)]  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(out, max_steps=sizes["train_steps"], per_device_train_batch_size=8,
                                 learning_rate=2e-2, bf16=True, use_cpu=device.type == "cpu", report_to=[],
                                 save_strategy="no", logging_steps=1)  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[MaskingCallback()])
        result = trainer.train()
    changed = sum(int((model.masks()[n].cpu() != before[n].cpu()).sum()) for n in before)
    total = sum(m.numel() for m in before.values())
    loss = result.training_loss
    return {"steps": sizes["train_steps"], "loss": loss, "mask_changed": changed / total,
            "ok": bool(loss == loss) and changed > 0}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny shapes and few repeats (CPU, CI)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "gpu_check.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sizes = SMALL if args.small else FULL
    start = time.perf_counter()
    report = {"device": str(device), "torch": torch.__version__, "small": args.small}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    for part, run in (("correctness", check_correctness), ("kernels", kernel_choices),
                      ("throughput", throughput), ("training_bf16", train_bf16)):  # fmt: skip
        begun = time.perf_counter()
        report[part] = run(device, sizes, args.small) if part != "kernels" else run(device, args.small)
        print(f"{part} ({time.perf_counter() - begun:.0f} s): {json.dumps(report[part], indent=1)}", flush=True)
    report["seconds"] = time.perf_counter() - start
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=1)
    ok = all(entry["ok"] for entry in report["correctness"].values()) and report["training_bf16"]["ok"]
    print(f"{'OK' if ok else 'FAILED'} in {report['seconds']:.0f} s; {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
