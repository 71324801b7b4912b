"""Run configs: defaults, JSON round trip, and errors that name the field to change."""

import json

import pytest

from rlhf.engine.config import CONFIGS, ConfigError, describe, load_config, to_dict


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_every_field_has_help(kind):
    text = describe(kind)
    assert all(line.split("#", 1)[-1].strip() for line in text.splitlines())


def test_load_config_from_a_json_file_round_trips(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train_file": "p.jsonl", "model": {"lora_r": 4, "path": "m"}}))
    cfg = load_config("train-reward", path)
    assert cfg.model.lora_r == 4 and cfg.train_file == "p.jsonl"
    assert load_config("train-reward", to_dict(cfg)) == cfg


@pytest.mark.parametrize(("kind", "data", "fragment"), [
    ("sft", {"train_file": "x", "stepz": 3}, "unknown field"),
    ("generate", {"prompts_file": "x", "k": 0}, "k must be"),
    ("generate", {"prompts_file": "x", "temperature": "hot"}, "expected a number"),
    ("train-reward", {"train_file": "x", "model": {"qlora": True, "lora": False}}, "qlora=true needs"),
    ("train-reward", {}, "train_file is empty"),
    ("build-demo", {"image_size": 60}, "multiple of patch_size"),
    ("build-demo", {"label_noise": [["purple", "pink", 0.5]]}, "distinct colours, shapes or sizes"),
    ("build-demo", {"label_noise": [["purple", "blue", 1.5]]}, r"probability must lie in \[0, 1\]"),
    ("build-demo", {"label_noise": [["purple", "blue"]]}, "give \\[true word"),
    ("build-demo", {"label_noise": [["purple", "blue", 0.5], ["purple", "red", 0.5]]}, "true word twice"),
    ("evaluate", {"reward_model_path": "r"}, "go together"),
])
def test_bad_configs_say_what_to_change(kind, data, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(kind, data)


def test_a_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("sft", tmp_path / "nope.json")
