"""Run one engine command in a subprocess and mirror its run directory into a TrainingRun.

The engine runs out of process so that accelerator memory is freed when it ends, a cancel is a kill,
and a multi-GPU host can run the same step under ``accelerate launch`` (``LENSLOOP_ENGINE_LAUNCH``,
e.g. ``accelerate launch --num_processes 4``). The child dies with its parent (PR_SET_PDEATHSIG), so
a worker killed with SIGKILL never leaves an orphaned training process behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from rlhf.models import TrainingRun

POLL_SECONDS = 1.0
METRICS_KEPT = 500  # history points kept on the run; older points are thinned, never the newest
LOG_TAIL_BYTES = 8000


class EngineFailed(RuntimeError):
    pass


class Cancelled(Exception):
    pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    os.setsid()  # own process group: a cancel kills the whole launch (accelerate spawns children)


def launch_prefix() -> list[str]:
    custom = os.environ.get("LENSLOOP_ENGINE_LAUNCH", "").strip()
    if custom:
        return shlex.split(custom)
    return [sys.executable]


def _thin(points: list[dict]) -> list[dict]:
    if len(points) <= METRICS_KEPT:
        return points
    keep_every = 2
    head = points[:-50][::keep_every]
    return head + points[-50:]


class MetricsTail:
    """Read lines appended to metrics.jsonl since the last call (a partial last line waits)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def read_new(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out = []
        for line in data[: end + 1].splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def _log_tail(path: Path) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - LOG_TAIL_BYTES))
        return fh.read().decode("utf-8", "replace")


def run_engine(
    run: TrainingRun, command: str, config: dict, *, run_dir: Path | None = None, env: dict | None = None
) -> dict:
    """Run ``python -m rlhf.engine <command>`` for ``run`` in ``run_dir`` (default: the run's own);
    return its result.json.

    Raises Cancelled when the run was cancelled meanwhile, EngineFailed with the log's tail otherwise.
    """
    run_dir = Path(run_dir or run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "input-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    console = run_dir / "console.txt"
    cmd = [*launch_prefix(), "-m", "rlhf.engine", command, "--config", str(config_path), "--run-dir", str(run_dir)]
    child_env = {**os.environ, "LENSLOOP_DATA_DIR": str(settings.DATA_DIR), "PYTHONUNBUFFERED": "1", **(env or {})}
    with console.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=settings.BASE_DIR, env=child_env,
            preexec_fn=_die_with_parent,
        )
    TrainingRun.objects.filter(pk=run.pk).update(pid=proc.pid, heartbeat_at=timezone.now())
    tail = MetricsTail(run_dir / "metrics.jsonl")
    history = list(run.metrics or [])
    try:
        while True:
            finished = proc.poll() is not None
            new = tail.read_new()
            history = _thin(history + new)
            last = new[-1] if new else None
            updates = {"heartbeat_at": timezone.now(), "log_tail": _log_tail(run_dir / "log.txt") or _log_tail(console)}
            if new:
                updates["metrics"] = history
                updates["step"] = int(last.get("step", 0))
                updates["total_steps"] = int(last.get("total_steps", 0) or 0)
            TrainingRun.objects.filter(pk=run.pk).update(**updates)
            if finished:
                break
            if TrainingRun.objects.filter(pk=run.pk, state=TrainingRun.State.CANCELLED).exists():
                _kill(proc)
                raise Cancelled()
            time.sleep(POLL_SECONDS)
    except BaseException:
        _kill(proc)
        raise
    finally:
        TrainingRun.objects.filter(pk=run.pk).update(pid=None)
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    if proc.returncode != 0 or result.get("status") == "failed":
        reason = result.get("error") or _log_tail(console)[-2000:] or f"exit code {proc.returncode}"
        raise EngineFailed(f"engine {command} failed (exit {proc.returncode}): {reason}")
    return result


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
