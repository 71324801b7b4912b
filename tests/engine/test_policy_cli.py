"""`python -m rlhf.engine ppo|grpo|rloo|dpo` as the Django loop calls it: bad configs fail before any
model loads with a message that says what to change; tiny runs honour the run-directory contract; PPO runs
under `accelerate launch` with 2 CPU processes; generate attaches reward-model scores."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.engine.cli import main
from rlhf.engine.config import ConfigError, load_config
from rlhf.engine.rl_config import preflight

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path, data, name="c.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt_id": "p1", "images": ["a.png"], "prompt": "Describe the image."}) + "\n")
    return str(path)


def test_ppo_batch_sizes_that_do_not_divide_fail_with_the_fix(prompts):
    with pytest.raises(ConfigError, match="num_mini_batches"):
        load_config("ppo", {"prompts_file": prompts, "verifiable_reward": "demo_reward", "batch_size": 10,
                            "num_mini_batches": 4})
    cfg = load_config("ppo", {"prompts_file": prompts, "verifiable_reward": "demo_reward", "batch_size": 6,
                              "num_mini_batches": 1})
    with pytest.raises(ConfigError, match="multiple of 4"):
        preflight(cfg, n_processes=4)


def test_grpo_with_fewer_than_two_generations_is_refused():
    with pytest.raises(ConfigError, match="K >= 2"):
        load_config("grpo", {"prompts_file": "x.jsonl", "verifiable_reward": "demo_reward", "num_generations": 1})
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        load_config("rloo", {"prompts_file": "x.jsonl", "verifiable_reward": "demo_reward", "batch_size": 6})


def test_a_run_without_any_reward_or_with_an_unknown_one_is_refused():
    with pytest.raises(ConfigError, match="no reward"):
        load_config("ppo", {"prompts_file": "x.jsonl"})
    with pytest.raises(ConfigError, match="demo_reward"):
        load_config("grpo", {"prompts_file": "x.jsonl", "verifiable_reward": "nope"})


def test_a_reward_model_on_another_base_is_refused_before_loading(tiny_model_path, prompts, tmp_path, capsys):
    rm = tmp_path / "rm"
    (rm / "processor").mkdir(parents=True)
    (rm / "reward_model.json").write_text(json.dumps({"base_model": "/elsewhere", "adapter": "adapter"}))
    other = json.loads((tiny_model_path / "tokenizer.json").read_text())
    other["model"]["vocab"] = {**other["model"]["vocab"], "zebra": 99999}
    (rm / "processor" / "tokenizer.json").write_text(json.dumps(other))
    cfg = _write(tmp_path, {"model": {"path": str(tiny_model_path)}, "prompts_file": prompts,
                            "reward_model_path": str(rm), "steps": 1})
    assert main(["ppo", "--config", cfg, "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "tokenizer or image size differs" in err and "train the reward model on the policy's base" in err
    assert not (tmp_path / "run").exists()  # nothing ran


def test_a_composed_reward_whose_function_fails_its_dry_run_is_refused_before_loading(tiny_model_path, prompts,
                                                                                      tmp_path, capsys, monkeypatch):
    (tmp_path / "myrewards.py").write_text("def score(prompts, completions, **kwargs):\n    return [1.0, 2.0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _write(tmp_path, {"model": {"path": str(tiny_model_path)}, "prompts_file": prompts, "steps": 1,
                            "reward": [{"reward": "length", "params": {"max": 5}}, {"reward": "myrewards:score"}]})
    assert main(["grpo", "--config", cfg, "--run-dir", str(tmp_path / "run")]) == 2
    assert "reward[1] (myrewards:score) returned 2 value(s) for 1 completion(s)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # A ground-truth reward on prompts without ground truth fails the same way, before any model loads.
    cfg = _write(tmp_path, {"model": {"path": str(tiny_model_path)}, "prompts_file": prompts, "steps": 1,
                            "reward": [{"reward": "demo_reward"}]}, "c2.json")
    assert main(["grpo", "--config", cfg, "--run-dir", str(tmp_path / "run")]) == 2
    assert "reward[0] (demo_reward) raised TypeError on a one-sample dry run" in capsys.readouterr().err


def test_ppo_cli_writes_the_contract_and_a_later_round_continues_the_adapter(tiny_model_path, demo_dataset,
                                                                               tmp_path):
    from rlhf.engine.config import ModelConfig
    from rlhf.engine.loading import load_model

    base = {"model": {"path": str(tiny_model_path), "lora_r": 8, "qlora": False, "device": "cpu"},
            "prompts_file": str(demo_dataset["prompts"]), "reward_model_path": "", "verifiable_reward": "demo_reward",
            "verifiable_weight": 1.0, "kl_coef": 0.05, "steps": 2, "seed": 3, "batch_size": 4, "eval_prompts": 4,
            "max_new_tokens": 10}
    assert main(["ppo", "--config", _write(tmp_path, base), "--run-dir", str(tmp_path / "r1")]) == 0
    ckpt = tmp_path / "r1" / "checkpoint"
    assert (ckpt / "adapter_config.json").is_file() and (ckpt / "value_head.safetensors").is_file()
    result = json.loads((tmp_path / "r1" / "result.json").read_text())
    assert result["status"] == "completed" and "eval/reward_mean" in result and "objective/kl" in result
    rows = [json.loads(line) for line in (tmp_path / "r1" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == rows[-1]["total_steps"] == 2
    assert all("objective/scores" in r for r in rows if r["step"] > 0 and "policy/clipfrac" in r)
    model, _ = load_model(ModelConfig(path=str(tiny_model_path), adapter_path=str(ckpt), device="cpu"))
    assert hasattr(model, "peft_config")
    # The next round continues the adapter, on a composed reward: each term's mean is logged per iteration.
    second = {**base, "model": {**base["model"], "adapter_path": str(ckpt)}, "steps": 1, "verifiable_reward": "",
              "reward": [{"reward": "demo_reward"}, {"reward": "banned_words", "weight": 0.5,
                                                     "params": {"words": ["small"]}}]}
    assert main(["ppo", "--config", _write(tmp_path, second, "c2.json"), "--run-dir", str(tmp_path / "r2")]) == 0
    assert (tmp_path / "r2" / "checkpoint" / "adapter_model.safetensors").is_file()
    rows = [json.loads(line) for line in (tmp_path / "r2" / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in rows if "policy/clipfrac" in r)
    assert 0 <= logged["rewards/demo_reward/mean"] <= 1 and logged["rewards/banned_words/mean"] <= 0
    assert "rewards/banned_words/mean" in json.loads((tmp_path / "r2" / "result.json").read_text())


@pytest.mark.slow
def test_grpo_and_dpo_cli_runs_with_tiny_budgets(tiny_model_path, demo_dataset, tmp_path):
    model = {"path": str(tiny_model_path), "lora_r": 8, "qlora": False, "device": "cpu"}
    # GRPO on a composed reward: TRL gets each term as a reward function with its weight and logs its mean.
    grpo = {"model": model, "prompts_file": str(demo_dataset["prompts"]), "reward_model_path": "",
            "reward": [{"reward": "demo_reward"}, {"reward": "length", "weight": 0.2, "params": {"max": 6}}],
            "steps": 2, "seed": 1, "batch_size": 8, "eval_prompts": 4, "max_new_tokens": 10}
    dpo = {"model": model, "train_file": str(demo_dataset["preferences"]), "beta": 0.1, "steps": 2, "seed": 1,
           "batch_size": 4, "eval_pairs": 8}
    for kind, cfg in (("grpo", grpo), ("dpo", dpo)):
        run = tmp_path / kind
        assert main([kind, "--config", _write(tmp_path, cfg, f"{kind}.json"), "--run-dir", str(run)]) == 0
        assert (run / "checkpoint" / "adapter_config.json").is_file()
        assert json.loads((run / "result.json").read_text())["status"] == "completed"
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert rows and all("step" in r and r["total_steps"] == 2 for r in rows)
        if kind == "grpo":
            logged = next(r for r in rows if "rewards/length/mean" in r)
            assert 0 <= logged["rewards/demo_reward/mean"] <= 1 and 0 <= logged["rewards/length/mean"] <= 1


def test_generate_attaches_reward_model_scores(tiny_model_path, demo_dataset, tmp_path):
    from rlhf.engine.config import ModelConfig
    from rlhf.engine.reward_model import init_reward_model, save_reward_model

    model_cfg = ModelConfig(path=str(tiny_model_path), device="cpu")
    rm, processor = init_reward_model(model_cfg, seed=0)
    save_reward_model(rm, processor, model_cfg, tmp_path / "rm")
    lines = Path(demo_dataset["prompts"]).read_text().splitlines()[:3]
    (Path(demo_dataset["prompts"]).parent / "three.jsonl").write_text("\n".join(lines) + "\n")
    cfg = {"model": {"path": str(tiny_model_path), "device": "cpu"}, "k": 2, "max_new_tokens": 8,
           "prompts_file": str(Path(demo_dataset["prompts"]).parent / "three.jsonl"),
           "reward_model_path": str(tmp_path / "rm")}
    assert main(["generate", "--config", _write(tmp_path, cfg), "--run-dir", str(tmp_path / "gen")]) == 0
    samples = [json.loads(line) for line in (tmp_path / "gen" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(isinstance(s["reward"], float) for s in samples)


@pytest.mark.slow
def test_ppo_runs_under_accelerate_launch_with_two_processes(tiny_model_path, demo_dataset, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("accelerate CLI not installed")
    cfg = {"model": {"path": str(tiny_model_path), "device": "cpu"}, "prompts_file": str(demo_dataset["prompts"]),
           "verifiable_reward": "demo_reward", "steps": 2, "batch_size": 8, "num_mini_batches": 2,
           "gradient_accumulation_steps": 2, "eval_prompts": 4, "max_new_tokens": 10,
           # an adaptive β: every process must update it with the same (all-reduced) KL, or the run stops
           "target_kl": 0.5}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rlhf.engine", "ppo",
                           "--config", _write(tmp_path, cfg), "--run-dir", str(tmp_path / "run")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["processes"] == 2 and result["steps"] == 2
    assert (tmp_path / "run" / "checkpoint" / "value_head.safetensors").is_file()
