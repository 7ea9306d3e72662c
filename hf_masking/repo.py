"""The tiny mask repo's format: what its two data files hold, how they are checked, and how they bind.

- ``masking_config.json``: the `MaskingConfig`, the base id and pinned commit, the head class and
  label fields, the masked modules, the base fingerprint, and the sha256 of ``mask.safetensors``;
- ``mask.safetensors``: each masked layer's compressed mask (uint8) and the head tensors the base
  lacks; its metadata holds a digest per tensor and the digest of the config fields it belongs to.

Everything read from a repo is untrusted data: each field is checked for type and range against
a fixed schema before use, every tensor against its digest, and the two files against each other,
so a corrupted, truncated or mismatched repo fails with a `MaskRepoError` naming the file and field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from . import codec
from .config import MaskingConfig
from .errors import MaskRepoError
from .fingerprint import tensor_digest

CONFIG_NAME = "masking_config.json"
WEIGHTS_NAME = "mask.safetensors"
CARD_NAME = "README.md"
REPO_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)  # 2: masks coded alone (rice-gaps), full digests; 3: coded given the initial scores
MASK_PREFIX = "mask."
HEAD_PREFIX = "head."
_METADATA_KEY = "hf_masking"  # one key: safetensors writes several metadata keys in random order
# Fields that say where the base is; editing them (e.g. to a local copy) keeps the repo valid.
_LOCATION_FIELDS = ("base_model_name_or_path", "base_model_revision")
LABEL_FIELDS = ("id2label", "label2id", "num_labels", "problem_type")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"[0-9a-f]{16}|[0-9a-f]{64}")  # a short digest (format 3) or a full one (format 2)
SHORT_DIGEST = 16
_COMMIT = re.compile(r"[0-9a-f]{40}")
_CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9_]{0,127}")
_MODULE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_MAX_DIM = 2**40


# A MaskedModel's state dict (what Trainer.save_model and checkpoints write, as model.safetensors)
# carries the repo record under this key, so a Trainer's own output folder is a loadable mask.
RECORD_KEY = "hf_masking_record"
STATE_FILE = "model.safetensors"


@dataclass
class StoredMask:
    """A mask as it is kept on disk and, compressed, in memory for switching."""

    record: dict[str, Any]  # masking_config.json, validated
    masks: dict[str, codec.EncodedMask]  # module name -> compressed mask
    head: dict[str, torch.Tensor]  # tensor name in the wrapped model -> value
    scores: dict[str, torch.Tensor] | None = None  # fp32 scores, when read from a Trainer checkpoint

    @property
    def config(self) -> MaskingConfig:
        # Repos of hf-masking < 0.4 predate `head`: their heads were masked, which "auto" may no longer do.
        return MaskingConfig.from_dict({"head": "mask", **self.record["masking_config"]})

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.masks.values()) + sum(
            t.numel() * t.element_size() for t in self.head.values()
        )


# ----- canonical forms -------------------------------------------------------------------
def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def binding_digest(record: dict[str, Any]) -> str:
    """sha256 of the config fields a weights file belongs to (all but the base's location)."""
    bound = {k: v for k, v in json.loads(_canonical(record)).items() if k not in (*_LOCATION_FIELDS, "weights_sha256")}
    return hashlib.sha256(_canonical(bound)).hexdigest()


# ----- writing ---------------------------------------------------------------------------
def encode_repo(stored: StoredMask) -> tuple[bytes, bytes]:
    """(masking_config.json, mask.safetensors) as bytes, bound to each other; sets record['weights_sha256']."""
    record = {k: v for k, v in stored.record.items() if k != "weights_sha256"}
    record["format_version"] = FORMAT_VERSION
    tensors: dict[str, torch.Tensor] = {}
    masks = {}
    for module_name, encoded in stored.masks.items():
        tensors[MASK_PREFIX + module_name] = torch.frombuffer(bytearray(encoded.data), dtype=torch.uint8)
        masks[module_name] = {"shape": list(encoded.shape), "digest": encoded.digest[:SHORT_DIGEST]}
    for name, tensor in stored.head.items():
        tensors[HEAD_PREFIX + name] = tensor.detach().to("cpu").contiguous()
    # Short digests: the config's weights_sha256 covers the whole file; these name what differs, and a
    # mask's digest checks its decoded positions (64 bits against a decoding that went wrong).
    metadata = {
        "format": "hf-masking",
        "format_version": FORMAT_VERSION,
        "codec": codec.CONDITIONAL_CODEC_NAME,
        "codec_version": codec.CONDITIONAL_CODEC_VERSION,
        "masks": masks,
        "tensors": {key: tensor_digest(t)[:SHORT_DIGEST] for key, t in tensors.items()},
        "config_digest": binding_digest(record),
    }
    weights = save_safetensors(tensors, metadata={_METADATA_KEY: _canonical(metadata).decode()})
    record["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    stored.record = record
    return dump_record(record), weights


def dump_record(record: dict[str, Any]) -> bytes:
    """masking_config.json: one top-level field per line, each value compact (the fingerprint is most of it)."""
    lines = [
        f"{json.dumps(key)}: {json.dumps(record[key], sort_keys=True, separators=(',', ':'), allow_nan=False)}"
        for key in sorted(record)
    ]
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode()


# ----- reading: the config ---------------------------------------------------------------
class _Fields:
    """Type and range checks that name the file and the field at fault."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, field: str, problem: str) -> MaskRepoError:
        return MaskRepoError(f"{self.path}: field {field!r} {problem}.")

    def dict(self, value: Any, field: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be an object, not {type(value).__name__}")
        return value

    def str(self, value: Any, field: str, pattern: re.Pattern | None = None, max_len: int = 1000) -> str:
        if not isinstance(value, str) or not value or len(value) > max_len:
            raise self.fail(field, f"must be a non-empty string of at most {max_len} characters, not {value!r:.80}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(field, f"is not valid ({value!r:.80})")
        return value

    def int(self, value: Any, field: str, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(field, f"must be an integer from {low} to {high}, not {value!r:.80}")
        return value

    def shape(self, value: Any, field: str) -> list[int]:
        if not isinstance(value, list) or len(value) > 8:
            raise self.fail(field, f"must be a list of at most 8 dimensions, not {value!r:.80}")
        for i, dim in enumerate(value):
            self.int(dim, f"{field}[{i}]", 0, _MAX_DIM)
        return value

    def keys(self, value: dict, field: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
        missing = [k for k in required if k not in value]
        if missing:
            raise self.fail(f"{field}.{missing[0]}" if field else missing[0], "is missing")
        unknown = sorted(set(value) - set(required) - set(optional))
        if unknown:
            raise self.fail(f"{field}.{unknown[0]}" if field else unknown[0], "is not a known field")


_RECORD_FIELDS = (
    "format_version",
    "hf_masking_version",
    "masking_config",
    "base_model_name_or_path",
    "base_model_revision",
    "model_type",
    "head_class",
    "label_config",
    "masked_modules",
    "base_fingerprint",
    "weights_sha256",
)


def validate_label_config(value: Any, check: _Fields) -> dict[str, Any]:
    labels = check.dict(value, "label_config")
    check.keys(labels, "label_config", (), LABEL_FIELDS)
    if "id2label" in labels:
        id2label = check.dict(labels["id2label"], "label_config.id2label")
        for key, name in id2label.items():
            if not (isinstance(key, str) and key.isdigit() and len(key) <= 7):
                raise check.fail("label_config.id2label", f"has a key that is not a label index: {key!r:.40}")
            check.str(name, f"label_config.id2label.{key}", max_len=200)
    if "label2id" in labels:
        label2id = check.dict(labels["label2id"], "label_config.label2id")
        for name, index in label2id.items():
            check.str(name, "label_config.label2id", max_len=200)
            check.int(index, f"label_config.label2id.{name}", 0, 10**6)
    if "num_labels" in labels:
        check.int(labels["num_labels"], "label_config.num_labels", 1, 10**6)
        if "id2label" in labels and len(labels["id2label"]) != labels["num_labels"]:
            raise check.fail("label_config.num_labels", "does not match the number of labels in id2label")
    if "problem_type" in labels and labels["problem_type"] not in PROBLEM_TYPES:
        raise check.fail("label_config.problem_type", f"must be one of {list(PROBLEM_TYPES)}")
    return labels


def _validate_fingerprint(value: Any, check: _Fields) -> None:
    """Version 1: full digests per tensor in a dict; version 2: [shape, dtype, short digests…] plus one full digest."""
    fingerprint = check.dict(value, "base_fingerprint")
    check.keys(fingerprint, "base_fingerprint", ("version",), ("config", "tensors", "sha256"))
    version = check.int(fingerprint["version"], "base_fingerprint.version", 1, 2)
    check.keys(
        fingerprint, "base_fingerprint", ("version", "config", "tensors", *(("sha256",) if version == 2 else ()))
    )
    check.dict(fingerprint["config"], "base_fingerprint.config")
    tensors = check.dict(fingerprint["tensors"], "base_fingerprint.tensors")
    if not tensors:
        raise check.fail("base_fingerprint.tensors", "is empty: a mask repo must fingerprint its base")
    if version == 2:
        check.str(fingerprint["sha256"], "base_fingerprint.sha256", _HEX64, 64)
    digest = _HEX64 if version == 1 else re.compile(r"[0-9a-f]{16}")
    for name, entry in tensors.items():
        field = f"base_fingerprint.tensors.{name}"
        check.str(name, field, _MODULE_NAME)
        if version == 1:
            check.dict(entry, field)
            check.keys(entry, field, ("shape", "dtype", "sha256"))
            shape, dtype, digests = entry["shape"], entry["dtype"], entry["sha256"]
        else:
            if not isinstance(entry, list) or len(entry) not in (3, 5):
                raise check.fail(field, "must be [shape, dtype, digest] or [shape, 'float32', 3 digests]")
            shape, dtype, digests = entry[0], entry[1], entry[2:]
        check.shape(shape, f"{field}.shape")
        check.str(dtype, f"{field}.dtype", re.compile(r"[a-z0-9]+"), 20)
        if version == 1:
            digests = check.dict(digests, f"{field}.sha256")
            if dtype not in digests:
                raise check.fail(f"{field}.sha256", f"has no digest for the tensor's own dtype {dtype}")
            for rounding in digests:
                check.str(rounding, f"{field}.sha256", re.compile(r"[a-z0-9]+"), 20)
            digests = list(digests.values())
        elif len(digests) == 3 and dtype != "float32":
            raise check.fail(field, "has half-precision digests for a tensor that is not float32")
        for i, value_digest in enumerate(digests):
            check.str(value_digest, f"{field}[{i}]", digest, 64)


def validate_record(record: Any, path: str, bound: bool = True) -> dict[str, Any]:
    """Check every field of a parsed masking_config.json; returns it unchanged.

    `bound=False` for the record inside a Trainer state dict, which has no weights file to bind.
    """
    check = _Fields(path)
    if not isinstance(record, dict):
        raise MaskRepoError(f"{path}: expected a JSON object, got {type(record).__name__}.")
    version = record.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        older = " (hf-masking 0.1, whose repos lack the checksums and full base fingerprint)" if version == 1 else ""
        raise MaskRepoError(
            f"{path}: format_version {version!r:.20}{older}; this version of hf-masking reads formats "
            f"{list(READABLE_VERSIONS)}."
        )
    check.keys(record, "", _RECORD_FIELDS if bound else _RECORD_FIELDS[:-1])
    check.str(record["hf_masking_version"], "hf_masking_version", max_len=64)
    config = check.dict(record["masking_config"], "masking_config")
    try:
        MaskingConfig.from_dict(config)
    except (ValueError, TypeError) as err:
        raise check.fail("masking_config", f"is invalid: {err}") from err
    if record["base_model_name_or_path"] is not None:
        check.str(record["base_model_name_or_path"], "base_model_name_or_path")
    if record["base_model_revision"] is not None:
        check.str(record["base_model_revision"], "base_model_revision", _COMMIT, 40)
    if record["model_type"] is not None:
        check.str(record["model_type"], "model_type", re.compile(r"[A-Za-z0-9_-]+"), 100)
    check.str(record["head_class"], "head_class", _CLASS_NAME, 128)
    validate_label_config(record["label_config"], check)
    modules = record["masked_modules"]
    if not isinstance(modules, list) or not modules:
        raise check.fail("masked_modules", "must be a non-empty list of module names")
    for i, name in enumerate(modules):
        check.str(name, f"masked_modules[{i}]", _MODULE_NAME)
    if len(set(modules)) != len(modules):
        raise check.fail("masked_modules", "names a module twice")
    _validate_fingerprint(record["base_fingerprint"], check)
    if bound:
        check.str(record["weights_sha256"], "weights_sha256", _HEX64, 64)
    return record


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_config(data: bytes, path: str, bound: bool = True) -> dict[str, Any]:
    try:
        record = json.loads(data.decode("utf-8"), parse_float=_finite, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise MaskRepoError(f"{path} is not valid JSON ({type(err).__name__}: {err}).") from err
    return validate_record(record, path, bound)


# ----- reading: the weights --------------------------------------------------------------
def _read_metadata(data: bytes, path: str) -> dict[str, Any]:
    if len(data) < 8:
        raise MaskRepoError(f"{path} is truncated ({len(data)} bytes, no safetensors header).")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise MaskRepoError(f"{path} is truncated (its header says {size} bytes; the file has {len(data) - 8}).")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
        metadata = json.loads(header["__metadata__"][_METADATA_KEY])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError) as err:
        raise MaskRepoError(
            f"{path} is corrupted or not an hf-masking weights file (its header cannot be read: "
            f"{type(err).__name__}: {err})."
        ) from err
    check = _Fields(f"{path} (metadata)")
    check.dict(metadata, "metadata")
    check.keys(
        metadata, "", ("format", "format_version", "codec", "codec_version", "masks", "tensors", "config_digest")
    )
    version = metadata["format_version"]
    if metadata["format"] != "hf-masking" or version not in READABLE_VERSIONS or isinstance(version, bool):
        raise MaskRepoError(
            f"{path}: format {metadata['format']!r:.40} version {version!r:.20}; this version of "
            f"hf-masking reads 'hf-masking' versions {list(READABLE_VERSIONS)}."
        )
    codecs = {
        2: (codec.CODEC_NAME, codec.CODEC_VERSION),
        3: (codec.CONDITIONAL_CODEC_NAME, codec.CONDITIONAL_CODEC_VERSION),
    }
    if (metadata["codec"], metadata["codec_version"]) != codecs[version]:
        name, number = codecs[version]
        raise MaskRepoError(
            f"{path} uses mask codec {metadata['codec']!r:.40} version {metadata['codec_version']!r:.20}; this version "
            f"of hf-masking reads {name!r} version {number} in format {version}."
        )
    for name, entry in check.dict(metadata["masks"], "masks").items():
        check.str(name, "masks", _MODULE_NAME)
        check.dict(entry, f"masks.{name}")
        if version == 2:
            check.keys(entry, f"masks.{name}", ("tensor", "shape", "digest"))
            if entry["tensor"] != MASK_PREFIX + name:
                raise check.fail(f"masks.{name}.tensor", "does not name the mask's tensor")
        else:
            check.keys(entry, f"masks.{name}", ("shape", "digest"))
        check.shape(entry["shape"], f"masks.{name}.shape")
        check.str(entry["digest"], f"masks.{name}.digest", _DIGEST, 64)
    for key, digest in check.dict(metadata["tensors"], "tensors").items():
        check.str(digest, f"tensors.{key}", _DIGEST, 64)
    check.str(metadata["config_digest"], "config_digest", _HEX64, 64)
    return metadata


def _load_tensors(data: bytes, path: str) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(data)
    except Exception as err:  # the parser's errors on malformed input have no common type
        raise MaskRepoError(f"{path} is truncated or corrupted ({type(err).__name__}: {err}).") from err


def parse_repo(config_data: bytes, weights_data: bytes, config_path: str, weights_path: str) -> StoredMask:
    """Check both files and their binding; every problem is a `MaskRepoError` naming the file."""
    record = parse_config(config_data, config_path)
    actual_sha = hashlib.sha256(weights_data).hexdigest()
    metadata = _read_metadata(weights_data, weights_path)
    tensors = _load_tensors(weights_data, weights_path)
    if sorted(tensors) != sorted(metadata["tensors"]):
        raise MaskRepoError(f"{weights_path} is corrupted: its tensors are not the ones its metadata lists.")
    for key, tensor in tensors.items():
        recorded = metadata["tensors"][key]
        if tensor_digest(tensor)[: len(recorded)] != recorded:
            raise MaskRepoError(f"{weights_path} is corrupted: tensor {key!r} does not match its digest.")
    expected_binding = binding_digest(record)
    if actual_sha != record["weights_sha256"] or metadata["config_digest"] != expected_binding:
        if metadata["config_digest"] != expected_binding:
            raise MaskRepoError(
                f"{weights_path} and {config_path} do not belong together: the weights were saved with a config of "
                f"digest {metadata['config_digest'][:12]}…, this config has digest {expected_binding[:12]}… (one was "
                "edited, corrupted, or copied from another mask repo)."
            )
        raise MaskRepoError(
            f"{weights_path} (sha256 {actual_sha[:12]}…) is not the weights file {config_path} was saved with "
            f"(sha256 {record['weights_sha256'][:12]}…): it is corrupted or comes from another mask repo."
        )
    masks = {}
    config = MaskingConfig.from_dict(record["masking_config"])
    for module_name in record["masked_modules"]:
        entry = metadata["masks"].get(module_name)
        if entry is None or MASK_PREFIX + module_name not in tensors:
            raise MaskRepoError(
                f"{weights_path} has no mask for {module_name!r}, which field 'masked_modules' of {config_path} lists."
            )
        tensor = tensors[MASK_PREFIX + module_name]
        if tensor.dtype != torch.uint8 or tensor.dim() != 1:
            raise MaskRepoError(f"{weights_path}: the mask of {module_name} is not a flat uint8 tensor.")
        encoded = codec.EncodedMask(
            tensor.numpy().tobytes(), tuple(entry["shape"]), entry["digest"], init_context(config, module_name)
        )
        try:
            codec.verify(encoded)  # lengths, ranges and the digest of the decoded positions
        except codec.MaskCodecError as err:
            raise MaskRepoError(f"{weights_path}: the mask of {module_name} is unusable: {err}.") from err
        masks[module_name] = encoded
    extra = sorted(set(metadata["masks"]) - set(record["masked_modules"]))
    if extra:
        raise MaskRepoError(
            f"{weights_path} holds a mask for {extra[0]!r}, which field 'masked_modules' of {config_path} omits."
        )
    head = {}
    for key, tensor in tensors.items():
        if key.startswith(MASK_PREFIX):
            if key[len(MASK_PREFIX) :] not in masks:
                raise MaskRepoError(f"{weights_path} holds a tensor {key!r} that is no listed mask.")
            continue
        if not key.startswith(HEAD_PREFIX) or not _MODULE_NAME.fullmatch(key[len(HEAD_PREFIX) :]):
            raise MaskRepoError(f"{weights_path} holds a tensor {key!r} that is neither a mask nor a head tensor.")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise MaskRepoError(f"{weights_path}: head tensor {key[len(HEAD_PREFIX) :]!r} holds NaN or infinity.")
        head[key[len(HEAD_PREFIX) :]] = tensor
    return StoredMask(record=record, masks=masks, head=head)


def init_context(config: MaskingConfig, module_name: str) -> codec.InitContext:
    """What decoding a layer's mask needs besides its bytes: how training drew its initial scores."""
    low, high = config.init_range
    return codec.InitContext(config.seed, module_name, low, high, config.threshold)


def record_tensor(record: dict[str, Any]) -> torch.Tensor:
    """The record as a uint8 tensor, to travel inside a state dict."""
    return torch.frombuffer(bytearray(_canonical(record)), dtype=torch.uint8)


def read_trainer_state(directory: str) -> StoredMask | None:
    """The mask in a folder written by ``Trainer.save_model`` or a Trainer checkpoint, or None if it has none.

    The state dict holds the fp32 scores (kept, for exact continuation), the head and the record;
    the mask is what the scores binarize to.
    """
    from safetensors import SafetensorError, safe_open

    from .binarizer import binarizer_for

    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, framework="pt") as handle:
            if RECORD_KEY not in handle.keys():
                return None
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise MaskRepoError(f"{path} is truncated or corrupted ({type(err).__name__}: {err}).") from err
    raw = tensors.pop(RECORD_KEY)
    if raw.dtype != torch.uint8 or raw.dim() != 1:
        raise MaskRepoError(f"{path}: tensor {RECORD_KEY!r} is not the UTF-8 bytes of a record.")
    record = parse_config(raw.numpy().tobytes(), f"{path} ({RECORD_KEY})", bound=False)
    config = MaskingConfig.from_dict(record["masking_config"])
    binarize = binarizer_for(config)
    masks, scores = {}, {}
    for name in record["masked_modules"]:
        value = tensors.pop(f"model.{name}.mask_scores", None)
        if value is None or not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise MaskRepoError(f"{path} has no finite scores for {name}, which its record lists.")
        scores[name] = value.float()
        masks[name] = codec.encode(binarize(scores[name]))
    head = {}
    for key, value in tensors.items():
        if not key.startswith("model.") or key.endswith(".mask_scores"):
            raise MaskRepoError(f"{path} holds a tensor {key!r} that is neither listed scores nor a head tensor.")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise MaskRepoError(f"{path}: head tensor {key[len('model.') :]!r} holds NaN or infinity.")
        head[key[len("model.") :]] = value
    return StoredMask(record=record, masks=masks, head=head, scores=scores)


def read_folder(directory: str, follow_links: bool = False) -> StoredMask:
    """Read and check a mask repo folder (mid-save too: see `atomic_save`), or a Trainer's output folder.

    A save may commit between reading the config and reading the weights: the pair then does not
    belong together, and reading both again shows the files changed. Then it reads again (the old
    or the new repo, never an error for a healthy one); only a pair that stays mismatched is refused.
    Links are refused unless `follow_links` (the Hub cache's snapshot links).
    """
    from .atomic_save import read_current

    paths = os.path.join(directory, CONFIG_NAME), os.path.join(directory, WEIGHTS_NAME)
    for attempt in range(READ_ATTEMPTS):
        config = read_current(directory, CONFIG_NAME, follow_links)
        if config is None:
            from_trainer = read_trainer_state(directory)
            if from_trainer is not None:
                return from_trainer
        weights = read_current(directory, WEIGHTS_NAME, follow_links)
        for name, data in ((CONFIG_NAME, config), (WEIGHTS_NAME, weights)):
            if data is None:
                raise MaskRepoError(f"{directory} is not a mask repo: {name} is missing.")
        try:
            return parse_repo(config, weights, *paths)
        except MaskRepoError:
            now = (
                read_current(directory, CONFIG_NAME, follow_links),
                read_current(directory, WEIGHTS_NAME, follow_links),
            )
            if now == (config, weights) or attempt == READ_ATTEMPTS - 1:
                raise  # the files are what they are: a real error
            time.sleep(0.01 * (attempt + 1))  # a writer is saving: read the pair again
    raise AssertionError("unreachable")


READ_ATTEMPTS = 20
