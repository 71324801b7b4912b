"""Reviewing rankings in a real browser: bob ranks on the ranking page, alice (project admin) rejects his
ranking on the Review page, its pairs leave the export, and she accepts it again.

Personas (see conftest.world): alice is an admin of "shapes", bob an annotator there.
"""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from annotation.models import PreferencePair, Ranking
from annotation.services.exports import ExportFilter, write_export
from tests.e2e.helpers import login, on_screen_ids, open_work, shot, wait_for_next

pytestmark = pytest.mark.django_db(transaction=True)


def exported_rankings(project, out) -> set[int]:
    write_export(ExportFilter(project=project), "records", out)
    return {json.loads(line)["ranking_id"] for line in (out / "preferences.jsonl").read_text().splitlines()}


def test_an_admin_rejects_a_ranking_and_accepts_it_again(page, context, live_server, world, tmp_path):
    project = world["project"]
    login(page, live_server, "bob")
    first = open_work(page, live_server)
    c = on_screen_ids(page)
    for key in ["2", "1", "t", "3", "4"]:  # card 2 first, 1 tied with it, then 3, then 4
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    wait_for_next(page, first)
    ranking = Ranking.objects.get(task_id=first, annotator=world["bob"])
    assert ranking.review == "pending"
    assert exported_rankings(project, tmp_path / "before") == {ranking.pk}

    context.clear_cookies()
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/shapes/dashboard/")
    page.click("#to-review")
    page.wait_for_url(f"{live_server.url}/projects/shapes/review/")
    item = page.locator(f"#ranking-{ranking.pk}")
    expect(item).to_have_attribute("data-review", "pending")
    expect(item).to_contain_text("by bob")
    expect(item.locator("[data-field=ordering] li")).to_have_count(3)
    expect(item.locator("[data-field=ordering] li").first).to_contain_text("tie")
    expect(item.locator(f"[data-candidate='{c[1]}']")).to_be_visible()
    expect(item.locator("img")).to_have_js_property("complete", True)
    assert item.locator("img").evaluate("img => img.naturalWidth") > 0
    shot(page, "review")

    item.locator("input[name=note]").fill("the caption it put first miscounts the shapes")
    item.locator("button[value=reject]").click()
    expect(page.locator(".messages")).to_contain_text(f"Ranking {ranking.pk} rejected")
    item = page.locator(f"#ranking-{ranking.pk}")
    expect(item).to_have_attribute("data-review", "rejected")
    expect(item.locator("[data-field=review]")).to_have_text("Rejected")
    expect(item.locator("[data-field=reviewed]")).to_contain_text("by alice")
    expect(item.locator("button[value=reject]")).to_be_disabled()
    ranking.refresh_from_db()
    assert (ranking.review, ranking.reviewed_by, ranking.review_note) == (
        "rejected", world["alice"], "the caption it put first miscounts the shapes")
    assert PreferencePair.objects.filter(ranking=ranking).exists()  # kept, just left out of exports
    assert exported_rankings(project, tmp_path / "rejected") == set()

    page.click("#review-filter a[data-state=rejected]")
    expect(page.locator(".review-item")).to_have_count(1)
    page.locator(f"#ranking-{ranking.pk} button[value=accept]").click()
    expect(page.locator(f"#ranking-{ranking.pk}")).to_have_count(0)  # no longer in the rejected filter
    ranking.refresh_from_db()
    assert ranking.review == "accepted"
    assert exported_rankings(project, tmp_path / "accepted") == {ranking.pk}


def test_an_annotator_cannot_open_the_review_page(page, live_server, world):
    login(page, live_server, "bob")
    response = page.goto(f"{live_server.url}/projects/shapes/review/")
    assert response.status == 403
