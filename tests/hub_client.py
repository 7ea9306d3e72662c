"""Client side of the Hub tests, run in a subprocess so HF_ENDPOINT is set before any import.

Usage: python hub_client.py ACTION WORKDIR  (prints one JSON line)
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from conftest import random_batch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, BertModel  # noqa: E402

from hf_masking import MaskedModel, MaskingConfig  # noqa: E402


def base_config() -> BertConfig:
    return BertConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=256,
        vocab_size=1000,
        max_position_embeddings=64,
    )


def push_base(workdir: str, seed: int) -> dict:
    from huggingface_hub import HfApi

    torch.manual_seed(seed)
    folder = os.path.join(workdir, f"base-{seed}")
    BertModel(base_config()).save_pretrained(folder)
    api = HfApi()
    api.create_repo("org/base", exist_ok=True)
    info = api.upload_folder(repo_id="org/base", folder_path=folder, commit_message=f"base seed {seed}")
    return {"commit": info.oid, "bytes": sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))}


def train_and_push(
    workdir: str, repo_id: str, private: bool = False, revision: str | None = None, via_save: bool = False
) -> dict:
    base = BertForSequenceClassification.from_pretrained("org/base", num_labels=2)
    model = MaskedModel(base, MaskingConfig(initial_sparsity=0.1))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for step in range(3):
        loss = model(**random_batch(vocab=1000, seed=step), labels=torch.tensor([0, 1, 1, 0])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    logits = model(**random_batch(vocab=1000, seed=99)).logits
    torch.save(logits, os.path.join(workdir, "expected_logits.pt"))
    if via_save:  # transformers' habit: save_pretrained(..., push_to_hub=True, repo_id=...)
        model.save_pretrained(os.path.join(workdir, "saved"), push_to_hub=True, repo_id=repo_id, private=private)
        url = None
    else:
        url = model.push_to_hub(repo_id, private=private, revision=revision)
    return {"url": url, "base_revision": model.to_stored_mask().record["base_model_revision"]}


def load(workdir: str, repo_id: str, revision: str | None = None) -> dict:
    try:
        model = MaskedModel.from_pretrained(repo_id, revision=revision)
    except (OSError, ValueError) as err:
        return {"error": str(err), "type": type(err).__name__}
    expected = torch.load(os.path.join(workdir, "expected_logits.pt"))
    logits = model(**random_batch(vocab=1000, seed=99)).logits
    return {
        "equal": bool(torch.equal(logits, expected)),
        "base_revision": model.to_stored_mask().record["base_model_revision"],
    }


def repo_bytes(repo_id: str) -> dict:
    from huggingface_hub import HfApi

    files = list(HfApi().list_repo_tree(repo_id))
    return {"bytes": sum(f.size for f in files if f.path != ".gitattributes"), "files": sorted(f.path for f in files)}


if __name__ == "__main__":
    action, workdir, *rest = sys.argv[1:]
    kwargs = json.loads(rest[0]) if rest else {}
    result = {"push_base": push_base, "train_and_push": train_and_push, "load": load}.get(action)
    out = result(workdir, **kwargs) if result else repo_bytes(**kwargs)
    print(json.dumps(out))
