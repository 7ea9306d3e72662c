"""Tiny models built from configs, used as "pretrained" bases, and small helpers."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import (
    BertConfig,
    DistilBertConfig,
    GPT2Config,
    LlamaConfig,
    RobertaConfig,
)


def pytest_configure(config):
    # Nothing in the suite may reach the real Hub; Hub tests talk to a local server in subprocesses.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def tiny_config(model_type: str, **overrides):
    """A small config of `model_type` with 4 blocks, fast enough for unit tests."""
    common = dict(vocab_size=120, max_position_embeddings=64)
    if model_type == "bert":
        cfg = BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, **common)
    elif model_type == "roberta":
        cfg = RobertaConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, pad_token_id=1, **common
        )
        cfg.max_position_embeddings = 70
    elif model_type == "distilbert":
        cfg = DistilBertConfig(dim=32, n_layers=4, n_heads=2, hidden_dim=64, **common)
    elif model_type == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=4, n_head=2, n_positions=64, vocab_size=120, pad_token_id=0)
    elif model_type == "llama":
        cfg = LlamaConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=120,
            max_position_embeddings=64,
            pad_token_id=0,
        )
    else:
        raise ValueError(model_type)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def build_model(auto_cls, model_type: str = "bert", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = auto_cls.from_config(tiny_config(model_type, **overrides))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny BERT saved with save_pretrained: a stand-in for a pretrained checkpoint."""
    from transformers import BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(tiny_config("bert")).save_pretrained(path)
    return str(path)


def random_batch(batch: int = 4, length: int = 8, vocab: int = 120, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(3, vocab, (batch, length), generator=generator),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
    }


def save_pretrained_base(directory, model_type: str = "bert", seed: int = 0, **overrides) -> str:
    """Save a bare backbone the way a pretrained checkpoint is published; returns its folder."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    AutoModel.from_config(tiny_config(model_type, **overrides)).save_pretrained(directory)
    return str(directory)


def load_quietly(head_cls, path, **kwargs):
    """`from_pretrained` without transformers' report of the newly initialised head."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return head_cls.from_pretrained(path, **kwargs).eval()
    finally:
        transformers.logging.set_verbosity(verbosity)


def train_a_little(model, steps: int = 3, seed: int = 0, lr: float = 0.05):
    """A few Adam steps on random data, so the mask moves away from its initialisation."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    num_labels = model.config.num_labels
    for step in range(steps):
        batch = random_batch(seed=seed * 100 + step)
        labels = torch.arange(batch["input_ids"].shape[0]) % num_labels
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()
