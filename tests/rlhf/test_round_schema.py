"""One round schema (rlhf.engine.round.RoundConfig): the launch form, the REST serializer, the defaults
and the engine configs all come from it, with the same bounds."""

import pytest
from rest_framework import serializers

from rlhf.api import RoundSerializer
from rlhf.engine import round as round_schema
from rlhf.engine.config import load_config
from rlhf.forms import RoundForm
from rlhf.services import ROUND_ADVANCED, ROUND_DEFAULTS


def test_the_launch_form_and_the_defaults_cover_the_schema_once():
    names = [f.name for f in round_schema.fields()]
    assert set(ROUND_DEFAULTS) | set(ROUND_ADVANCED) == set(names)
    assert not set(ROUND_DEFAULTS) & set(ROUND_ADVANCED)
    assert set(RoundForm.base_fields) == set(ROUND_DEFAULTS)
    assert set(RoundSerializer().fields) == set(names)


@pytest.mark.parametrize("f", round_schema.fields(), ids=lambda f: f.name)
def test_form_and_serializer_take_their_bounds_and_help_from_the_schema(f):
    api = RoundSerializer().fields[f.name]
    assert api.help_text == f.metadata["help"] and not api.required
    if "min" in f.metadata:
        assert api.min_value == f.metadata["min"] and api.max_value == f.metadata.get("max")
    if "choices" in f.metadata:
        assert isinstance(api, serializers.ChoiceField) and list(api.choices) == list(f.metadata["choices"])
    if f.name in RoundForm.base_fields:
        form = RoundForm.base_fields[f.name]
        assert form.label == f.metadata["label"]
        if "min" in f.metadata:
            assert form.min_value == f.metadata["min"] and form.max_value == f.metadata.get("max")


@pytest.mark.parametrize("algorithm", list(round_schema.ALGORITHMS))
def test_the_defaults_make_engine_configs_every_step_accepts(algorithm):
    cfg = round_schema.round_config({"algorithm": algorithm})
    cfg.check_engine_configs("demo")
    policy = load_config(algorithm, cfg.policy_config(base_model="demo", seed=1, prompts_file="p", records="r",
                                                      top_ranked="t", reward_model_path="rm"))
    assert policy.steps == cfg.policy_steps and policy.model.lora_r == cfg.lora_r


def test_a_round_value_is_checked_once_whatever_the_door():
    """The form, the API and the services refuse the same out-of-bounds value."""
    bad = {"lora_r": 1000}
    form = RoundForm(data={**ROUND_DEFAULTS, **bad}, cuda=False)
    assert not form.is_valid() and "lora_r" in form.errors
    api = RoundSerializer(data=bad)
    assert not api.is_valid() and "lora_r" in api.errors
    with pytest.raises(round_schema.ConfigError, match="lora_r=1000: must be at most 256"):
        round_schema.round_config(bad)



def test_the_peft_method_reaches_the_policy_and_the_reward_model_that_has_an_adapter():
    cfg = round_schema.round_config({"peft_method": "dora"})
    policy = load_config("ppo", cfg.policy_config(base_model="demo", seed=1, prompts_file="p", reward_model_path="rm"))
    reward = load_config("train-reward", cfg.reward_config(base_model="demo", train_file="t", seed=1))
    assert policy.model.peft_method == reward.model.peft_method == "dora"
    assert load_config("generate", cfg.generate_config(model=cfg.model("demo"), prompts_file="p", model_version="v",
                                                       k=2, seed=0)).model.peft_method == "dora"
    in_full = round_schema.round_config({"peft_method": "dora", "reward_lora": False})
    assert load_config("train-reward", in_full.reward_config(base_model="demo", train_file="t", seed=1)).model.peft_method == "lora"
    in_full.check_engine_configs("demo")
