"""The tiny mask repo: its files, model card, Hub transfer, and base-model verification.

A mask repo holds three files and no base weights:

- ``masking_config.json``: the `MaskingConfig`, the base model id and pinned commit, the head
  class and label maps, a fingerprint of every base weight that was masked, versions;
- ``mask.safetensors``: each layer's compressed mask as a uint8 tensor (codec details in the
  metadata) and, in full precision, the head tensors that the base checkpoint lacks;
- ``README.md``: a model card.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import codec
from .config import MaskingConfig

CONFIG_NAME = "masking_config.json"
WEIGHTS_NAME = "mask.safetensors"
CARD_NAME = "README.md"
REPO_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
FORMAT_VERSION = 1
_MASK_PREFIX = "mask."
_HEAD_PREFIX = "head."
_SAMPLE_POINTS = 16
# Half-precision copies of the same base are accepted on their values, within bf16 rounding.
_HALF_RTOL = 1e-2


class MaskRepoError(ValueError):
    """A mask repo is incomplete, truncated, corrupted, or written in an unknown format."""


class BaseModelMismatchError(ValueError):
    """The base model given for a mask is not the one the mask was trained on."""


# ----- fingerprints ----------------------------------------------------------------------
def fingerprint(weight: torch.Tensor) -> dict[str, Any]:
    """Shape, dtype, exact hash and dtype-robust statistics of one base weight."""
    values = weight.detach().to("cpu", torch.float32).contiguous().view(-1)
    sample_at = torch.linspace(0, values.numel() - 1, _SAMPLE_POINTS).long()
    return {
        "shape": list(weight.shape),
        "dtype": str(weight.dtype).replace("torch.", ""),
        "sha256": hashlib.sha256(memoryview(values.numpy())).hexdigest(),  # hashed in place, no copy
        "abs_mean": float(values.abs().double().mean()),
        "sample": [float(v) for v in values[sample_at]],
    }


def compare_fingerprints(actual: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]) -> None:
    """Raise `BaseModelMismatchError` at the first weight (in the order of `actual`) that differs."""
    missing = [name for name in expected if name not in actual]
    if missing:
        raise BaseModelMismatchError(
            f"The base model has no masked module {missing[0]!r}, which the mask was trained on: it is another "
            "architecture or masks other layers."
        )
    for name in [name for name in actual if name in expected]:
        current, record = actual[name], expected[name]
        if current["shape"] != record["shape"]:
            raise BaseModelMismatchError(
                f"{name}.weight has shape {current['shape']} in the base model but {record['shape']} in the one "
                "the mask was trained on."
            )
        if current["dtype"] == record["dtype"]:
            if current["sha256"] != record["sha256"]:
                raise BaseModelMismatchError(
                    f"{name}.weight differs from the weight the mask was trained on (sha256 {current['sha256'][:12]}… "
                    f"vs {record['sha256'][:12]}…): this is a different or modified base model."
                )
            continue
        close = np.allclose(current["sample"], record["sample"], rtol=_HALF_RTOL, atol=1e-3) and np.isclose(
            current["abs_mean"], record["abs_mean"], rtol=_HALF_RTOL
        )
        if not close:
            raise BaseModelMismatchError(
                f"{name}.weight ({current['dtype']}) does not match the {record['dtype']} weight the mask was trained "
                "on, even allowing for half-precision rounding: this is a different or modified base model."
            )


def find_cached_revision(repo_id: str | None, tensor_names: list[str], record: dict[str, Any]) -> str | None:
    """The commit of the Hub snapshot in the local cache whose weights are the ones in memory.

    transformers resolves a base's revision to a commit but does not keep it on the model, so
    the cached snapshots of `repo_id` are searched for the one holding this exact weight.
    """
    if not repo_id or os.path.isdir(repo_id) or repo_id.count("/") > 1:
        return None
    from huggingface_hub import constants

    snapshots = os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"), "snapshots")
    if not os.path.isdir(snapshots):
        return None
    candidates = sorted(os.scandir(snapshots), key=lambda entry: entry.stat().st_mtime, reverse=True)
    for snapshot in candidates:
        for file_name in sorted(os.listdir(snapshot.path)):
            if not file_name.endswith(".safetensors"):
                continue
            try:
                with safe_open(os.path.join(snapshot.path, file_name), framework="pt") as handle:
                    keys = set(handle.keys())
                    key = next((k for k in tensor_names if k in keys), None)
                    if key is not None and fingerprint(handle.get_tensor(key))["sha256"] == record["sha256"]:
                        return snapshot.name
            except (SafetensorError, OSError):
                continue
    return None


# ----- what a saved mask is --------------------------------------------------------------
@dataclass
class StoredMask:
    """A mask as it is kept on disk and, compressed, in memory for switching."""

    record: dict[str, Any]  # the contents of masking_config.json
    masks: dict[str, codec.EncodedMask]  # module name -> compressed mask
    head: dict[str, torch.Tensor]  # tensor name in the wrapped model -> value

    @property
    def config(self) -> MaskingConfig:
        return MaskingConfig.from_dict(self.record["masking_config"])

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.masks.values()) + sum(
            t.numel() * t.element_size() for t in self.head.values()
        )


def write_repo_files(directory: str, stored: StoredMask, card: str) -> None:
    """Write the three repo files into `directory` (which must exist)."""
    tensors: dict[str, torch.Tensor] = {}
    index = {}
    for module_name, encoded in stored.masks.items():
        key = _MASK_PREFIX + module_name
        tensors[key] = torch.frombuffer(bytearray(encoded.data), dtype=torch.uint8)
        index[module_name] = {"tensor": key, "shape": list(encoded.shape), "digest": encoded.digest}
    for name, tensor in stored.head.items():
        tensors[_HEAD_PREFIX + name] = tensor.detach().to("cpu").contiguous()
    metadata = {
        "format": "hf-masking",
        "format_version": str(FORMAT_VERSION),
        "codec": codec.CODEC_NAME,
        "codec_version": str(codec.CODEC_VERSION),
        "masks": json.dumps(index, sort_keys=True),
    }
    save_file(tensors, os.path.join(directory, WEIGHTS_NAME), metadata=metadata)
    with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as handle:
        json.dump(stored.record, handle, indent=2, sort_keys=True)
        handle.write("\n")
    with open(os.path.join(directory, CARD_NAME), "w", encoding="utf-8") as handle:
        handle.write(card)


def save_atomically(directory: str, stored: StoredMask, card: str) -> None:
    """Write all files to a temporary folder first; only a complete set replaces the old files.

    Other files in `directory` (a tokenizer, Trainer checkpoints) are left alone.
    """
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".hf-masking-", dir=parent)
    try:
        write_repo_files(staging, stored, card)
        os.makedirs(directory, exist_ok=True)
        umask = os.umask(0)
        os.umask(umask)
        for name in REPO_FILES:
            os.chmod(os.path.join(staging, name), 0o666 & ~umask)  # shareable, like any saved model
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_repo_files(directory: str) -> StoredMask:
    """Read and check a mask repo folder; every problem is a `MaskRepoError` naming the file."""
    config_path = os.path.join(directory, CONFIG_NAME)
    weights_path = os.path.join(directory, WEIGHTS_NAME)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise MaskRepoError(f"{directory} is not a mask repo: {os.path.basename(path)} is missing.")
    try:
        with open(config_path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MaskRepoError(f"{config_path} is not valid JSON ({err}).") from err
    if record.get("format_version") != FORMAT_VERSION:
        raise MaskRepoError(
            f"{config_path} has format_version {record.get('format_version')!r}; this version of hf-masking reads "
            f"{FORMAT_VERSION}."
        )
    try:
        with safe_open(weights_path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("codec") != codec.CODEC_NAME or metadata.get("codec_version") != str(codec.CODEC_VERSION):
                raise MaskRepoError(
                    f"{weights_path} uses mask codec {metadata.get('codec')!r} version "
                    f"{metadata.get('codec_version')!r}; this version of hf-masking reads {codec.CODEC_NAME!r} "
                    f"version {codec.CODEC_VERSION}."
                )
            index = json.loads(metadata["masks"])
            masks = {
                name: codec.EncodedMask(
                    handle.get_tensor(entry["tensor"]).numpy().tobytes(), tuple(entry["shape"]), entry["digest"]
                )
                for name, entry in index.items()
            }
            head = {k[len(_HEAD_PREFIX) :]: handle.get_tensor(k) for k in handle.keys() if k.startswith(_HEAD_PREFIX)}
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as err:
        raise MaskRepoError(f"{weights_path} is truncated or corrupted ({type(err).__name__}: {err}).") from err
    for name, encoded in masks.items():
        try:
            codec.verify(encoded)  # lengths, ranges and the digest, without building the mask
        except codec.MaskCodecError as err:
            raise MaskRepoError(f"{weights_path}: the mask of {name} is unusable: {err}.") from err
    if sorted(masks) != sorted(record.get("masked_modules", [])):
        raise MaskRepoError(f"{weights_path} does not hold the masks that {CONFIG_NAME} lists.")
    return StoredMask(record=record, masks=masks, head=head)


# ----- the model card --------------------------------------------------------------------
def model_card(stored: StoredMask, sparsity: dict[str, Any], repo_id: str | None = None) -> str:
    record = stored.record
    base = record["base_model_name_or_path"]
    revision = record.get("base_model_revision")
    model_type = record.get("model_type") or "model"
    front = [
        "---",
        f"base_model: {base}" if base and not os.path.isabs(base) else None,
        "library_name: hf-masking",
        "tags:",
        "- hf-masking",
        "- masking",
        f"- {model_type}",
        "---",
    ]
    blocks = "\n".join(f"| {block} | {value:.2%} |" for block, value in sparsity["blocks"].items())
    load_id = repo_id or "path/to/this/folder"
    size_kb = stored.nbytes / 1024
    return (
        "\n".join(line for line in front if line is not None)
        + f"""

# Binary mask for `{base}`

This repo holds a learned binary mask (Zhao et al., 2020, *Masking as an Efficient Alternative to
Finetuning for Pretrained Language Models*) over the frozen weights of `{base}`
(revision `{revision or "local"}`), plus the small task head, {size_kb:,.0f} KiB in all. The base
weights are not copied: they are downloaded from the base repo and verified against a fingerprint.

- head: `{record["head_class"]}`
- masked weights: {sparsity["masked_weights"]:,} in {len(record["masked_modules"])} layers
- masked out: {sparsity["global"]:.2%} of them

| block | masked out |
|---|---|
{blocks}

## Use

```python
from hf_masking import MaskedModel

model = MaskedModel.from_pretrained("{load_id}")
```
"""
    )


# ----- Hub transfer ----------------------------------------------------------------------
def download_repo(repo_id: str, revision: str | None, token: str | bool | None) -> str:
    """The local folder of a mask repo, downloading it from the Hub when it is not a local path."""
    if os.path.isdir(repo_id):
        return repo_id
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        config_path = hf_hub_download(repo_id, CONFIG_NAME, revision=revision, token=token)
        commit = os.path.basename(os.path.dirname(config_path))  # snapshots/<commit>/masking_config.json
        hf_hub_download(repo_id, WEIGHTS_NAME, revision=commit, token=token)
    except RepositoryNotFoundError as err:
        raise OSError(
            f"Cannot access the mask repo {repo_id!r}: it does not exist, or it is private and no token with access "
            "to it was given (pass token=... or log in with `hf auth login`)."
        ) from err
    except RevisionNotFoundError as err:
        raise OSError(f"The mask repo {repo_id!r} has no revision {revision!r}.") from err
    except EntryNotFoundError as err:
        raise MaskRepoError(
            f"{repo_id!r} at revision {revision or 'main'!r} is not a mask repo: it has no {CONFIG_NAME} or "
            f"{WEIGHTS_NAME}."
        ) from err
    return os.path.dirname(config_path)


def upload_folder(
    folder: str,
    repo_id: str,
    private: bool,
    token: str | None,
    revision: str | None,
    commit_message: str | None,
    paths: Iterable[str],
) -> str:
    """Create the repo (and branch) if needed, upload `paths` from `folder`; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        allow_patterns=list(paths),
        revision=revision,
        commit_message=commit_message or "Upload mask with hf-masking",
    )
    return info.commit_url
