"""Scale-out: reward-model training runs unchanged under `accelerate launch` with 2 CPU processes (gloo)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.learning import learning_seed, record

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_processes_match_one_process_within_noise(tiny_model_path, rm_dataset, demo_dataset, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("accelerate CLI not installed")
    cfg = {"model": {"path": str(tiny_model_path), "lora": False}, "train_file": str(rm_dataset["preferences_train"]),
           "eval_file": str(demo_dataset["preferences_eval"]), "max_steps": 40, "batch_size": 16, "log_every": 10,
           "seed": learning_seed(0)}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    # --multi_gpu selects accelerate's torchrun launcher; on a machine without CUDA the processes run on
    # CPU and talk over gloo (`--cpu` would start a single process).
    for n, launch in [(1, [sys.executable, "-m", "rlhf.engine"]),
                      (2, [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rlhf.engine"])]:
        run = tmp_path / f"run{n}"
        proc = subprocess.run([*launch, "train-reward", "--config", tmp_path / "c.json", "--run-dir", run],
                              cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[n] = json.loads((run / "result.json").read_text())
    assert results[2]["processes"] == 2 and results[1]["processes"] == 1
    assert results[2]["steps"] == results[1]["steps"] == 40
    record("test_two_processes_match_one_process_within_noise", accuracy_1=results[1]["eval/accuracy"],
           accuracy_2=results[2]["eval/accuracy"],
           difference=abs(results[2]["eval/accuracy"] - results[1]["eval/accuracy"]))
    # Spread over seeds 0–9 (bench/learning_spread.py): 2 processes gave exactly the 1-process accuracy every time
    # (0.687 ± 0.018 across seeds), so a gap of 0.02 already means the processes no longer train one model.
    assert abs(results[2]["eval/accuracy"] - results[1]["eval/accuracy"]) <= 0.02, results
    assert (tmp_path / "run2" / "checkpoint" / "reward_model.json").is_file()
