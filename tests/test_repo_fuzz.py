"""Fuzzing a mask repo's files: every truncation, sampled single-bit flips over both files, and every
config field removed or retyped (and re-signed, as a hostile author would) is refused clearly or is
harmless. Set HF_MASKING_FUZZ=full to flip every bit instead of a fixed-seed sample.
"""

import copy
import json
import os
import random

import pytest
import torch
from conftest import load_quietly, save_pretrained_base, train_a_little
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from repo_tools import write
from transformers import AutoModelForSequenceClassification

from hf_masking import BaseModelMismatchError, MaskedModel, MaskingConfig, MaskRepoError, repo

FULL = os.environ.get("HF_MASKING_FUZZ") == "full"
FLIPS = None if FULL else 1500  # per file, sampled with a fixed seed
LOCATION_FIELDS = ("base_model_name_or_path", "base_model_revision")


# Format 3 codes a layer given its initial scores (rice-gaps-by-init) where that is smaller, else plainly:
# the "tiny" model has layers of both kinds, the "wide" one conditional streams of more buckets.
SIZES = {"tiny": {}, "wide": {"hidden_size": 64, "intermediate_size": 256, "vocab_size": 500}}


@pytest.fixture(scope="module", params=sorted(SIZES))
def saved(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("fuzz")
    base_dir = save_pretrained_base(root / "base", **SIZES[request.param])
    torch.manual_seed(0)
    base = load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=3)
    model = train_a_little(MaskedModel(base, MaskingConfig(initial_sparsity=0.1)))
    model.save_pretrained(root / "mask")
    with open(root / "mask" / repo.CONFIG_NAME, "rb") as a, open(root / "mask" / repo.WEIGHTS_NAME, "rb") as b:
        config, weights = a.read(), b.read()
    magics = {repo.parse_repo(config, weights, "c", "w").masks[n].data[:4] for n in model.targets.modules}
    assert b"HFM3" in magics and (request.param == "wide" or b"HFMK" in magics)  # tiny: both kinds of stream
    return {"root": root, "config": config, "weights": weights}


def parse(config: bytes, weights: bytes) -> repo.StoredMask:
    return repo.parse_repo(config, weights, repo.CONFIG_NAME, repo.WEIGHTS_NAME)


def content(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in (*LOCATION_FIELDS, "weights_sha256")}


def bits(data: bytes) -> list[int]:
    every = range(8 * len(data))
    return list(every) if FLIPS is None else random.Random(0).sample(every, min(FLIPS, len(every)))


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_every_truncation_of_the_weights_is_refused(saved):
    for length in range(len(saved["weights"])):
        with pytest.raises(MaskRepoError, match=repo.WEIGHTS_NAME):
            parse(saved["config"], saved["weights"][:length])


def test_every_truncation_of_the_config_is_refused_or_changes_nothing(saved):
    original = parse(saved["config"], saved["weights"]).record
    for length in range(len(saved["config"])):
        try:
            record = parse(saved["config"][:length], saved["weights"]).record
        except MaskRepoError as err:
            assert repo.CONFIG_NAME in str(err) or repo.WEIGHTS_NAME in str(err)
            continue
        assert record == original, length  # only the final newline can go


def test_every_sampled_bit_flip_of_the_weights_is_refused(saved):
    for bit in bits(saved["weights"]):
        with pytest.raises(MaskRepoError):
            parse(saved["config"], flip(saved["weights"], bit))


def test_every_sampled_bit_flip_of_the_config_is_refused_or_only_moves_the_base(saved):
    """A flip outside the base's location is refused; one inside it changes where the base is looked
    for, which the base's fingerprint then checks (or the same value spelled otherwise, e.g. 1e-12 as 1E-12)."""
    original = content(parse(saved["config"], saved["weights"]).record)
    for bit in bits(saved["config"]):
        try:
            record = parse(flip(saved["config"], bit), saved["weights"]).record
        except MaskRepoError:
            continue
        assert content(record) == original, bit


# ----- every field removed or retyped, then re-signed -------------------------------------
OTHER_VALUES = [None, True, 0, -1, 1.5, 10**30, "", "x", [], ["x"], {}, {"x": 1}]


def field_paths(record: dict) -> list[tuple]:
    """Paths to every field, one entry of each big map (fingerprint tensors, label maps) standing for all."""
    paths = []

    def walk(value, path):
        if isinstance(value, dict):
            keys = list(value)
            if path and path[-1] in ("tensors", "id2label", "label2id", "sha256"):
                keys = keys[:1]
            for key in keys:
                paths.append((*path, key))
                walk(value[key], (*path, key))
        elif isinstance(value, list) and value:
            paths.append((*path, 0))
            walk(value[0], (*path, 0))

    walk(record, ())
    return paths


def mutate(record: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(record)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if value is REMOVE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


REMOVE = object()


@pytest.fixture(scope="module")
def baseline(saved):
    return parse(saved["config"], saved["weights"])


def test_every_config_field_removed_or_retyped_is_refused_naming_it_or_loads_cleanly(saved, baseline, tmp_path):
    folder = tmp_path / "forged"
    folder.mkdir()
    loaded_cleanly = 0
    for path in field_paths(baseline.record):
        for value in [REMOVE, *OTHER_VALUES]:
            record = mutate(baseline.record, path, value)
            config, weights = repo.encode_repo(repo.StoredMask(record, baseline.masks, baseline.head))
            try:
                parse(config, weights)
            except MaskRepoError as err:
                named = [str(k) for k in path if not isinstance(k, int)]
                assert any(name in str(err) for name in named), (path, value, str(err))
                continue
            # Valid by the schema: loading must then work or fail with a clear error, never a crash.
            write(folder, config, weights)
            try:
                MaskedModel.from_pretrained(folder, base_model=str(saved["root"] / "base"))
                loaded_cleanly += 1
            except (MaskRepoError, BaseModelMismatchError, ValueError) as err:
                assert not isinstance(err, (KeyError, TypeError, IndexError)), (path, value, repr(err))
    assert loaded_cleanly > 0  # e.g. model_type or the revision set to null, a seed changed


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
        max_leaves=8,
    ),
    st.sampled_from(["masking_config", "label_config", "base_fingerprint", "masked_modules", "head_class"]),
)
def test_arbitrary_json_in_a_field_never_crashes_the_parser(baseline, value, field):
    record = mutate(baseline.record, (field,), value)
    try:
        config, weights = repo.encode_repo(repo.StoredMask(record, baseline.masks, baseline.head))
    except ValueError:  # not representable as JSON (infinite floats): cannot be in a file either
        return
    try:
        parse(config, weights)
    except MaskRepoError as err:
        assert field in str(err)


def test_a_parsed_record_is_plain_json(baseline):
    assert json.loads(json.dumps(baseline.record)) == baseline.record
