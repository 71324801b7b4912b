"""The admin's pages in a real browser: create a project, import a zip (and a folder) with a progress
bar and a line-numbered report, the dashboard, members, and a streamed export download.

Personas (see conftest.world): alice is a staff user and admin of "shapes", bob an annotator there.
"""

from __future__ import annotations

import json
import re
import uuid
import zipfile
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from annotation.models import Membership, Project, Ranking, RankingTask
from annotation.services import queue
from tests import factories as f
from tests.e2e.helpers import bundle_zip, login, shot

pytestmark = pytest.mark.django_db(transaction=True)


def rank_some(project, annotator, n: int) -> None:
    for i in range(n):
        assignment = queue.next_task(annotator=annotator, project=project)
        ids = assignment.task.candidate_ids
        queue.submit_ranking(
            annotator=annotator, task_id=assignment.task_id, ordering=[[ids[0]], ids[1:3], [ids[3]]],
            client_uuid=uuid.uuid4(), flags={"unsafe"} if i % 2 else set(), time_spent_ms=4200,
        )


def test_an_admin_creates_a_project_and_imports_a_zip_with_a_report(page, live_server, world, tmp_path):
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

    # All or nothing: one bad row refuses everything, and the report names file and line.
    page.set_input_files("#import-file", str(bundle_zip(tmp_path / "bundle.zip", rows=3, bad_rows=1)))
    page.click("#import-submit")
    report = page.locator("#import-report")
    expect(report).to_be_visible()
    expect(report).to_have_attribute("data-status", "400")
    expect(page.locator("#report-summary")).to_contain_text("Nothing was imported")
    expect(page.locator("#report-problems li")).to_have_count(1)
    expect(page.locator("#report-problems li").first).to_contain_text("manifest.jsonl:4")
    assert RankingTask.objects.filter(project=project).count() == 0

    # Partial: the good rows go in, the bad one is listed.
    page.select_option("#import-mode", "partial")
    page.click("#import-submit")
    expect(report).to_have_attribute("data-status", "201")
    expect(page.locator("#report-summary")).to_contain_text("Imported 3 of 4 rows")
    expect(page.locator("#report-problems li").first).to_contain_text("manifest.jsonl:4")
    expect(page.locator("#import-progress")).to_have_attribute("value", "100")
    shot(page, "import-report", full_page=True)
    assert RankingTask.objects.filter(project=project).count() == 3


def test_an_admin_imports_a_folder_zipped_in_the_browser(page, live_server, world, tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    with zipfile.ZipFile(bundle_zip(tmp_path / "b.zip", rows=2, bad_rows=0, k=4)) as zf:
        zf.extractall(folder)
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/shapes/import/")
    before = RankingTask.objects.filter(project=world["project"]).count()
    page.set_input_files("#import-folder", str(folder))
    page.click("#import-submit")
    expect(page.locator("#import-report")).to_have_attribute("data-status", "201")
    expect(page.locator("#report-summary")).to_contain_text("Imported 2 of 2 rows")
    assert RankingTask.objects.filter(project=world["project"]).count() == before + 2


def test_the_dashboard_shows_queue_annotators_flags_and_sources(page, live_server, world):
    rank_some(world["project"], world["bob"], 5)
    # Spread the rankings over the last hours, so the hourly chart has a shape.
    now = timezone.now()
    for i, ranking in enumerate(Ranking.objects.order_by("id")):
        Ranking.objects.filter(pk=ranking.pk).update(created_at=now - timedelta(hours=3 * i))
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/shapes/dashboard/")
    expect(page.get_by_role("img", name="Rankings per hour, last 48 hours (UTC)")).to_be_visible()
    expect(page.get_by_role("img", name="Flags raised")).to_be_visible()
    row = page.locator("tr", has_text="bob")
    expect(row).to_contain_text("5")
    expect(row).to_contain_text("4.2 s")
    expect(page.locator("tr", has_text="policy-v2")).to_contain_text("50")  # candidates by source
    shot(page, "dashboard", full_page=True)


def test_the_dashboard_reads_well_with_one_hour_of_rankings_and_a_source_ranked_against_itself(page, live_server, world):
    # Three rankings, all in this hour; the first of an imported task whose candidates are all "import".
    f.task(world["project"], priority=10, source="import")
    rank_some(world["project"], world["bob"], 3)
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/shapes/dashboard/")

    hourly = page.get_by_role("img", name="Rankings per hour, last 48 hours (UTC)")
    bars = hourly.locator("rect.bar")
    expect(bars).to_have_count(12)  # the last 12 hours, not 47 empty ones and a sliver
    expect(hourly).to_contain_text("no rankings in the 36 hours before")
    busy = bars.last
    expect(busy.locator("title")).to_contain_text(": 3 rankings")
    assert busy.bounding_box()["width"] > 40  # wide enough to read (one of 48 was about 17 px here)
    expect(hourly.locator("text.tick", has_text=re.compile(r"^\d\dh$"))).to_have_count(12)  # every hour labelled

    imported = page.locator("tr[data-source=import]")
    expect(imported.locator("[data-field=win-rate]")).to_have_text("—")  # import only against import
    expect(imported.locator("[data-field=within]")).to_have_text("5")  # its pairs within itself, counted apart
    expect(page.locator("tr[data-source=policy-v1] [data-field=win-rate]")).to_have_text("100%")
    expect(page.locator("#sources-note")).to_contain_text("a source ranked only against itself has no win rate")


def test_an_annotator_cannot_open_admin_pages(page, live_server, world):
    login(page, live_server, "bob")
    for name in ["dashboard", "import", "members", "export"]:
        response = page.goto(f"{live_server.url}/projects/shapes/{name}/")
        assert response.status == 403, name


def test_an_admin_adds_and_removes_members(page, live_server, world):
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/shapes/members/")
    page.fill("#id_username", "charlie")
    page.select_option("#id_role", "admin")
    page.click("button:has-text('Save member')")
    expect(page.locator("#member-table")).to_contain_text("charlie")
    assert Membership.objects.get(project=world["project"], user=world["charlie"]).role == "admin"
    page.fill("#id_username", "nobody-here")
    page.click("button:has-text('Save member')")
    expect(page.locator(".errorlist")).to_contain_text("no user called")
    shot(page, "members")
    page.click("button[aria-label='Remove charlie']")
    expect(page.locator("#member-table")).not_to_contain_text("charlie")
    assert not Membership.objects.filter(project=world["project"], user=world["charlie"]).exists()


def test_an_admin_downloads_an_export(page, live_server, world, tmp_path):
    rank_some(world["project"], world["bob"], 3)
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/shapes/export/")
    page.select_option("#id_format", "records")
    page.check("input[name=source][value=policy-v1]")
    page.check("input[name=source][value=policy-v2]")
    shot(page, "export")
    with page.expect_download() as info:
        page.click("#export-download")
    download = info.value
    assert download.suggested_filename.endswith(".zip")
    path = tmp_path / "export.zip"
    download.save_as(path)
    with zipfile.ZipFile(path) as zf:
        rows = [json.loads(line) for line in zf.read("preferences.jsonl").decode().splitlines()]
        assert any(name.startswith("images/") for name in zf.namelist())
    # [[v1], [v2, v2], [reference]]: 5 pairs per ranking, 2 of them between the ticked sources.
    assert len(rows) == 3 * 2
    assert {r["project"] for r in rows} == {"shapes"}
