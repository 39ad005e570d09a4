"""Where users touch it (issue 21): readers that say what they could not read, files that are valid JSON, configs
that refuse a key given twice, models that run under autocast, flags checked one line each."""

import json
import math

import pytest

from hieralab import files
from hieralab.config import PretrainConfig
from hieralab.config.schema import apply_overrides, load_config, read_preset
from hieralab.errors import ConfigError


# ---------------------------------------------------------------- files.write_json (case 4)
def test_write_json_writes_nan_and_inf_as_null(tmp_path):
    path = files.write_json(tmp_path / "m.json", {"loss": math.nan, "best": [1.5, math.inf, -math.inf],
                                                  "nested": {"x": (float("nan"), 2)}, "ok": 0.25, "n": 3})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON")) == \
        {"loss": None, "best": [1.5, None, None], "nested": {"x": [None, 2]}, "ok": 0.25, "n": 3}


# ---------------------------------------------------------------- config (case 5)
def test_preset_with_a_key_given_twice_is_refused(tmp_path):
    preset = tmp_path / "twice.yaml"
    preset.write_text("epochs: 2\noptim:\n  base_lr: 1.0e-3\n  batch_size: 8\n  base_lr: 1.0e-2\n")
    with pytest.raises(ConfigError) as e:
        read_preset(str(preset))
    assert len(e.value.problems) == 1
    assert str(preset) in str(e.value) and "'base_lr'" in str(e.value) and "lines 3 and 5" in str(e.value)
    flow = tmp_path / "flow.yaml"
    flow.write_text("optim: {batch_size: 8, batch_size: 16}\n")
    with pytest.raises(ConfigError, match="'batch_size' is given twice"):
        load_config(PretrainConfig, str(flow), [])


def test_preset_merge_keys_and_same_key_in_two_sections_are_fine(tmp_path):
    preset = tmp_path / "ok.yaml"
    preset.write_text("base: &b {batch_size: 8}\noptim:\n  <<: *b\n  base_lr: 0.1\ndata:\n  batch_size_x: 1\n")
    assert read_preset(str(preset))["optim"] == {"batch_size": 8, "base_lr": 0.1}


@pytest.mark.parametrize("argv", [
    ["optim.base_lr", "=", "1e-3"],       # optim.base_lr = 1e-3
    ["optim.base_lr", "=1e-3"],           # optim.base_lr =1e-3
    ["optim.base_lr=", "1e-3"],           # optim.base_lr= 1e-3
    ["optim.base_lr =1e-3"],              # 'optim.base_lr =1e-3' (quoted)
    ["optim.base_lr = 1e-3"],
])
def test_override_with_spaces_around_the_equals_sign(argv):
    cfg = load_config(PretrainConfig, None, [*argv, "seed", "=", "3", "epochs=2"])
    assert cfg.optim.base_lr == 1e-3 and cfg.seed == 3 and cfg.epochs == 2


def test_override_that_is_no_key_value_says_what_to_write():
    with pytest.raises(ConfigError, match=r"'optim.base_lr' is not key=value: write it as one word, e.g. "):
        apply_overrides({}, ["optim.base_lr"])
    with pytest.raises(ConfigError, match=r"the key 'optim base_lr' holds a space"):
        apply_overrides({}, ["optim base_lr=1"])
    assert apply_overrides({}, ["data.source="]) == {"data": {"source": None}}  # an empty value stays empty
