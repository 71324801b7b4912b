"""End-to-end CLI runs with tiny budgets: every subcommand honours the run-directory contract."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def engine(*args, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "rlhf.engine", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, default=str))
    return path


def assert_run_contract(run: Path, checkpoint: bool = True) -> dict:
    assert json.loads((run / "config.json").read_text())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines and all({"step", "time", "total_steps"} <= set(x) for x in lines)
    assert (run / "log.txt").is_file()
    assert (run / "checkpoint").is_dir() == checkpoint
    assert not list(run.glob(".checkpoint.tmp-*"))
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed"
    return result


def test_build_demo_follows_the_contract_and_is_cached(tmp_path):
    cfg = write(tmp_path / "b.json", {"steps": 3, "train_images": 40, "eval_images": 2, "warmup_steps": 1})
    env = {"LENSLOOP_DATA_DIR": str(tmp_path / "data")}
    engine("build-demo", "--config", cfg, "--run-dir", tmp_path / "run", env=env)
    result = assert_run_contract(tmp_path / "run", checkpoint=False)
    assert not result["cached"] and Path(result["model_path"]).is_relative_to(tmp_path / "data" / "models")
    assert (Path(result["model_path"]) / "config.json").is_file()
    engine("build-demo", "--config", cfg, "--run-dir", tmp_path / "run2", env=env)
    assert json.loads((tmp_path / "run2" / "result.json").read_text())["cached"]


def test_generate_sft_train_reward_and_evaluate(tiny_model_path, demo_dataset, tmp_path):
    model = {"path": str(tiny_model_path), "device": "cpu"}
    prompts = demo_dataset["prompts"].parent / "prompts-20.jsonl"  # same folder: image paths stay valid
    prompts.write_text("".join(demo_dataset["prompts"].read_text().splitlines(keepends=True)[:20]))
    engine("generate", "--config", write(tmp_path / "g.json", {"model": model, "prompts_file": prompts,
                                                             "k": 3, "model_version": "v0"}),
           "--run-dir", tmp_path / "gen")
    result = assert_run_contract(tmp_path / "gen", checkpoint=False)
    samples = [json.loads(x) for x in Path(result["samples_file"]).read_text().splitlines()]
    assert len(samples) == 3 * 20 and set(samples[0]) == {"prompt_id", "text", "model_version", "logprob"}

    engine("sft", "--config", write(tmp_path / "s.json", {"model": model, "train_file": prompts,
                                                        "steps": 3, "batch_size": 4, "log_every": 1}),
           "--run-dir", tmp_path / "sft")
    assert_run_contract(tmp_path / "sft")
    assert (tmp_path / "sft" / "checkpoint" / "adapter_config.json").is_file()

    engine("train-reward", "--config", write(tmp_path / "r.json", {
        "model": model, "train_file": demo_dataset["preferences_train"], "eval_file": demo_dataset["preferences_eval"],
        "max_steps": 3, "batch_size": 4, "log_every": 1}), "--run-dir", tmp_path / "rm")
    rm = assert_run_contract(tmp_path / "rm")
    assert 0 <= rm["eval/accuracy"] <= 1

    engine("evaluate", "--config", write(tmp_path / "e.json", {
        "model": {**model, "adapter_path": str(tmp_path / "sft" / "checkpoint")}, "demo_images": 4,
        "reward_model_path": str(tmp_path / "rm" / "checkpoint"),
        "preference_file": demo_dataset["preferences_eval"]}), "--run-dir", tmp_path / "eval")
    ev = assert_run_contract(tmp_path / "eval", checkpoint=False)
    assert {"policy/bleu", "policy/rouge_l", "policy/cider", "policy/cider_d", "policy/caption/count",
            "reward_model/accuracy", "reward_model/ece"} <= set(ev)


def test_a_bad_config_fails_before_any_model_loads(tmp_path):
    proc = engine("train-reward", "--config", write(tmp_path / "bad.json", {"train_file": "x", "lr": -1}),
                  "--run-dir", tmp_path / "run", check=False)
    assert proc.returncode == 2 and "lr must be positive" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_failing_run_says_so_in_result_json(tmp_path):
    proc = engine("generate", "--config", write(tmp_path / "g.json", {"model": {"path": str(tmp_path / "none")},
                                                                      "prompts_file": str(tmp_path / "p.jsonl")}),
                  "--run-dir", tmp_path / "run", check=False)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert proc.returncode == 1 and result["status"] == "failed" and "does not exist" in result["error"]


def test_a_killed_run_leaves_no_complete_looking_checkpoint(tiny_model_path, demo_dataset, tmp_path):
    cfg = write(tmp_path / "r.json", {"model": {"path": str(tiny_model_path), "device": "cpu"},
                                      "train_file": demo_dataset["preferences"], "max_steps": 100000,
                                      "batch_size": 4, "log_every": 1})
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rlhf.engine", "train-reward", "--config", cfg, "--run-dir", run],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            metrics = run / "metrics.jsonl"
            if metrics.is_file() and '"loss"' in metrics.read_text():
                break
            time.sleep(0.5)
        else:
            pytest.fail("the run logged no training step in 300 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (run / "checkpoint").exists() and not (run / "result.json").exists()


def test_a_checkpoint_killed_while_being_written_stays_temporary(tmp_path):
    code = ("import os, signal; from rlhf.engine.rundir import RunDir\n"
            f"run = RunDir({str(tmp_path)!r}, {{}})\n"
            "with run.checkpoint() as tmp:\n"
            "    (tmp / 'weights.bin').write_bytes(b'half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False)
    assert not (tmp_path / "checkpoint").exists()
    assert list(tmp_path.glob(".checkpoint.tmp-*"))
