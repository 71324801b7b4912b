"""The run-directory contract of DESIGN.md, shared by every subcommand (and by PPO/GRPO later).

    <run dir>/config.json    the validated run config
    <run dir>/metrics.jsonl  one JSON object per logged step: step, total_steps, time, elapsed, loss, …
    <run dir>/log.txt        the human-readable log
    <run dir>/checkpoint/    written as .checkpoint.tmp-<pid>/ and renamed when complete
    <run dir>/result.json    final metrics with "status": "completed" (or "failed" and "error")

Under `accelerate launch` only the main process writes; the others get a RunDir whose writes are no-ops.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOGGER_NAME = "rlhf.engine"


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to a temp file in the same folder and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; the Django job (maybe another user) reads these files
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


class RunDir:
    """One run's directory. Create it at the start of a run, before any model loads."""

    def __init__(self, path: str | Path, config: dict, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        self.start = time.time()
        self._metrics = None
        self._handler: logging.Handler | None = None
        if not is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "result.json").unlink(missing_ok=True)
        write_json_atomic(self.path / "config.json", config)
        self._metrics = open(self.path / "metrics.jsonl", "w", buffering=1)  # noqa: SIM115 - closed in close()
        self._handler = logging.FileHandler(self.path / "log.txt", mode="w")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger(LOGGER_NAME)
        logger.addHandler(self._handler)
        logger.setLevel(logging.INFO)

    @classmethod
    def resume(cls, path: str | Path, config: dict, step: int, is_main: bool = True) -> RunDir:
        """The run directory of a run that continues from its checkpoint of `step`: metrics.jsonl keeps its
        lines up to that step (the curve up to the checkpoint) and the run appends after them; the other
        files start afresh as for a new run."""
        kept: list[str] = []
        metrics = Path(path) / "metrics.jsonl"
        if is_main and metrics.is_file():
            kept = [line + "\n" for line in metrics.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= step]
        run = cls(path, config, is_main=is_main)
        if run._metrics is not None:
            run._metrics.writelines(kept)
        return run

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint"

    def log_metrics(self, step: int, total_steps: int, **metrics) -> None:
        """Append one line to metrics.jsonl (the Django job tails it for progress and curves)."""
        if self._metrics is None:
            return
        row = {"step": step, "total_steps": total_steps, "time": round(time.time(), 3),
               "elapsed": round(time.time() - self.start, 3), **metrics}
        self._metrics.write(json.dumps(row, default=float) + "\n")

    @contextlib.contextmanager
    def checkpoint(self, name: str = "checkpoint") -> Iterator[Path]:
        """Yield a temporary folder to write a checkpoint into; rename it to `name` when the block ends
        normally, delete it when the block raises. A killed process leaves only `.name.tmp-<pid>`."""
        final = self.path / name
        tmp = self.path / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():
            old = self.path / f".{name}.old-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)

    def write_result(self, result: dict) -> None:
        """Write result.json ("status": "completed" unless the caller says otherwise)."""
        if self.is_main:
            write_json_atomic(self.path / "result.json", {"status": "completed", **result,
                                                          "seconds": round(time.time() - self.start, 2)})

    def fail(self, error: BaseException) -> None:
        """Record a failed run in result.json and the log."""
        if self.is_main:
            logging.getLogger(LOGGER_NAME).error("run failed: %s: %s", type(error).__name__, error)
            write_json_atomic(self.path / "result.json", {"status": "failed", "error": f"{type(error).__name__}: "
                                                          f"{error}", "seconds": round(time.time() - self.start, 2)})

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Leaving the block: a failure is recorded in result.json and the log, then files are closed;
        the exception goes on."""
        if exc is not None:
            self.fail(exc)
        self.close()
        return False

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._handler is not None:
            logging.getLogger(LOGGER_NAME).removeHandler(self._handler)
            self._handler.close()
            self._handler = None


def progress(iterable=None, total: int | None = None, desc: str = "", enabled: bool = True):
    """A tqdm progress bar on a terminal, silent otherwise (jobs log to metrics.jsonl instead)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()), leave=False)
