"""Decoder LMs of each common family, as in PEFT's test_decoder_models.py: the paper's defaults carried
over (all but the bottom two blocks, every linear of a block; embeddings, norms and lm_head left alone),
stock-Trainer causal-LM training, generate, merge, and save/load, on tiny configs."""

import pytest
import torch
from conftest import random_batch
from datasets import Dataset
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from trainer_utils import training_args
from transformers import (
    AutoModelForCausalLM,
    DataCollatorForLanguageModeling,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PhiConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Trainer,
)

from hf_masking import MaskedModel, MaskingCallback

SMALL = dict(vocab_size=120, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
ATTENTION = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64
)
FAMILIES = {
    "llama": lambda: LlamaConfig(**ATTENTION, **SMALL, tie_word_embeddings=False),
    "mistral": lambda: MistralConfig(**ATTENTION, **SMALL),
    "qwen2": lambda: Qwen2Config(**ATTENTION, **SMALL),
    "gemma": lambda: GemmaConfig(**ATTENTION, head_dim=16, **SMALL),
    "phi": lambda: PhiConfig(**{k: v for k, v in ATTENTION.items()}, **SMALL),
    "gpt2": lambda: GPT2Config(n_embd=32, n_layer=4, n_head=2, n_positions=64, vocab_size=120, pad_token_id=0),
    "opt": lambda: OPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32, **SMALL
    ),
}


def _tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the tiny vocabulary ("t0" … "t119"); id 0 pads, as in the configs."""
    vocab = {f"t{i}": i for i in range(120)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t1")), pad_token="t0")


@pytest.fixture(params=sorted(FAMILIES))
def family(request, tmp_path):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(FAMILIES[request.param]())
    base.save_pretrained(tmp_path / "base")
    return request.param, str(tmp_path / "base")


def test_decoder_defaults_train_generate_merge_save_load(family, tmp_path):
    name, base_dir = family
    model = MaskedModel(AutoModelForCausalLM.from_pretrained(base_dir))
    targets = model.targets
    blocks = {targets.block_of(m) for m in targets.modules}
    assert blocks == {2, 3}, (name, targets.modules)  # all but the bottom two blocks, nothing outside them
    assert not any(part in m for m in targets.modules for part in ("embed", "wte", "wpe", "norm", "ln_", "lm_head"))
    block = model.get_base_model().get_submodule(f"{targets.block_prefix}.2")
    linear = [n for n, m in block.named_modules() if type(m).__name__ in ("Linear", "Conv1D", "MaskedLinear")]
    assert sorted(
        m.split(".", len(targets.block_prefix.split(".")) + 1)[-1] for m in targets.modules if ".2." in m
    ) == sorted(linear)  # every linear of a block
    assert model.head_tensor_names() == []  # the LM head is part of the base

    # Rows of different lengths: the causal-LM collator pads them and sets the padding's labels to -100.
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 120, (int(n),), generator=generator).tolist() for n in torch.randint(6, 13, (16,))]
    data = Dataset.from_dict({"input_ids": rows})
    collator = DataCollatorForLanguageModeling(_tokenizer(), mlm=False)
    batch = collator([data[i] for i in range(8)])
    longest = max(len(r) for r in rows[:8])
    assert int((batch["labels"] == -100).sum()) == sum(longest - len(r) for r in rows[:8]) > 0
    before = model.masks()
    trainer = Trainer(
        model=model,
        args=training_args(str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=8),
        train_dataset=data,
        data_collator=collator,
        callbacks=[MaskingCallback()],
    )
    assert trainer.train().training_loss > 0  # labels shifted by the model itself
    assert any(not torch.equal(before[n], m) for n, m in model.masks().items())

    model.eval()
    prompt = {"input_ids": random_batch(batch=2, length=5)["input_ids"]}
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 9)
    logits = model(**prompt).logits
    torch.testing.assert_close(model.merge()(**prompt).logits, logits, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path / "mask")
    loaded = MaskedModel.from_pretrained(tmp_path / "mask")
    assert torch.equal(loaded(**prompt).logits, logits)
    assert torch.equal(loaded.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=0), generated)
