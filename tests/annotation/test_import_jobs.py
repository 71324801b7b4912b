"""Imports as background jobs, end to end: the API answers 202 with the import's URL, a real rq worker process
(``manage.py worker``) imports, the API shows progress and then the report; cancelled, refused and killed
imports write nothing.

Personas: alice is the project's admin, bob an annotator.
"""

from __future__ import annotations

import io
import json
import signal
import time
import zipfile
from pathlib import Path

import pytest
from django.db import connection
from rest_framework.test import APIClient

from annotation.models import ImportJob, Prompt, RankingTask
from annotation.services import import_checks, import_jobs
from lensloop.queue import get_queue
from tests import factories as f
from tests.support import child_env, manage, start_worker, writes_held

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world():
    alice, bob = f.user("alice"), f.user("bob")
    proj = f.project("shapes", k=2, admins=[alice], annotators=[bob])
    get_queue(import_jobs.QUEUE).empty()
    return {"alice": alice, "bob": bob, "project": proj}


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def bundle(rows: int, *, bad_lines: tuple[int, ...] = (), images: int | None = None) -> io.BytesIO:
    """A zip: ``rows`` manifest rows with two candidates, over ``images`` distinct PNGs (one per row by
    default); the lines in ``bad_lines`` (1-based) are not JSON."""
    images = images or rows
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(images):
            zf.writestr(f"images/{i}.png", f.png_bytes(color=(i % 256, (i // 256) % 256, 7), size=(8, 8)))
        lines = [
            "{not json" if n + 1 in bad_lines else
            json.dumps({"image": f"images/{n % images}.png", "prompt": f"Describe {n}.", "candidates": [f"a{n}", f"b{n}"]})
            for n in range(rows)
        ]
        zf.writestr("manifest.jsonl", "\n".join(lines) + "\n")
    buf.seek(0)
    buf.name = "bundle.zip"
    return buf


def upload(user, buf, **options):
    return client_for(user).post("/api/projects/shapes/imports/", {"file": buf, **options}, format="multipart")


def run_worker() -> None:
    done = manage("worker", import_jobs.QUEUE, "--burst", env=child_env())
    assert done.returncode == 0, done.stderr[-3000:]


def wait_for(job_id: int, test, timeout: float = 60.0) -> ImportJob:
    deadline = time.monotonic() + timeout
    while True:
        job = ImportJob.objects.get(pk=job_id)
        if test(job):
            return job
        assert time.monotonic() < deadline, f"import {job_id} stayed {job.state} {job.progress}"
        time.sleep(0.05)


def test_an_upload_answers_202_with_its_url_and_a_worker_imports_it(world):
    # More images than an import checks by itself: the worker's import starts its pool of checking processes.
    response = upload(world["alice"], bundle(import_checks.INLINE_IMAGES + 100), mode="partial")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert response["Location"] == body["url"] == f"/api/projects/shapes/imports/{body['id']}/"
    assert body["state"] == "queued" and body["page"] == f"/projects/shapes/imports/{body['id']}/"
    assert Prompt.objects.count() == 0  # nothing happens in the request

    run_worker()
    job = client_for(world["alice"]).get(body["url"]).json()
    assert job["state"] == "succeeded", job
    n = import_checks.INLINE_IMAGES + 100
    assert job["report"]["rows_imported"] == n and job["report"]["images_new"] == n
    assert job["progress"]["phase"] == "done" and job["progress"]["fraction"] == 1.0
    assert RankingTask.objects.filter(project=world["project"]).count() == n
    assert not Path(ImportJob.objects.get().upload).exists()  # the upload is removed once imported


def test_a_refused_import_is_rejected_with_file_and_line_and_writes_nothing(world):
    response = upload(world["alice"], bundle(4, bad_lines=(2, 4)))
    assert response.status_code == 202
    run_worker()
    job = client_for(world["alice"]).get(response["Location"]).json()
    assert job["state"] == "rejected"
    assert [(p["file"], p["line"]) for p in job["report"]["problems"]] == [("manifest.jsonl", 2), ("manifest.jsonl", 4)]
    assert job["report"]["rows_imported"] == 0 and job["report"]["rows_skipped"] == 4
    assert Prompt.objects.count() == 0


def test_partial_mode_writes_exactly_the_good_rows(world):
    response = upload(world["alice"], bundle(6, bad_lines=(3,)), mode="partial")
    run_worker()
    job = client_for(world["alice"]).get(response["Location"]).json()
    assert job["state"] == "succeeded" and job["report"]["rows_imported"] == 5
    assert sorted(Prompt.objects.values_list("text", flat=True)) == [f"Describe {n}." for n in (0, 1, 3, 4, 5)]


def test_an_upload_that_is_not_a_zip_is_refused_in_the_request(world):
    buf = io.BytesIO(b"image,prompt\na.png,hello\n")
    buf.name = "manifest.csv"
    response = upload(world["alice"], buf)
    assert response.status_code == 400 and response.json()["error"] == "not_a_zip"
    assert "manifest.csv: not a zip file" in response.json()["detail"]
    assert not ImportJob.objects.exists()


def test_bad_options_are_refused_in_the_request(world):
    response = upload(world["alice"], bundle(1), mode="sometimes", limit=0)
    assert response.status_code == 400
    assert set(response.json()["fields"]) >= {"mode", "limit"}
    assert not ImportJob.objects.exists()


def test_only_the_projects_admins_import_and_follow_imports(world):
    assert upload(world["bob"], bundle(1)).status_code == 403
    job_url = upload(world["alice"], bundle(1))["Location"]
    assert client_for(world["bob"]).get(job_url).status_code == 403
    assert client_for(world["bob"]).post(job_url + "cancel/").status_code == 403
    other = f.project("other", admins=[world["bob"]])
    assert client_for(world["bob"]).get(job_url.replace("shapes", other.slug)).status_code == 404


def test_a_queued_import_is_cancelled_at_once_and_writes_nothing(world):
    job_url = upload(world["alice"], bundle(3))["Location"]
    cancelled = client_for(world["alice"]).post(job_url + "cancel/").json()
    assert cancelled["state"] == "cancelled"
    run_worker()  # the job is still in the queue: it finds the import cancelled and does nothing
    assert ImportJob.objects.get().state == "cancelled" and Prompt.objects.count() == 0


needs_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="holding an import in its write pass takes a table lock, which needs PostgreSQL (SQLite's one write "
           "lock would also hold the cancel request and the heartbeat)")


@needs_postgres
def test_a_cancel_requested_while_the_import_writes_rolls_it_back(world):
    job_url = upload(world["alice"], bundle(300, images=4))["Location"]
    job_id = int(job_url.rstrip("/").rsplit("/", 1)[1])
    worker = start_worker(import_jobs.QUEUE)
    try:
        with writes_held() as until_blocked:
            until_blocked()  # the import is in its write pass, its first batch waiting on the lock
            cancel = client_for(world["alice"]).post(job_url + "cancel/").json()
            assert cancel["state"] == "running" and cancel["cancel_requested"], cancel
        job = wait_for(job_id, lambda j: j.state not in ImportJob.ACTIVE_STATES)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert job.state == "cancelled", (job.state, job.error)
    assert Prompt.objects.count() == 0 and RankingTask.objects.count() == 0


def test_a_cancel_that_reaches_a_running_import_before_it_commits_wins_and_writes_nothing(world):
    # The request as the cancel endpoint records it for a running import, made before the worker claims the
    # job: however fast the import goes, its write pass finds the request and rolls back.
    job_url = upload(world["alice"], bundle(300, images=4))["Location"]
    ImportJob.objects.filter(pk=ImportJob.objects.get().pk).update(cancel_requested=True)
    run_worker()
    job = client_for(world["alice"]).get(job_url).json()
    assert job["state"] == "cancelled" and "nothing was imported" in job["error"], job
    assert Prompt.objects.count() == 0 and RankingTask.objects.count() == 0


@needs_postgres
def test_a_worker_killed_mid_import_leaves_no_rows_and_the_import_is_marked_failed(world):
    job_url = upload(world["alice"], bundle(300, images=4))["Location"]
    job_id = int(job_url.rstrip("/").rsplit("/", 1)[1])
    worker = start_worker(import_jobs.QUEUE)
    try:
        with writes_held() as until_blocked:
            until_blocked()  # the kill lands inside the import's transaction, in its write pass
            wait_for(job_id, lambda j: j.progress.get("phase") == "writing")
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)
    job = client_for(world["alice"]).get(job_url).json()  # reading the import notices the dead worker
    assert job["state"] == "failed", job
    assert "stopped (killed or lost) while writing" in job["error"] and "nothing was imported" in job["error"]
    assert Prompt.objects.count() == 0 and RankingTask.objects.count() == 0


def test_the_import_command_draws_a_progress_bar(tmp_path, world):
    from django.core.management import call_command

    path = tmp_path / "bundle.zip"
    path.write_bytes(bundle(3000, images=20).getvalue())
    out, err = io.StringIO(), io.StringIO()
    call_command("import", "shapes", str(path), stdout=out, stderr=err)
    assert "imported 3000/3000 rows" in out.getvalue()
    assert "] 100% writing  3,000 rows written" in err.getvalue()
    assert "checking" in err.getvalue() and "images stored" in err.getvalue()


def test_an_upload_missing_on_the_workers_disk_fails_the_import_with_why(world):
    job_url = upload(world["alice"], bundle(2))["Location"]
    Path(ImportJob.objects.get().upload).unlink()  # a worker on another machine, without the shared folder
    run_worker()
    job = client_for(world["alice"]).get(job_url).json()
    assert job["state"] == "failed" and "not on this worker's disk" in job["error"]
    assert "LENSLOOP_DATA_DIR/imports" in job["error"] and Prompt.objects.count() == 0
