"""The engine's held-out rule (rlhf/engine/heldout.py): split=eval lines are never trained on, a figure is
named eval/… only when it was measured on held-out lines, and anything else is named otherwise and logged.
Plus the intervals every compared figure carries (rlhf/engine/stats.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lensloop.stats import bootstrap_mean, paired_difference, wilson
from rlhf.engine.heldout import relabel, split_lines


def _rows(n: int, eval_every: int = 0) -> list[dict]:
    return [{"prompt_id": i, "split": "eval" if eval_every and i % eval_every == 0 else "train"} for i in range(n)]


def test_split_eval_lines_of_a_training_file_are_never_trained_on():
    rows = _rows(10, eval_every=5)
    split = split_lines(rows, None, train_file="t.jsonl")
    assert [r["prompt_id"] for r in split.train] == [1, 2, 3, 4, 6, 7, 8, 9]
    assert [r["prompt_id"] for r in split.measure] == [0, 5]
    assert split.heldout and split.prefix == "eval/" and "split=eval lines of t.jsonl" in split.source


def test_an_eval_file_is_the_held_out_set_and_marked_lines_still_stay_out_of_training():
    split = split_lines(_rows(10, eval_every=5), [{"prompt_id": "e"}], train_file="t.jsonl", eval_file="e.jsonl")
    assert [r["prompt_id"] for r in split.measure] == ["e"]
    assert all(r["split"] == "train" for r in split.train) and split.prefix == "eval/"


def test_without_held_out_lines_nothing_is_measured_as_held_out():
    split = split_lines(_rows(4), None, train_file="t.jsonl")
    assert not split.heldout and split.measure == [] and split.prefix == "train/" and split.source == "none"
    assert relabel({"eval/reward_mean": 0.5, "objective/kl": 0.1}, split.prefix) == {
        "train/reward_mean": 0.5, "objective/kl": 0.1}
    assert relabel({"eval/reward_mean": 0.5}, "eval/") == {"eval/reward_mean": 0.5}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prompt_rows(n: int, split: str) -> list[dict]:
    return [{"prompt_id": f"{split}-{i}", "images": [], "prompt": "Describe the image.", "split": split}
            for i in range(n)]


def test_ppo_and_grpo_measure_on_the_marked_lines_or_say_they_measure_on_training_prompts(tmp_path, caplog):
    from rlhf.engine.rl_common import split_prompts
    from rlhf.engine.rl_config import GRPOConfig, PPOConfig

    mixed = _write(tmp_path / "mixed.jsonl", _prompt_rows(6, "train") + _prompt_rows(3, "eval"))
    for cls in (PPOConfig, GRPOConfig):
        split = split_prompts(cls(prompts_file=str(mixed), eval_prompts=2, verifiable_reward="demo_reward"))
        assert {r["split"] for r in split.train} == {"train"} and len(split.train) == 6
        assert [r["prompt_id"] for r in split.measure] == ["eval-0", "eval-1"] and split.prefix == "eval/"
    train_only = _write(tmp_path / "train.jsonl", _prompt_rows(6, "train"))
    with caplog.at_level(logging.WARNING):
        split = split_prompts(PPOConfig(prompts_file=str(train_only), eval_prompts=2, verifiable_reward="demo_reward"))
    assert split.prefix == "train/" and [r["prompt_id"] for r in split.measure] == ["train-0", "train-1"]
    assert "not held out" in caplog.text and "train/" in caplog.text
    with pytest.raises(ValueError, match="no training prompts"):
        split_prompts(PPOConfig(prompts_file=str(_write(tmp_path / "e.jsonl", _prompt_rows(2, "eval"))),
                                verifiable_reward="demo_reward"))


def test_the_bootstrap_interval_holds_the_mean_and_is_reproducible():
    values = [0.0, 1.0] * 50
    b = bootstrap_mean(values, seed=3)
    assert b["n"] == 100 and b["mean"] == 0.5 and b["low"] < 0.5 < b["high"]
    assert b["low"] > 0.35 and b["high"] < 0.65, "about ±0.1 for n = 100 and p = 0.5"
    assert bootstrap_mean(values, seed=3) == b
    assert bootstrap_mean([0.7])["low"] == bootstrap_mean([0.7])["high"] == 0.7


def test_a_paired_difference_is_narrower_than_the_two_intervals_apart():
    """Prompts differ in difficulty; the paired difference cancels it."""
    old = [i / 100 for i in range(100)]
    new = [v + 0.02 for v in old]
    d = paired_difference(new, old)
    assert d["mean"] == pytest.approx(0.02) and d["low"] == pytest.approx(0.02) == d["high"]
    assert bootstrap_mean(new)["low"] < bootstrap_mean(old)["high"], "unpaired, the two intervals overlap"
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1.0], [1.0, 2.0])


def test_wilsons_interval_matches_the_textbook_values():
    low, high = wilson(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    low, high = wilson(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775


# ---- the subcommands with the tiny model ----------------------------------------------------------------------


def test_the_reward_model_without_held_out_pairs_names_its_figures_train_split(tiny_model_path, demo_dataset,
                                                                                tmp_path, caplog):
    from rlhf.engine.config import load_config
    from rlhf.engine.train_reward import train_reward_model

    rows = [json.loads(x) for x in Path(demo_dataset["preferences_train"]).read_text().splitlines()][:120]
    train = _write(Path(demo_dataset["preferences_train"]).parent / "train-120.jsonl", rows)
    cfg = load_config("train-reward", {"model": {"path": str(tiny_model_path), "device": "cpu"},
                                       "train_file": str(train), "max_steps": 1, "batch_size": 4})
    with caplog.at_level(logging.WARNING):
        result = train_reward_model(cfg, str(tmp_path / "run"))
    assert not any(k.startswith("eval/") for k in result), result
    assert "train_split/accuracy" in result and result["heldout"] == "none"
    assert "not held out" in caplog.text


def test_evaluate_compares_a_policy_with_its_baseline_on_the_same_prompts(tiny_model_path, tmp_path):
    from rlhf.engine.cli import run_evaluate as evaluate_run  # no prompts_file: the CLI draws fresh demo scenes
    from rlhf.engine.config import load_config

    model = {"path": str(tiny_model_path), "device": "cpu"}
    cfg = load_config("evaluate", {"model": model, "baseline": model, "demo_images": 6, "max_new_tokens": 12,
                                   "verifiable_reward": "demo_reward", "bootstrap": 200})
    result = evaluate_run(cfg, str(tmp_path / "run"))
    assert result["prompts"] == 6 and len(result["prompts_sha"]) == 12
    assert result["policy/verifiable_n"] == 6
    assert {"policy/bleu", "policy/rouge_l", "policy/cider", "policy/cider_d", "baseline/cider_d"} <= set(result)
    assert result["policy/cider"] == result["baseline/cider"] >= 0.0  # same weights, same answers
    assert result["policy/verifiable_low"] <= result["policy/verifiable"] <= result["policy/verifiable_high"]
    # The same weights on the same prompts: the paired difference is exactly zero.
    assert result["diff/verifiable"] == result["diff/verifiable_low"] == result["diff/verifiable_high"] == 0.0
    answers = [json.loads(x) for x in (tmp_path / "run" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 6 and answers[0]["policy"] == answers[0]["baseline"]
    assert set(answers[0]["verifiable"]) == {"policy", "baseline"}
    # 4 answers per prompt sampled at T = 1 (the answers a round shows annotators), a mean per prompt; the same
    # seed gives both policies the same draws, so identical weights differ by exactly nothing here too.
    assert result["policy/verifiable_sampled_n"] == 6
    assert result["diff/verifiable_sampled"] == result["diff/verifiable_sampled_low"] == 0.0
    assert set(answers[0]["verifiable_sampled"]) == {"policy", "baseline"}
    greedy_only = load_config("evaluate", {"model": model, "demo_images": 2, "max_new_tokens": 8, "samples": 0,
                                           "verifiable_reward": "demo_reward", "bootstrap": 100})
    assert "policy/verifiable_sampled" not in evaluate_run(greedy_only, str(tmp_path / "greedy"))

    not_held = load_config("evaluate", {"model": model, "demo_images": 2, "max_new_tokens": 8, "heldout": False,
                                        "verifiable_reward": "demo_reward", "bootstrap": 100})
    result = evaluate_run(not_held, str(tmp_path / "train"))
    assert result["heldout"] == "none"
    assert {"train/policy/verifiable", "train/policy/cider", "train/policy/cider_d"} <= set(result)
    assert not any(k.startswith(("policy/", "eval/")) for k in result), result


def test_dpo_takes_its_margin_on_an_eval_file_and_names_a_training_margin_train(tiny_model_path, demo_dataset,
                                                                                tmp_path):
    from rlhf.engine.config import load_config
    from rlhf.engine.trl_policy import train_dpo

    rows = [json.loads(x) for x in Path(demo_dataset["preferences_train"]).read_text().splitlines()][:8]
    folder = Path(demo_dataset["preferences_train"]).parent
    train = _write(folder / "dpo-train-8.jsonl", rows)
    held = _write(folder / "dpo-eval-4.jsonl", [json.loads(x) for x in
                                                Path(demo_dataset["preferences_eval"]).read_text().splitlines()][:4])
    base = {"model": {"path": str(tiny_model_path), "device": "cpu"}, "train_file": str(train), "steps": 1,
            "batch_size": 4, "eval_pairs": 4}
    result = train_dpo(load_config("dpo", {**base, "eval_file": str(held)}), str(tmp_path / "held"))
    assert "eval/logprob_margin" in result and result["eval/pairs"] == 4 and result["heldout"].startswith("eval_file")
    result = train_dpo(load_config("dpo", base), str(tmp_path / "train"))
    assert "train/logprob_margin" in result and "train_before/logprob_margin" in result
    assert not any(k.startswith("eval") for k in result) and result["heldout"] == "none"
