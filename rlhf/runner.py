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
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from rlhf.models import TrainingRun

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_SECONDS = 1.0
DATABASE_WAIT_S = 300.0  # how long a finished engine's step waits for an unreachable database
# Errors of a database that went away (restarted, connection killed), as opposed to a query's own error.
DATABASE_GONE = (OperationalError, InterfaceError)
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
    custom = settings.LENSLOOP_ENGINE_LAUNCH
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


def database_retry(fn: Callable[[], T], *, give_up_after: float = DATABASE_WAIT_S, what: str = "write") -> T:
    """``fn()``, tried again while the database is unreachable (a PostgreSQL restart takes seconds), with
    a fresh connection each time; the last error is raised after ``give_up_after`` seconds. Only for
    writes that are whole in themselves (their own transaction, or none), outside any atomic block."""
    deadline = time.monotonic() + give_up_after
    wait = 0.5
    while True:
        try:
            return fn()
        except DATABASE_GONE as exc:
            connection.close()  # the next query opens a new connection
            if time.monotonic() + wait > deadline:
                raise
            log.warning("database unreachable during %s (%s); trying again in %.1f s", what, exc, wait)
            time.sleep(wait)
            wait = min(wait * 2, 10.0)


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
    database_retry(lambda: TrainingRun.objects.filter(pk=run.pk).update(pid=proc.pid, heartbeat_at=timezone.now()),
                   what="recording the engine's pid")
    tail = MetricsTail(run_dir / "metrics.jsonl")
    history = list(run.metrics or [])
    last = None  # the newest metrics line, written with the next update that reaches the database
    unreachable_since = None
    try:
        while True:
            finished = proc.poll() is not None
            new = tail.read_new()
            history = _thin(history + new)
            last = new[-1] if new else last
            updates = {"heartbeat_at": timezone.now(), "log_tail": _log_tail(run_dir / "log.txt") or _log_tail(console)}
            if last is not None:
                updates["metrics"] = history
                updates["step"] = int(last.get("step", 0))
                updates["total_steps"] = int(last.get("total_steps", 0) or 0)
            try:
                TrainingRun.objects.filter(pk=run.pk).update(**updates)
                cancelled = TrainingRun.objects.filter(pk=run.pk, state=TrainingRun.State.CANCELLED).exists()
            except DATABASE_GONE as exc:
                # The database restarted (or dropped this connection): the engine needs none of it, so it
                # goes on; progress and the heartbeat are written once the database answers again. Before,
                # a PostgreSQL restart failed every step that was training at the time.
                connection.close()
                if unreachable_since is None:
                    unreachable_since = time.monotonic()
                    log.warning("run %s: database unreachable (%s); the engine goes on", run.pk, exc)
                cancelled = False
            else:
                if unreachable_since is not None:
                    log.warning("run %s: database back after %.0f s", run.pk, time.monotonic() - unreachable_since)
                    unreachable_since = None
                last = None
            # An engine that finished waits for the database (for a while) so that its last figures and
            # the step's own writes after it land.
            if finished and (unreachable_since is None or time.monotonic() - unreachable_since > DATABASE_WAIT_S):
                break
            if cancelled:
                _kill(proc)
                raise Cancelled()
            time.sleep(POLL_SECONDS)
    except BaseException:
        _kill(proc)
        raise
    finally:
        with contextlib.suppress(*DATABASE_GONE):  # a run that ends is written with pid=None anyway
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
