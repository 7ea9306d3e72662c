import json
import math

import pytest

from hf_masking import MaskingConfig


def test_defaults_follow_the_paper():
    config = MaskingConfig()
    assert config.threshold == 0.01
    assert config.initial_sparsity == 0.05
    assert config.init_scale == 0.02
    assert config.binarizer == "threshold"
    assert config.mask_pooler and config.mask_classifier
    low, high = config.init_range
    # P(U[low, high] < tau) must be exactly p.
    assert math.isclose((config.threshold - low) / (high - low), config.initial_sparsity)


def test_json_round_trip(tmp_path):
    config = MaskingConfig(
        initial_sparsity=0.1, layers=[3, 4], target_modules=["a.b"], extra_patterns=["x.*"], binarizer="topk", seed=7
    )
    path = tmp_path / "c.json"
    path.write_text(config.to_json_string())
    assert MaskingConfig.from_json_file(path) == config
    assert json.loads(config.to_json_string())["layers"] == [3, 4]


@pytest.mark.parametrize(
    "kwargs, field, fragment",
    [
        ({"initial_sparsity": 0.0}, "initial_sparsity", "between 0 and 1"),
        ({"initial_sparsity": 1.0}, "initial_sparsity", "between 0 and 1"),
        ({"initial_sparsity": -0.2}, "initial_sparsity", "between 0 and 1"),
        ({"initial_sparsity": float("nan")}, "initial_sparsity", "finite"),
        ({"threshold": float("inf")}, "threshold", "finite"),
        ({"threshold": "0.1"}, "threshold", "finite number"),
        ({"init_scale": 0.0}, "init_scale", "positive"),
        ({"binarizer": "sigmoid"}, "binarizer", "['threshold', 'topk']"),
        ({"layers": [-1, 2]}, "layers", "non-negative"),
        ({"layers": [2, 2]}, "layers", "must not repeat"),
        ({"target_modules": ["query", ""]}, "target_modules", "list of non-empty strings"),
        ({"extra_patterns": ["(unclosed"]}, "extra_patterns", "not a regular expression"),
        ({"seed": 1.5}, "seed", "integer"),
        ({"mask_pooler": "yes"}, "mask_pooler", "true or false"),
    ],
)
def test_invalid_values_name_field_value_and_what_is_allowed(kwargs, field, fragment):
    with pytest.raises(ValueError) as err:
        MaskingConfig(**kwargs)
    message = str(err.value)
    assert f"MaskingConfig.{field}" in message
    value = next(iter(kwargs.values()))
    shown = value[0] if field == "extra_patterns" else value
    assert repr(shown)[:8] in message
    assert fragment in message


def test_unknown_field_in_json_is_named():
    with pytest.raises(ValueError, match="initial_sparsty"):
        MaskingConfig.from_dict({"initial_sparsty": 0.1})
