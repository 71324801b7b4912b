"""Held-out data through a round: what each step hands the engine. The engine is replaced by a recorder
that writes what the real one would (checkpoints, samples, evaluation figures), so every step's config
can be read back in a second; tests/loop/test_gate.py runs the real engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotation.models import PreferencePair, Prompt
from rlhf import steps
from rlhf.models import ModelVersion, TrainingRun
from rlhf.services import loop_settings_set, start_round
from rlhf.simulate import simulate
from tests.loop.conftest import FAST_ROUND

pytestmark = pytest.mark.django_db

EVEN = {"prompts": 6, "prompts_sha": "abc123abc123", "heldout": "prompts_file eval.jsonl",
        "policy/verifiable": 0.5, "policy/verifiable_low": 0.4, "policy/verifiable_high": 0.6, "policy/verifiable_n": 6,
        "baseline/verifiable": 0.5, "baseline/verifiable_low": 0.4, "baseline/verifiable_high": 0.6,
        "baseline/verifiable_n": 6,
        "diff/verifiable": 0.0, "diff/verifiable_low": -0.05, "diff/verifiable_high": 0.05, "diff/verifiable_n": 6,
        "policy/reward_model_score": 0.1, "policy/reward_model_score_low": 0.0, "policy/reward_model_score_high": 0.2,
        "policy/reward_model_score_n": 6,
        "diff/reward_model_score": 0.0, "diff/reward_model_score_low": -0.1, "diff/reward_model_score_high": 0.1,
        "diff/reward_model_score_n": 6}


class FakeEngine:
    """Stands in for ``rlhf.runner.run_engine``: records (command, config) and leaves behind what the engine
    would — a checkpoint, samples.jsonl with K distinct texts per prompt, or the evaluation ``figures``."""

    def __init__(self, figures: dict | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.figures = dict(EVEN if figures is None else figures)

    def __call__(self, run, command, config, *, run_dir=None, env=None):
        run_dir = Path(run_dir or run.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.calls.append((command, config))
        if command in ("train-reward", "ppo", "grpo", "dpo", "sft"):
            (run_dir / "checkpoint").mkdir(exist_ok=True)
            (run_dir / "checkpoint" / "adapter_config.json").write_text("{}")
            return {"checkpoint": str(run_dir / "checkpoint")}
        if command == "generate":
            prompts = [json.loads(x) for x in Path(config["prompts_file"]).read_text().splitlines()]
            rows = [{"prompt_id": p["prompt_id"], "text": f"{config['model_version']} answer {i} to {p['prompt_id']}",
                     "logprob": -1.0} for p in prompts for i in range(config["k"])]
            (run_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            return {"prompts": len(prompts), "samples": len(rows)}
        if command == "evaluate":
            return dict(self.figures)
        raise AssertionError(f"unexpected engine command {command}")

    def config(self, command: str) -> dict:
        found = [c for name, c in self.calls if name == command]
        assert found, f"no {command} call; calls: {[n for n, _ in self.calls]}"
        return found[-1]


def run_round(project, engine: FakeEngine, monkeypatch, **params) -> TrainingRun:
    """Start a round and run its steps in order, in this process, with the fake engine."""
    monkeypatch.setattr(steps, "run_engine", engine)
    round_run = start_round(project=project, params={**FAST_ROUND, **params}, enqueue=False)
    for step in round_run.steps.order_by("position"):
        TrainingRun.objects.filter(pk=step.pk).update(state="running")
        step.refresh_from_db()
        steps.STEPS[step.kind](step)
        TrainingRun.objects.filter(pk=step.pk).update(state="succeeded")
    TrainingRun.objects.filter(pk=round_run.pk).update(state="succeeded")
    round_run.refresh_from_db()
    return round_run


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


@pytest.fixture
def ranked_heldout(loop_project):
    """The loop project with its held-out prompts' imported tasks ranked too: pairs of both splits."""
    simulate(loop_project, annotators=2, noise=0.0, seed=4)
    assert PreferencePair.objects.filter(project=loop_project, prompt__split="eval").exists()
    return loop_project


@pytest.mark.parametrize("algorithm", ["ppo", "grpo", "dpo", "sft"])
def test_a_rounds_files_carry_the_split_and_every_step_gets_the_held_out_files(ranked_heldout, monkeypatch,
                                                                                algorithm):
    project = ranked_heldout
    engine = FakeEngine()
    round_run = run_round(project, engine, monkeypatch, algorithm=algorithm)
    snapshot = round_run.steps.get(kind="export").snapshot

    # The export: training records of training prompts only; the held-out ones apart; split on every line.
    records, heldout = _lines(snapshot["records"]), _lines(snapshot["heldout_records"])
    assert records and {r["split"] for r in records} == {"train"}
    assert heldout and {r["split"] for r in heldout} == {"eval"}
    assert len(heldout) == snapshot["heldout_pairs"] == PreferencePair.objects.filter(
        project=project, prompt__split="eval").count()
    assert {r["ranking_id"] for r in records}.isdisjoint({r["ranking_id"] for r in heldout})
    train_prompts, eval_prompts = _lines(snapshot["train_prompts"]), _lines(snapshot["eval_prompts"])
    assert {p["split"] for p in train_prompts} == {"train"} and {p["split"] for p in eval_prompts} == {"eval"}
    assert {p["prompt_id"] for p in eval_prompts} == set(
        Prompt.objects.filter(project=project, split="eval").values_list("pk", flat=True))

    # Every engine step: trains on training files, measures on the held-out ones.
    reward = engine.config("train-reward")
    assert reward["train_file"] == snapshot["records"] and reward["eval_file"] == snapshot["heldout_records"]
    policy = engine.config(algorithm)
    if algorithm in ("ppo", "grpo"):
        assert policy["prompts_file"] == snapshot["train_prompts"] and policy["eval_file"] == snapshot["eval_prompts"]
    elif algorithm == "dpo":
        assert policy["train_file"] == snapshot["records"] and policy["eval_file"] == snapshot["heldout_records"]
    else:
        sft_lines = _lines(policy["train_file"])
        assert sft_lines and {p["split"] for p in sft_lines} == {"train"}
    evaluate = engine.config("evaluate")
    assert evaluate["prompts_file"] == snapshot["eval_prompts"] and evaluate["heldout"] is True
    assert evaluate["preference_file"] == snapshot["heldout_records"]
    assert evaluate["baseline"]["path"] == project.base_model and "adapter_path" in evaluate["model"]
    assert evaluate["answer_reward_model_path"] == ModelVersion.objects.get(project=project, kind="reward").path
    # The new policy's samples go to the queue for training prompts and, in the project's held-out fraction,
    # for held-out ones: their rankings are the next reward model's held-out pairs, exported apart.
    generated = [p for c, cfg in engine.calls if c == "generate" for p in _lines(cfg["prompts_file"])]
    splits = [p["split"] for p in generated]
    assert len(generated) == FAST_ROUND["generate_prompts"]
    assert splits.count("eval") == round(FAST_ROUND["generate_prompts"] * project.heldout_fraction) == 1


def test_the_round_evaluates_on_the_same_first_held_out_prompts_every_time(ranked_heldout, monkeypatch):
    loop_settings_set(project=ranked_heldout, eval_prompts=4)
    first = run_round(ranked_heldout, FakeEngine(), monkeypatch, algorithm="sft")
    second = run_round(ranked_heldout, FakeEngine(), monkeypatch, algorithm="sft")
    sets = [[p["prompt_id"] for p in _lines(r.steps.get(kind="export").snapshot["eval_prompts"])] for r in (first, second)]
    expected = list(Prompt.objects.filter(project=ranked_heldout, split="eval").order_by("id").values_list("pk", flat=True)[:4])
    assert sets == [expected, expected]


def test_without_held_out_prompts_the_round_measures_on_training_prompts_and_says_so(loop_project, monkeypatch):
    Prompt.objects.filter(project=loop_project).update(split="train")
    loop_settings_set(project=loop_project, promotion_gate="auto", gate_reward="demo_reward")
    engine = FakeEngine({**EVEN, "heldout": "none"})
    round_run = run_round(loop_project, engine, monkeypatch, algorithm="sft")
    evaluate = engine.config("evaluate")
    assert evaluate["heldout"] is False and {p["split"] for p in _lines(evaluate["prompts_file"])} == {"train"}
    assert engine.config("train-reward")["eval_file"] == ""  # the engine names its figures train_split/…
    policy = ModelVersion.objects.get(run__round=round_run, kind="policy")
    assert policy.gate_state == "failed" and not policy.active
    assert "no held-out prompts" in policy.gate_reason
