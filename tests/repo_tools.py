"""Rewrite a saved mask repo the way a hostile author would: edited, then consistently re-signed.

Digests are not secret, so an attacker can always make the two files agree; tests that forge with
these helpers show that the schema and the model-side checks refuse the content itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import types

from safetensors import safe_open
from safetensors.torch import save

from hf_masking import codec, repo

FILE_SYSTEM_CALLS = ("open", "write", "fsync", "close", "rename", "replace", "rmdir", "mkdir", "unlink", "makedirs")


def os_stopping_at(step: int, stop) -> types.SimpleNamespace:
    """The os module, except that its `step`-th file-system call runs `stop(name)` first (raise, or kill)."""
    count = [0]

    def wrap(name):
        real = getattr(os, name)

        def call(*args, **kwargs):
            count[0] += 1
            if count[0] == step:
                stop(name)
            return real(*args, **kwargs)

        return call

    namespace = {name: getattr(os, name) for name in dir(os) if not name.startswith("__")}
    namespace.update({name: wrap(name) for name in FILE_SYSTEM_CALLS})
    return types.SimpleNamespace(**namespace)


def read_raw(folder) -> tuple[dict, dict, dict]:
    """(record, metadata, tensors) of a repo folder, unchecked."""
    with open(os.path.join(folder, repo.CONFIG_NAME)) as handle:
        record = json.load(handle)
    with safe_open(os.path.join(folder, repo.WEIGHTS_NAME), "pt") as handle:
        metadata = json.loads(handle.metadata()["hf_masking"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return record, metadata, tensors


def forge(folder, edit_record=None, edit_head=None, edit_metadata=None) -> None:
    """Apply the edits and write both files back, bound to each other as a real save would."""
    record, metadata, tensors = read_raw(folder)
    masks = {
        name: codec.EncodedMask(
            tensors[repo.MASK_PREFIX + name].numpy().tobytes(), tuple(entry["shape"]), entry["digest"]
        )
        for name, entry in metadata["masks"].items()
    }
    head = {key[len(repo.HEAD_PREFIX) :]: t for key, t in tensors.items() if key.startswith(repo.HEAD_PREFIX)}
    if edit_record:
        edit_record(record)
    if edit_head:
        edit_head(head)
    config_bytes, weights_bytes = repo.encode_repo(repo.StoredMask(record=record, masks=masks, head=head))
    if edit_metadata:
        size = int.from_bytes(weights_bytes[:8], "little")
        header = json.loads(weights_bytes[8 : 8 + size])
        meta = json.loads(header["__metadata__"]["hf_masking"])
        edit_metadata(meta)
        from safetensors.torch import load

        weights_bytes = save(load(weights_bytes), metadata={"hf_masking": json.dumps(meta)})
        written = json.loads(config_bytes)
        written["weights_sha256"] = hashlib.sha256(weights_bytes).hexdigest()
        config_bytes = json.dumps(written).encode()
    write(folder, config_bytes, weights_bytes)


def write(folder, config_bytes: bytes | None = None, weights_bytes: bytes | None = None) -> None:
    if config_bytes is not None:
        with open(os.path.join(folder, repo.CONFIG_NAME), "wb") as handle:
            handle.write(config_bytes)
    if weights_bytes is not None:
        with open(os.path.join(folder, repo.WEIGHTS_NAME), "wb") as handle:
            handle.write(weights_bytes)


def files(folder) -> tuple[bytes, bytes]:
    with (
        open(os.path.join(folder, repo.CONFIG_NAME), "rb") as a,
        open(os.path.join(folder, repo.WEIGHTS_NAME), "rb") as b,
    ):
        return a.read(), b.read()
