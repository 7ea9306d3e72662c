"""Tiny pretrained-style model folders (weights + tokenizer) and small data files for the script tests."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys

import torch
from transformers import AutoModel, BertTokenizerFast

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
POSITIVE = ["good", "great", "fine", "lovely"]
NEGATIVE = ["bad", "awful", "poor", "dull"]
NEUTRAL = ["the", "movie", "was", "a", "plot", "and", "it", "show", "story", "film", "actor", "scene"]
NAMES = ["alice", "bob", "paris", "london", "acme", "globex"]
WORDS = POSITIVE + NEGATIVE + NEUTRAL + NAMES + ["ends", "runs", "sits", "jumps", "then", "he", "she"]


def save_tiny_model(directory, seed: int = 0) -> str:
    """A 4-block BERT with a WordPiece tokenizer over the test vocabulary, saved like a Hub checkpoint."""
    from conftest import tiny_config

    os.makedirs(directory, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", '"', ",", ".", *WORDS]
    vocab_file = os.path.join(directory, "vocab.txt")
    with open(vocab_file, "w") as handle:
        handle.write("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=vocab_file, do_lower_case=True, model_max_length=64).save_pretrained(directory)
    torch.manual_seed(seed)
    AutoModel.from_config(tiny_config("bert", vocab_size=len(vocab), pad_token_id=0)).save_pretrained(directory)
    return str(directory)


def save_tiny_decoder(directory, model_type: str = "llama", seed: int = 0) -> str:
    """A 4-block causal LM of `model_type` with the test vocabulary's tokenizer, saved like a Hub checkpoint."""
    from conftest import tiny_config
    from transformers import AutoModelForCausalLM

    save_tiny_model(directory, seed)  # for its vocabulary; tokenizer and weights are replaced below
    for name in os.listdir(directory):
        if name != "vocab.txt":
            os.remove(os.path.join(directory, name))
    # No token_type_ids: GPT-2 would add them to its input embeddings as a decoder tokenizer never does.
    tokenizer = BertTokenizerFast(
        vocab=os.path.join(directory, "vocab.txt"),
        model_max_length=64,
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.save_pretrained(directory)
    vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(tiny_config(model_type, vocab_size=vocab_size)).save_pretrained(directory)
    return str(directory)


def story_text(n: int, seed: int = 0) -> str:
    """Lines of a tiny grammar (name, verb, 'then', name, verb): learnable next-token structure."""
    rng = random.Random(seed)
    verbs = ["runs", "sits", "jumps", "ends"]
    return "".join(
        f"{rng.choice(NAMES)} {rng.choice(verbs)} then {rng.choice(NAMES)} {rng.choice(verbs)} .\n" for _ in range(n)
    )


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(NEUTRAL, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write(path, text: str, bom: bool = False) -> str:
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8") as handle:
        handle.write(text)
    return str(path)


def conll_text(n: int, seed: int = 0, docstart_every: int = 4) -> str:
    """CoNLL-2003-style lines with IOB1 tags; -DOCSTART- lines at document ends, no final newline."""
    rng = random.Random(seed)
    kinds = {"alice": "PER", "bob": "PER", "paris": "LOC", "london": "LOC", "acme": "ORG", "globex": "ORG"}
    blocks = []
    for i in range(n):
        words = rng.sample(NEUTRAL, 3) + rng.sample(NAMES, 2)
        rng.shuffle(words)
        lines = [f"{w} NN I-NP {'I-' + kinds[w] if w in kinds else 'O'}" for w in words]
        blocks.append("\n".join(lines))
        if (i + 1) % docstart_every == 0:
            blocks.append("-DOCSTART- -X- O O")
    return "\n\n".join(blocks)


def swag_csv(n: int, seed: int = 0, endings: int = 4) -> str:
    rng = random.Random(seed)
    header = "startphrase,sent1,sent2," + ",".join(f"ending{i}" for i in range(endings)) + ",label"
    rows = [header]
    for _ in range(n):
        label = rng.randrange(endings)
        name = rng.choice(NAMES)
        options = [f"{rng.choice(NEGATIVE)} {rng.choice(NEUTRAL)}" for _ in range(endings)]
        options[label] = f"{name} {rng.choice(POSITIVE)}"
        rows.append(f"{name} runs. {name},{name} runs.,{name}," + ",".join(options) + f",{label}")
    return "\n".join(rows) + "\n"


def run_script(name: str, args: list[str], monkeypatch) -> None:
    """Run an example script's main() in this process, as `python NAME ARGS` would."""
    path = os.path.join(ROOT, name)
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [path, *args])
    module.main()


def read_json(path) -> dict:
    with open(path) as handle:
        return json.load(handle)


COMMON = [
    "--report_to",
    "none",
    "--use_cpu",
    "--disable_tqdm",
    "true",
    "--save_strategy",
    "no",
    "--per_device_train_batch_size",
    "8",
    "--per_device_eval_batch_size",
    "16",
    "--seed",
    "0",
]
