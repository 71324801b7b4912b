"""The admin's pages in a real browser: the dashboard, members, and a streamed export download (creating a
project and importing into it: tests/e2e/test_import.py).

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

from annotation.models import Membership, Ranking
from annotation.services import queue
from tests import factories as f
from tests.e2e.helpers import login, shot

pytestmark = pytest.mark.django_db(transaction=True)


def rank_some(project, annotator, n: int) -> None:
    for i in range(n):
        assignment = queue.next_task(annotator=annotator, project=project)
        ids = assignment.task.candidate_ids
        queue.submit_ranking(
            annotator=annotator, task_id=assignment.task_id, ordering=[[ids[0]], ids[1:3], [ids[3]]],
            client_uuid=uuid.uuid4(), flags={"unsafe"} if i % 2 else set(), time_spent_ms=4200,
        )


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
