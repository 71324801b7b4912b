"""Gold tasks in a real browser: an admin makes an accepted ranking gold on the Review page and sets the
gold settings on the Settings page; an annotator who orders gold tasks against their known order is paused on
the ranking page (with the reason) and works again once an admin re-admits them from the dashboard.

Personas (see conftest.world): alice is an admin of "shapes", bob an annotator there.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from annotation.models import Membership, Project, Ranking, RankingTask
from annotation.services import gold
from tests.e2e.helpers import login, on_screen_ids, open_work, shot, task_id, wait_for_next

pytestmark = pytest.mark.django_db(transaction=True)


def rank_as(page, order: list[int]) -> None:
    """Rank the task on screen: candidate ids best first, by the number keys of their cards, then submit."""
    shown = on_screen_ids(page)
    for cid in order:
        page.keyboard.press(str(shown.index(cid) + 1))
    page.keyboard.press("Enter")


def test_an_admin_makes_an_accepted_ranking_gold_and_sets_the_gold_settings(page, context, live_server, world):
    login(page, live_server, "bob")
    first = open_work(page, live_server)
    rank_as(page, on_screen_ids(page))
    wait_for_next(page, first)
    ranking = Ranking.objects.get(task_id=first, annotator=world["bob"])

    context.clear_cookies()
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/shapes/review/")
    item = page.locator(f"#ranking-{ranking.pk}")
    expect(item.locator("[data-action=make-gold]")).to_have_count(0)  # only an accepted ranking becomes gold
    item.locator("button[value=accept]").click()
    expect(page.locator(".messages")).to_contain_text(f"Ranking {ranking.pk} accepted")
    page.locator(f"#ranking-{ranking.pk} [data-action=make-gold]").click()
    expect(page.locator(".messages")).to_contain_text(f"Task {first} is a gold task now")
    expect(page.locator(f"#ranking-{ranking.pk} [data-field=gold]")).to_have_text("gold task")
    expect(page.locator(f"#ranking-{ranking.pk} [data-action=make-gold]")).to_have_count(0)
    task = RankingTask.objects.get(pk=first)
    assert task.state == RankingTask.State.GOLD and task.gold_ordering == ranking.ordering

    page.goto(f"{live_server.url}/projects/shapes/dashboard/")
    expect(page.locator("[data-field=gold-tasks]")).to_have_text("1")

    page.click("nav.project-nav a:text('Settings')")
    page.fill("#id_gold_threshold", "1.5")
    page.click("#settings-form button[type=submit]")
    expect(page.locator("#settings-form .errorlist")).to_be_visible()
    assert Project.objects.get(pk=world["project"].pk).gold_threshold == 0.7
    page.fill("#id_gold_threshold", "0.8")
    page.fill("#id_gold_rate", "0.25")
    page.check("#id_gold_pause")
    page.click("#settings-form button[type=submit]")
    expect(page.locator(".messages")).to_contain_text("saved")
    project = Project.objects.get(pk=world["project"].pk)
    assert (project.gold_threshold, project.gold_rate, project.gold_pause) == (0.8, 0.25, True)


def test_an_annotator_below_the_gold_threshold_is_paused_until_readmitted(page, context, live_server, world):
    project, alice, bob = world["project"], world["alice"], world["bob"]
    Project.objects.filter(pk=project.pk).update(gold_rate=1.0, gold_min_count=2, gold_threshold=0.7, gold_pause=True)
    project.refresh_from_db()
    golds = list(RankingTask.objects.filter(project=project).order_by("id")[:2])
    for t in golds:
        gold.task_mark_gold(project=project, task_id=t.pk, user=alice, ordering=[[c] for c in t.candidate_ids])
    known = {t.pk: list(t.candidate_ids) for t in golds}

    login(page, live_server, "bob")
    # Every task handed out is gold while one is left: bob reverses each known order.
    current = open_work(page, live_server)
    assert current in known
    rank_as(page, list(reversed(known[current])))
    current = wait_for_next(page, current)
    assert current in known
    rank_as(page, list(reversed(known[current])))
    paused = page.locator("#paused")
    expect(paused).to_be_visible()
    expect(page.locator("#work")).to_have_attribute("data-state", "paused")
    expect(page.locator("#paused-reason")).to_contain_text("gold accuracy 0.00 on 2 gold tasks")
    shot(page, "paused")
    assert Ranking.objects.filter(annotator=bob, task__in=golds).count() == 2  # both saved
    page.click("#btn-paused-recheck")  # still paused: the same screen, no task
    expect(paused).to_be_visible()

    annotator = context.new_page()
    context.clear_cookies()
    login(annotator, live_server, "alice")
    annotator.goto(f"{live_server.url}/projects/shapes/dashboard/")
    row = annotator.locator("#gold-table tr[data-annotator=bob]")
    expect(row.locator("[data-field=gold-status]")).to_contain_text("paused")
    expect(row.locator("[data-field=gold-accuracy]")).to_contain_text("0.00")
    row.locator("[data-action=readmit]").click()
    expect(annotator.locator(".messages")).to_contain_text("bob may take tasks again")
    assert Membership.objects.get(project=project, user=bob).paused_at is None
    annotator.close()

    context.clear_cookies()
    login(page, live_server, "bob")
    page.goto(f"{live_server.url}/projects/shapes/work/")
    expect(page.locator("#work")).to_have_attribute("data-state", "ready")
    assert task_id(page) not in known  # no gold task left for bob: an ordinary one
