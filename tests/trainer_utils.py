"""A tiny classification task and Trainer set-up shared by the Trainer and DDP tests."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from transformers import TrainingArguments


def toy_dataset(n: int = 48, length: int = 8, seed: int = 0) -> Dataset:
    """Label = whether token 5 appears: learnable, with a text column the model must not receive."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(6, 120, size=(n, length))
    labels = rng.integers(0, 2, size=n)
    ids[labels == 1, rng.integers(0, length)] = 5
    return Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": np.ones_like(ids).tolist(),
            "label": labels.tolist(),
            "sentence": [f"row {i}" for i in range(n)],
        }
    )


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def training_args(output_dir: str, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=output_dir,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=0.05,
        max_steps=6,
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def scores_of(model) -> dict[str, torch.Tensor]:
    return {n: m.mask_scores.detach().clone() for n, m in model.masked_modules().items()}


def trainer_for(model, output_dir, callbacks=None, **overrides):
    """A stock Trainer on the toy task (MaskingCallback unless `callbacks` says otherwise)."""
    from transformers import Trainer

    from hf_masking import MaskingCallback

    return Trainer(
        model=model,
        args=training_args(str(output_dir), **overrides),
        train_dataset=toy_dataset(),
        callbacks=[MaskingCallback()] if callbacks is None else callbacks,
    )
