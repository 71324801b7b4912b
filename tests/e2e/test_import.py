"""Importing in a real browser: create a project, upload a zip (or a folder, zipped in the browser), watch the
import's progress bar while a real rq worker (``manage.py worker``) imports it, and read the report with file
and line of every refused row; the page's address follows the import, so a reload shows it again.

Personas (see conftest.world): alice is a staff user and admin of "shapes", bob an annotator there.
"""

from __future__ import annotations

import json
import re
import signal
import zipfile

import pytest
from django.db import connection
from playwright.sync_api import expect

from annotation.models import ImportJob, Membership, Project, Prompt, RankingTask
from annotation.services import import_jobs
from lensloop.queue import get_queue
from tests import factories as f
from tests.e2e.helpers import bundle_zip, login, shot
from tests.support import start_worker, writes_held

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(world):
    """Starts a real worker on the imports' queue when called; stopped at the end of the test."""
    get_queue(import_jobs.QUEUE).empty()
    started = []

    def start():
        started.append(start_worker(import_jobs.QUEUE))

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def many_rows(path, rows: int, k: int = 4):
    """A zip of ``rows`` good rows over 16 images: a few seconds of work for the worker."""
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(16):
            zf.writestr(f"images/{i}.png", f.png_bytes(color=(12 * i, 90, 200), size=(16, 16)))
        zf.writestr("manifest.jsonl", "".join(
            json.dumps({"image": f"images/{n % 16}.png", "prompt": f"Describe {n}.",
                        "candidates": [f"c{j} of {n}" for j in range(k)]}) + "\n" for n in range(rows)))
    return path


def test_an_admin_creates_a_project_and_imports_a_zip_with_a_report(page, live_server, world, worker, tmp_path):
    login(page, live_server, "alice")
    page.click("text=New project")
    page.fill("#id_name", "Street signs")
    page.select_option("#id_task_type", "vqa")
    page.fill("#id_candidates_per_task", "4")
    page.fill("#id_instructions", "Rank the **answers**.")
    shot(page, "project-new")
    page.click("button:has-text('Create project')")
    page.wait_for_url(f"{live_server.url}/projects/street-signs/import/")
    project = Project.objects.get(slug="street-signs")
    assert project.task_type == "vqa"
    assert Membership.objects.get(project=project, user=world["alice"]).role == "admin"

    # The upload is accepted at once and waits for a worker; the page's address becomes the import's.
    page.set_input_files("#import-file", str(bundle_zip(tmp_path / "bundle.zip", rows=3, bad_rows=1)))
    page.click("#import-submit")
    expect(page.locator("#import-progress-label")).to_contain_text("Queued: waiting for a worker")
    first = ImportJob.objects.get(project=project)
    expect(page).to_have_url(f"{live_server.url}/projects/street-signs/imports/{first.pk}/")

    # All or nothing: one bad row refuses everything, and the report names file and line.
    worker()
    report = page.locator("#import-report")
    expect(report).to_have_attribute("data-state", "rejected", timeout=60_000)
    expect(page.locator("#report-summary")).to_contain_text("Nothing was imported")
    expect(page.locator("#report-problems li")).to_have_count(1)
    expect(page.locator("#report-problems li").first).to_contain_text("manifest.jsonl:4")
    assert RankingTask.objects.filter(project=project).count() == 0

    # Partial: the good rows go in, the bad one is listed.
    page.select_option("#import-mode", "partial")
    page.click("#import-submit")
    expect(report).to_have_attribute("data-state", "succeeded", timeout=60_000)
    expect(page.locator("#report-summary")).to_contain_text("Imported 3 of 4 rows")
    expect(page.locator("#report-problems li").first).to_contain_text("manifest.jsonl:4")
    expect(page.locator("#import-progress")).to_have_attribute("value", "100")
    shot(page, "import-report", full_page=True)
    assert RankingTask.objects.filter(project=project).count() == 3

    # The worker packed the new images (no file each); the browser gets each one's bytes as uploaded.
    with zipfile.ZipFile(tmp_path / "bundle.zip") as zf:
        uploaded = {p.text: zf.read(f"images/{int(p.text.split()[-1].rstrip('.')):03d}.png")
                    for p in Prompt.objects.filter(project=project)}
    for prompt in Prompt.objects.filter(project=project).select_related("image"):
        assert prompt.image.file.startswith("packs/")
        response = page.request.get(f"{live_server.url}/api/projects/street-signs/images/{prompt.image_id}/")
        assert response.ok and response.headers["content-type"] == "image/png"
        assert response.body() == uploaded[prompt.text]

    # A reload shows the import again, and the list of recent imports has both.
    page.reload()
    expect(report).to_have_attribute("data-state", "succeeded")
    expect(page.locator("#recent-imports tbody tr")).to_have_count(2)
    expect(page.locator("#recent-imports tbody tr").first).to_contain_text("Succeeded")


def test_the_admin_watches_the_progress_bar_of_a_large_import(page, live_server, world, worker, tmp_path):
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/shapes/import/")
    before = RankingTask.objects.filter(project=world["project"]).count()
    worker()
    if connection.vendor == "postgresql":
        # The import is held at its first batch of rows (PostgreSQL writes batches of 10,000 while later rows
        # are checked), so the page surely polls it mid-import: checking, part of the rows read and checked,
        # none written yet.
        with writes_held() as until_blocked:
            page.set_input_files("#import-file", str(many_rows(tmp_path / "many.zip", 30_000)))
            page.click("#import-submit")
            until_blocked()
            label = page.locator("#import-progress-label")
            expect(label).to_contain_text("Checking rows and images…", timeout=60_000)
            expect(label).to_contain_text(re.compile(r"(?:[12]\d|30),\d{3} rows read"))
            expect(page.locator("#import-counts")).not_to_contain_text("Rows written")
            expect(page.locator("#import-counts")).to_contain_text(re.compile(r"Rows checked(?:[12]\d|30),\d{3}"))
            shot(page, "import-progress")
    else:
        # SQLite: nothing holds an import mid-way (its write lock would hold the progress too), and a fast
        # machine imports these rows between two polls; the page shows the outcome below either way.
        page.set_input_files("#import-file", str(many_rows(tmp_path / "many.zip", 30_000)))
        page.click("#import-submit")
    expect(page.locator("#import-report")).to_have_attribute("data-state", "succeeded", timeout=120_000)
    expect(page.locator("#report-summary")).to_contain_text("Imported 30000 of 30000 rows")
    expect(page.locator("#import-progress")).to_have_attribute("value", "100")
    assert RankingTask.objects.filter(project=world["project"]).count() == before + 30_000


def test_an_admin_imports_a_folder_zipped_in_the_browser(page, live_server, world, worker, tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    with zipfile.ZipFile(bundle_zip(tmp_path / "b.zip", rows=2, bad_rows=0, k=4)) as zf:
        zf.extractall(folder)
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/shapes/import/")
    before = RankingTask.objects.filter(project=world["project"]).count()
    worker()
    page.set_input_files("#import-folder", str(folder))
    page.click("#import-submit")
    expect(page.locator("#import-report")).to_have_attribute("data-state", "succeeded", timeout=60_000)
    expect(page.locator("#report-summary")).to_contain_text("Imported 2 of 2 rows")
    assert RankingTask.objects.filter(project=world["project"]).count() == before + 2


def test_a_file_that_is_not_a_zip_is_refused_at_once(page, live_server, world, tmp_path):
    (tmp_path / "notes.zip").write_text("not a zip at all")
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/shapes/import/")
    page.set_input_files("#import-file", str(tmp_path / "notes.zip"))
    page.click("#import-submit")
    expect(page.locator("#report-summary")).to_contain_text("notes.zip: not a zip file")
    assert not ImportJob.objects.exists()
