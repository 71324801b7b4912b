"""Composed rewards (rlhf/engine/reward_terms.py): the spec's checks, each built-in on examples, user functions by
dotted path with their one-sample dry run, the sum with per-term means, and the engine configs and CLI that carry
them. No model loads here (the PPO and GRPO runs with a composed reward are in test_ppo.py / test_trl_policy.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rlhf.engine.config import load_config
from rlhf.engine.config_base import ConfigError
from rlhf.engine.reward_terms import BUILTINS, Term, dry_run, formula, load_term, parse_terms
from rlhf.engine.rl_common import ComposedReward

GT = {"count": 1, "objects": [{"size": "small", "color": "red", "shape": "circle", "box": [0, 0, 10, 10]}],
      "box": [0, 0, 10, 10]}


def one(name: str, completion: str, **params) -> float:
    fn = BUILTINS[name](**params)
    return fn(["q"], [completion], ground_truth=[GT], reference=None)[0]


def test_banned_words_counts_whole_words_and_phrases_case_aware():
    assert one("banned_words", "Very very nice. A very-good thing", words=["very"]) == -3.0
    assert one("banned_words", "everything veryx", words=["very"]) == 0.0  # no partial words
    assert one("banned_words", "a Lovely\n  day", words=["lovely day"], penalty=0.5) == -0.5  # phrase over whitespace
    assert one("banned_words", "Cat cat", words=["cat"], case_sensitive=True) == -1.0
    # Conversational completions (TRL) are read through their text.
    fn = BUILTINS["banned_words"](words=["red"])
    assert fn(["q"], [[{"role": "assistant", "content": "a red circle"}]]) == [-1.0]


def test_length_format_json_schema_exact_match_accuracy_iou():
    assert one("length", "one two three", max=3) == 1.0
    assert one("length", "w " * 6, max=4) == pytest.approx(0.5)  # 2 over a bound of 4
    assert one("length", "w " * 9, max=4) == 0.0
    assert one("length", "w", min=4) == pytest.approx(0.25)
    assert one("length", "abcd", unit="characters", max=2) == 0.0
    assert one("format", "A red circle.", pattern=r"[A-Z][a-z ]+\.") == 1.0
    assert one("format", "a red circle", pattern=r"[A-Z][a-z ]+\.") == 0.0
    assert one("format", "the answer is 42", pattern=r"\d+", full=False) == 1.0
    schema = {"type": "object", "required": ["count"], "properties": {"count": {"type": "integer"}}}
    assert one("json_schema", '{"count": 2}', schema=schema) == 1.0
    assert one("json_schema", '```json\n{"count": 2}\n```', schema=schema) == 1.0
    assert one("json_schema", '{"count": "two"}', schema=schema) == 0.0
    assert one("json_schema", "not json", schema=schema) == 0.0
    em = BUILTINS["exact_match"]()
    assert em(["q", "q"], ["Two!", "three"], reference=["two", ["four", "three"]]) == [1.0, 1.0]
    assert em(["q"], ["yes"], ground_truth=[{"answers": ["no"]}]) == [0.0]
    acc = BUILTINS["accuracy"](contains=True)
    assert acc(["q", "q"], ["it is a red circle", "square"], ground_truth=[{"label": "circle"}, {"label": "circle"}]) \
        == [1.0, 0.0]
    assert BUILTINS["accuracy"]()(["q"], ["it is a circle"], ground_truth=[{"label": "circle"}]) == [0.0]
    assert one("iou", "[0, 0, 10, 10]") == 1.0
    assert one("iou", "no box here") == 0.0  # an answer that does not parse scores 0, no exception


@pytest.mark.parametrize("spec, message", [
    ("not json", "reward: not valid JSON"),
    ({"reward": "length"}, "expected a list of terms"),
    ([{"reward": "length", "weight": "abc"}], "reward[0].weight: 'abc' is not a number"),
    ([{"reward": "length", "weight": True}], "reward[0].weight: True is not a number"),
    ([{"reward": "nope"}], "reward[0].reward: 'nope' is neither a known reward"),
    ([{"weight": 1}], "reward[0].reward: give a reward name"),
    ([{"reward": "length", "wieght": 1}], "reward[0]: unknown key(s) ['wieght']"),
    ([{"reward": "banned_words"}], "reward[0].params: banned_words needs ['words']"),
    ([{"reward": "banned_words", "params": {"words": []}}], "reward[0].params: words: expected a list of non-empty"),
    ([{"reward": "length", "params": {"maximum": 3}}], "length has no parameter(s) ['maximum']"),
    ([{"reward": "length", "params": {"min": 5, "max": 3}}], "max=3 is below min=5"),
    ([{"reward": "format", "params": {"pattern": "("}}], "reward[0].params: pattern: '(' is not a regular expression"),
    ([{"reward": "json_schema", "params": {"schema": {"type": "nope"}}}], "not a valid JSON Schema"),
    ([{"reward": "demo_reward", "params": {"x": 1}}], "reward[0].params: demo_reward takes no parameters"),
    ([{"reward": "reward_model", "params": {"x": 1}}], "the reward model takes no parameters"),
])
def test_bad_specs_name_the_term_and_field(spec, message):
    with pytest.raises(ConfigError) as e:
        parse_terms(spec)
    assert message in str(e.value)


def test_labels_formula_and_json_round_trip():
    terms = parse_terms([{"reward": "reward_model"}, {"reward": "banned_words", "weight": -0.5, "params": {"words": ["a"]}},
                         {"reward": "banned_words", "params": {"words": ["b"]}}])
    assert [t.label for t in terms] == ["reward_model", "banned_words", "banned_words#2"]
    assert formula(terms) == 'reward_model − 0.5 × banned_words(words=["a"]) + banned_words(words=["b"])'
    assert parse_terms([t.to_json() for t in terms]) == terms


@pytest.fixture
def user_rewards(tmp_path, monkeypatch):
    """A package of user reward functions on sys.path, as a team would install its own."""
    pkg = tmp_path / "teamrewards"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rules.py").write_text(textwrap.dedent("""
        def short(prompts, completions, limit=3, **kwargs):
            return [1.0 if len(c.split()) <= limit else 0.0 for c in completions]

        def wrong_length(prompts, completions, **kwargs):
            return [1.0, 2.0]

        def raises(prompts, completions, **kwargs):
            raise KeyError("ground_truth")

        def strings(prompts, completions, **kwargs):
            return ["1"] * len(completions)

        def nan(prompts, completions, **kwargs):
            return [float("nan")] * len(completions)

        NOT_CALLABLE = 3
    """))
    (pkg / "broken.py").write_text("import not_a_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


SAMPLE = {"prompt": "Describe the image.", "completion": "one shape: a small red circle.", "images": [],
          "ground_truth": GT}


def test_user_function_by_dotted_path_with_params(user_rewards):
    terms = parse_terms([{"reward": "teamrewards.rules:short", "weight": 2, "params": {"limit": 5}},
                         {"reward": "demo_reward"}])
    assert terms[0].is_user_function and not terms[1].is_user_function
    assert dry_run(terms, SAMPLE) == {"teamrewards.rules:short": 0.0, "demo_reward": 1.0}
    assert load_term(Term("teamrewards.rules.short"))(["q"], ["a b"]) == [1.0]  # module.function works too


@pytest.mark.parametrize("path, message", [
    ("teamrewards.nothere:fn", "'teamrewards.nothere:fn' does not import: ModuleNotFoundError"),
    ("teamrewards.broken:fn", "does not import: ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
    ("teamrewards.rules:missing", "module 'teamrewards.rules' has no 'missing'"),
    ("teamrewards.rules:NOT_CALLABLE", "is a int, not a function"),
    ("teamrewards.rules:wrong_length", "returned 2 value(s) for 1 completion(s)"),
    ("teamrewards.rules:raises", "raised KeyError on a one-sample dry run: 'ground_truth'"),
    ("teamrewards.rules:strings", "returned '1' at index 0: return one float per completion"),
    ("teamrewards.rules:nan", "returned nan at index 0: rewards must be finite"),
])
def test_user_functions_that_cannot_work_fail_the_dry_run(user_rewards, path, message):
    terms = parse_terms([{"reward": "reward_model"}, {"reward": path}])
    with pytest.raises(ConfigError) as e:
        dry_run(terms, SAMPLE)
    assert "reward[1]" in str(e.value) and message in str(e.value)


def test_composed_reward_sums_weighted_terms_and_records_each_mean():
    def scorer(prompts, completions, images=None, **kwargs):
        return [0.5] * len(completions)

    terms = parse_terms([{"reward": "reward_model"}, {"reward": "demo_reward", "weight": 2.0},
                         {"reward": "banned_words", "weight": 0.5, "params": {"words": ["small"]}}])
    reward = ComposedReward(terms, scorer)
    out = reward(["Describe the image."] * 2, ["one shape: a small red circle.", "two shapes."], images=[[], []],
                 ground_truth=[json.dumps(GT), GT])  # JSON strings (TRL datasets) or dicts
    assert out == pytest.approx([0.5 + 2.0 * 1.0 - 0.5, 0.5 + 0.0])
    assert reward.last == pytest.approx({"rewards/reward_model/mean": 0.5, "rewards/demo_reward/mean": 0.5,
                                         "rewards/banned_words/mean": -0.5})
    funcs, weights = reward.trl_functions()
    assert [f.__name__ for f in funcs] == ["reward_model", "demo_reward", "banned_words"] and weights == [1.0, 2.0, 0.5]
    assert funcs[1](["Describe the image."], ["two shapes."], ground_truth=[json.dumps(GT)]) == [0.0]
    with pytest.raises(ValueError, match="reward model, but none is loaded"):
        ComposedReward(terms)


BASE = {"model": {"path": "demo"}, "prompts_file": "p.jsonl"}


def test_online_configs_take_a_composed_reward_or_the_two_fields():
    cfg = load_config("grpo", {**BASE, "reward": [{"reward": "demo_reward"}, {"reward": "length", "params": {"max": 9}}]})
    assert [t.reward for t in cfg.reward_terms()] == ["demo_reward", "length"]
    legacy = load_config("ppo", {**BASE, "reward_model_path": "rm", "verifiable_reward": "demo_reward",
                                 "verifiable_weight": 0.3})
    assert [(t.reward, t.weight) for t in legacy.reward_terms()] == [("reward_model", 1.0), ("demo_reward", 0.3)]
    for data, message in [
        ({"reward": [{"reward": "reward_model"}]}, "a reward term 'reward_model' needs reward_model_path"),
        ({"reward": [{"reward": "demo_reward"}], "reward_model_path": "rm"}, "no term of `reward` is 'reward_model'"),
        ({"reward": [{"reward": "length"}], "verifiable_reward": "demo_reward"}, "set either `reward`"),
        ({"reward": [{"reward": "length", "weight": "x"}]}, "reward[0].weight: 'x' is not a number"),
    ]:
        with pytest.raises(ConfigError, match=None) as e:
            load_config("ppo", {**BASE, **data})
        assert message in str(e.value)


def test_check_reward_cli_runs_the_dry_run_in_an_engine_process(user_rewards):
    env_path = {"PYTHONPATH": f"{user_rewards}:{sys.path[0]}"}

    def check(terms):
        return subprocess.run([sys.executable, "-m", "rlhf.engine", "check-reward"], capture_output=True, text=True,
                              input=json.dumps({"reward": terms, "sample": SAMPLE}), env={**os.environ, **env_path},
                              timeout=120)

    ok = check([{"reward": "teamrewards.rules:short"}, {"reward": "reward_model"}])
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"teamrewards.rules:short": 0.0}
    bad = check([{"reward": "teamrewards.rules:wrong_length"}])
    assert bad.returncode == 2 and "config error: reward[0] (teamrewards.rules:wrong_length) returned 2 value(s)" in bad.stderr
