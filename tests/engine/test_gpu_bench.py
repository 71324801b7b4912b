"""bench/gpu.py's dry run: the GPU benchmark's whole path (build both families from configs, then the engine's
generate, train-reward, PPO and QLoRA commands, timing from their metrics) at tiny sizes on CPU. Asserts
that it finishes and reports positive figures, never how fast."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # ~20-30 s on 2 cores: two tiny models through five engine commands each


def test_gpu_bench_dry_run_reports_every_model(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--dry-run", "--out", str(out), "--work", str(tmp_path / "w")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["meta"]["dry_run"]
    assert set(results["models"]) == {"qwen2-vl-2b", "llava-1.5-7b"}
    for name, m in results["models"].items():
        assert m["generate"]["status"] == "ok", (name, m["generate"])
        assert m["generate"]["tokens_per_s"] > 0
        assert m["reward"]["status"] == "ok", (name, m["reward"])
        assert m["reward"]["step_seconds"] > 0 and m["reward"]["flops_per_step"] > 0
        assert m["ppo"]["status"] == "ok", (name, m["ppo"])
        assert m["ppo"]["iteration_seconds"] > 0
        assert m["parameters"]["language"] > 0 and m["parameters"]["vision"] > 0
    if not results["meta"]["cuda"]:  # GPU-only figures say so instead of failing
        assert "n/a (no GPU)" in proc.stdout
        assert results["models"]["qwen2-vl-2b"]["reward"]["mfu"] is None
    assert "| model | phase |" in proc.stdout  # the markdown table
