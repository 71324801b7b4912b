"""Imports as background jobs: the browser and the API upload a bundle, get its ``ImportJob`` at once, and a
worker runs the import (``annotation.services.imports.import_bundle``) while the job's progress is written
for the import page to follow.

* ``import_job_create`` stores the upload under IMPORT_ROOT and enqueues the job once the row is committed.
* ``import_job_run`` (the rq job) claims a queued job, runs the import with a progress writer beside it, and
  records the outcome: ``succeeded`` (the report), ``rejected`` (all or nothing and something was wrong: the
  report, nothing written), ``failed`` (an error: its message), ``cancelled``.
* ``import_job_cancel`` cancels a queued job at once, and asks a running one to stop at its next batch
  (a cancel that arrives before the last batch is written always wins: nothing is committed).
* ``reap_lost_imports`` marks failed the running jobs whose worker died (killed, out of memory, machine
  lost). Their rows were never committed: an import writes in one transaction, which the database rolls
  back when the connection of a dead process drops.

Whether a worker is alive: on the same machine its process id says so at once; from another machine, its
heartbeat (written every ``HEARTBEAT_SECONDS`` by the progress writer) must be older than
``LENSLOOP_RUN_STALE_SECONDS``. (On SQLite the heartbeat cannot be written while the import's own write
transaction holds the database, so the process id is what counts there; SQLite runs on one machine.)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from annotation.exceptions import ImportRejected
from annotation.models import ImportJob, Project
from annotation.services.imports import MODES, ImportCancelled, ImportReport, import_bundle

log = logging.getLogger(__name__)
S = ImportJob.State
QUEUE = "default"
HEARTBEAT_SECONDS = 1.0  # progress and heartbeat; the page polls about as often
JOB_TIMEOUT = 24 * 3600  # rq's limit on one import (its default of 180 s would kill a large one)
OPTIONS = ("mode", "format", "manifest", "split", "limit", "heldout")


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def import_job_create(*, project: Project, user, upload, filename: str, options: dict) -> ImportJob:
    """Store ``upload`` (a file-like object with ``chunks()``, or bytes) and queue its import. ``options`` are
    import_bundle's (mode, format, manifest, split, limit, heldout), already validated by the caller."""
    if options.get("mode", "all_or_nothing") not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    folder = Path(settings.IMPORT_ROOT) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.zip"
    size = 0
    with path.open("wb") as fh:
        for chunk in upload.chunks() if hasattr(upload, "chunks") else [upload]:
            fh.write(chunk)
            size += len(chunk)
    try:
        with transaction.atomic():
            job = ImportJob.objects.create(
                project=project, created_by=user, filename=filename[:255], upload=str(path), size_bytes=size,
                options={k: options.get(k) for k in OPTIONS if options.get(k) not in (None, "")},
                progress={"phase": "queued", "fraction": 0.0},
            )
            job_id = job.pk
            transaction.on_commit(lambda: _enqueue(job_id))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return job


def _enqueue(job_id: int) -> None:
    from annotation.jobs import import_job
    from lensloop.queue import get_queue

    get_queue(QUEUE).enqueue(import_job, job_id, job_id=f"import-{job_id}", job_timeout=JOB_TIMEOUT,
                             result_ttl=3600, failure_ttl=86400)


def _claim(job_id: int) -> ImportJob | None:
    with transaction.atomic():
        job = ImportJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.state != S.QUEUED:
            return None  # gone, cancelled, or run already (a job enqueued twice)
        now = timezone.now()
        job.state, job.started_at, job.heartbeat_at, job.worker = S.RUNNING, now, now, _worker_id()
        job.progress = {"phase": "checking", "fraction": 0.0}
        job.save(update_fields=["state", "started_at", "heartbeat_at", "worker", "progress"])
        return job


class _ProgressWriter(threading.Thread):
    """Writes the latest progress and the heartbeat every ``HEARTBEAT_SECONDS``, on its own connection
    (outside the import's transaction, so the page sees it), and notices a cancel request."""

    def __init__(self, job_id: int):
        super().__init__(daemon=True, name=f"import-{job_id}-progress")
        self.job_id, self.latest, self.stopped, self.cancelled = job_id, None, threading.Event(), threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(HEARTBEAT_SECONDS):
                self.write()
        finally:
            connection.close()

    def write(self) -> None:
        updates = {"heartbeat_at": timezone.now()}
        if self.latest is not None:
            updates["progress"] = self.latest
        try:
            ImportJob.objects.filter(pk=self.job_id, state=S.RUNNING).update(**updates)
            if self.cancel_requested():
                self.cancelled.set()
        except DatabaseError:
            # SQLite while the import writes (the database is locked), or a database restart: the next
            # beat tries again; the worker's liveness is judged by its process id on SQLite.
            connection.close()

    def __call__(self, phase: str, report: ImportReport, fraction: float | None) -> None:
        """The import's progress callback: keep a snapshot for the next write; stop if cancelled. While
        writing, each batch also asks the database itself (one indexed read on the import's own connection):
        a cancel requested before the import's last batch always wins, however quickly the batches go."""
        self.latest = progress_payload(phase, report, fraction)
        if not self.cancelled.is_set() and phase == "writing" and self.cancel_requested():
            self.cancelled.set()
        if self.cancelled.is_set():
            raise ImportCancelled()

    def cancel_requested(self) -> bool:
        """Whether someone asked to cancel (one indexed read, on the calling thread's connection)."""
        return ImportJob.objects.filter(pk=self.job_id, cancel_requested=True).exists()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)


def progress_payload(phase: str, report: ImportReport, fraction: float | None) -> dict:
    return {
        "phase": phase, "fraction": None if fraction is None else round(fraction, 4), "rows": report.rows,
        "rows_good": report.rows_imported if phase == "checking" else report.rows - report.rows_skipped,
        "images_stored": report.images_checked, "problems": report.problems_total, "rows_written": report.rows_written,
    }


def import_job_run(job_id: int) -> str:
    """Run one queued import (the rq job's body); returns the state it ended in."""
    reap_lost_imports()
    job = _claim(job_id)
    if job is None:
        return "skipped"
    if not Path(job.upload).is_file():
        _finish(job, S.FAILED, error=(
            f"the uploaded file is not on this worker's disk ({job.upload}): the web servers and the workers must "
            "share LENSLOOP_DATA_DIR/imports; nothing was imported. Upload the bundle again."))
        return S.FAILED
    writer = _ProgressWriter(job.pk)
    writer.start()
    opts = job.options
    state, report, error = S.FAILED, None, ""
    try:
        result = import_bundle(
            project=job.project, path=Path(job.upload), manifest=opts.get("manifest"), mode=opts.get("mode", "all_or_nothing"),
            format=opts.get("format", "manifest"), split=opts.get("split"), limit=opts.get("limit"),
            heldout=opts.get("heldout", "source"), progress=writer,
        )
        state, report = S.SUCCEEDED, result.as_dict()
    except ImportRejected as exc:
        state, report = S.REJECTED, exc.details["report"].as_dict()
    except ImportCancelled:
        state, error = S.CANCELLED, "cancelled; nothing was imported"
    except Exception as exc:
        log.exception("import %s failed", job.pk)
        error = f"the import failed and nothing was imported ({type(exc).__name__}: {exc})"
    finally:
        writer.stop()
    _finish(job, state, report=report, error=error)
    return state


def _finish(job: ImportJob, state: str, *, report: dict | None = None, error: str = "") -> None:
    progress = dict(job.progress or {})
    if report is not None:
        progress.update(phase="done", fraction=1.0, rows=report["rows"], problems=report["problems_total"])
    else:
        progress["phase"] = state
    ImportJob.objects.filter(pk=job.pk, state__in=ImportJob.ACTIVE_STATES).update(
        state=state, report=report, error=error, progress=progress, finished_at=timezone.now(), heartbeat_at=None,
    )
    Path(job.upload).unlink(missing_ok=True)


def import_job_cancel(*, job: ImportJob) -> ImportJob:
    """A queued import is cancelled at once; a running one stops at its next batch of rows (nothing of it
    is written either way); a finished one stays as it is."""
    with transaction.atomic():
        job = ImportJob.objects.select_for_update().get(pk=job.pk)
        if job.state == S.QUEUED:
            _finish(job, S.CANCELLED, error="cancelled before it started; nothing was imported")
        elif job.state == S.RUNNING:
            ImportJob.objects.filter(pk=job.pk).update(cancel_requested=True)
    job.refresh_from_db()
    return job


def _alive(worker: str, heartbeat_at) -> bool:
    host, _, pid = worker.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # someone else's process: alive
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not reaped yet
        except (OSError, IndexError):
            return True  # no /proc here: the signal said it exists
    stale = timedelta(seconds=settings.LENSLOOP_RUN_STALE_SECONDS)
    return heartbeat_at is not None and heartbeat_at > timezone.now() - stale


def reap_lost_imports(project: Project | None = None) -> int:
    """Mark failed the running imports whose worker is gone; returns how many."""
    running = ImportJob.objects.filter(state=S.RUNNING)
    if project is not None:
        running = running.filter(project=project)
    lost = [job for job in running if not _alive(job.worker, job.heartbeat_at)]
    for job in lost:
        phase = (job.progress or {}).get("phase", "checking")
        _finish(job, S.FAILED, error=(
            f"the worker running this import stopped (killed or lost) while {phase}; nothing was imported "
            "(the import writes in one transaction, which was never committed). Upload the bundle again."))
    return len(lost)
