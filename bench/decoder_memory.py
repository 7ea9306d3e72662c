"""Peak memory and step time of masking a decoder LM vs full finetuning vs LoRA, side by side in one run.

A Llama-architecture causal LM of real shape (default: hidden 2048, 16 blocks, ~1.0B parameters),
built from its config with random weights, trains a few steps with the stock Trainer in each set-up.
Every (weights dtype, method) runs in a fresh subprocess, so each peak is its own: peak RSS on a
CPU (the high-water mark is reset after the model is built), peak allocated memory on a GPU.

    python bench/decoder_memory.py                          # the ~1B shape; CPU needs ~20 GiB and ~15 min
    python bench/decoder_memory.py --shape tiny --steps 1   # seconds: checks the set-ups run
    python bench/decoder_memory.py --weights amp --json bench/results/decoder_memory.json

Methods, each with the Trainer's AdamW unless named otherwise:
  finetune            every parameter trains
  mask                scores in fp32 (MaskingConfig's default)
  mask-bf16           scores in bfloat16 (MaskingConfig(score_dtype="bfloat16"))
  mask-bf16-adafactor bfloat16 scores with the Trainer's optim="adafactor" (factored second moments)
  lora                PEFT LoRA r=16 on every linear layer of every block
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = {
    # TinyLlama/Llama-3.2-1B-like: hidden 2048, 16 blocks, MLP 5632, 32k vocabulary.
    "llama-1b": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=5632, num_attention_heads=16),
    "tiny": dict(hidden_size=64, num_hidden_layers=4, intermediate_size=128, num_attention_heads=4),
}
SETUPS = {
    "fp32": "fp32 weights, fp32 compute",
    "amp": "fp32 weights, bf16 autocast (the Trainer's --bf16, the usual mixed-precision finetuning)",
    "bf16": "bf16 weights, bf16 compute (pure bf16; finetuning's AdamW states are bf16 too)",
}
METHODS = ("finetune", "mask", "mask-bf16", "mask-bf16-adafactor", "lora")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the process's RSS high-water mark (VmHWM)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_one(shape: str, weights: str, method: str, batch: int, length: int, steps: int) -> dict:
    """Runs in the child process: builds the model, trains steps + 1 Trainer steps, returns the numbers."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainerCallback, TrainingArguments

    from hf_masking import MaskedModel, MaskingCallback, MaskingConfig

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if weights == "bf16" else torch.float32
    config = LlamaConfig(**SHAPES[shape], vocab_size=32000, max_position_embeddings=max(length, 128))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    optim, callbacks = "adamw_torch", []
    if method.startswith("mask"):
        score_dtype = "bfloat16" if "bf16" in method else "float32"
        model = MaskedModel(model, MaskingConfig(score_dtype=score_dtype))
        callbacks.append(MaskingCallback())
        if method.endswith("adafactor"):
            optim = "adafactor"
    elif method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, target_modules=LORA_TARGETS, task_type=TaskType.CAUSAL_LM))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters() if not p.requires_grad or method == "finetune")

    times: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, D102
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, D102
            times.append(time.perf_counter() - self.start)

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.vocab_size, (batch * (steps + 1), length), generator=generator)
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(
        output_dir=os.path.join("/tmp", f"decoder-memory-{os.getpid()}"),
        per_device_train_batch_size=batch,
        max_steps=steps + 1,
        learning_rate=8e-3 if method.startswith("mask") else 1e-4,
        optim=optim,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=weights == "amp",  # mixed precision: fp32 weights (and master copies), bf16 autocast
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[*callbacks, StepTimes()])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_peak_rss()
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()
    return {
        "shape": shape,
        "weights": weights,
        "method": method,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "params": total,
        "trainable": trainable,
        "step_s": sorted(times[1:])[len(times[1:]) // 2],  # the first step warms up kernels and allocators
        "peak_mb": peak,
        "peak_kind": "peak allocated (CUDA)" if cuda else "peak RSS",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-1b", choices=sorted(SHAPES))
    parser.add_argument(
        "--weights",
        nargs="+",
        default=list(SETUPS),
        choices=list(SETUPS),
        help="precision set-ups: " + "; ".join(f"{k}: {v}" for k, v in SETUPS.items()),
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="timed steps, after one warm-up step")
    parser.add_argument("--json", help="also write the records to this file")
    parser.add_argument("--child", nargs=3, metavar=("SHAPE", "WEIGHTS", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_one(*args.child, args.batch, args.length, args.steps)))
        return

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {device}; shape {args.shape}, batch {args.batch} x {args.length} tokens")
    records = []
    for weights in args.weights:
        rows = {}
        for method in args.methods:
            command = [sys.executable, __file__, "--child", args.shape, weights, method]
            command += ["--batch", str(args.batch), "--length", str(args.length), "--steps", str(args.steps)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{weights} {method}: failed\n{done.stderr[-2000:]}")
                continue
            rec = rows[method] = json.loads(done.stdout.strip().splitlines()[-1])
            records.append(rec)
            print(
                f"weights {weights}  {method:20s} trainable {rec['trainable']:>13,}  step {rec['step_s']:8.3f} s  "
                f"{rec['peak_kind']} {rec['peak_mb']:9.1f} MB",
                flush=True,
            )
        if "finetune" in rows:
            base = rows["finetune"]
            for method, rec in rows.items():
                if method != "finetune":
                    print(
                        f"weights {weights}  {method}/finetune: peak memory {rec['peak_mb'] / base['peak_mb']:.3f}, "
                        f"step time {rec['step_s'] / base['step_s']:.3f}"
                    )
    amp_finetune = next((r for r in records if r["weights"] == "amp" and r["method"] == "finetune"), None)
    if amp_finetune is not None:  # the frozen base needs no fp32 master copy: load it in bf16
        for rec in (r for r in records if r["weights"] == "bf16" and r["method"] != "finetune"):
            memory = rec["peak_mb"] / amp_finetune["peak_mb"]
            step = rec["step_s"] / amp_finetune["step_s"]
            print(f"weights bf16 {rec['method']} / amp finetune: peak memory {memory:.3f}, step time {step:.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(records, handle, indent=2)


if __name__ == "__main__":
    main()
