"""The annotator's ranking page in a real browser: keyboard, ties, drag and drop, skip, flags, the next
task, a lost lease, untrusted text, and twenty tasks without the mouse.

Personas (see conftest.world): bob annotates project "shapes" (K=4, 25 tasks), alice administers it.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from annotation.models import Assignment, PreferencePair, Ranking, RankingTask
from annotation.services import queue
from annotation.services.projects import member_set
from tests import factories as f
from tests.e2e.helpers import login, on_screen_ids, open_work, shot, task_id, wait_for_next

pytestmark = pytest.mark.django_db(transaction=True)


# The page's submits: POST /api/tasks/<id>/submit/?next=1 (a glob like "**/submit/" leaves out the query).
SUBMITS = re.compile(r"/api/tasks/\d+/submit/(\?|$)")


def pair_set(ranking: Ranking) -> set[tuple[int, int, int]]:
    return set(PreferencePair.objects.filter(ranking=ranking).values_list("chosen_id", "rejected_id", "margin"))


def test_keyboard_ranking_with_a_tie_is_stored_with_its_pairs(page, live_server, world):
    """2, 1, T, 4, 3, Enter: card 2 first, cards 1 and 4 tied second… stored exactly, pairs and all."""
    login(page, live_server, "bob")
    shot(page, "home")
    first = open_work(page, live_server)
    c = on_screen_ids(page)
    page.keyboard.press("2")
    page.keyboard.press("1")
    page.keyboard.press("4")
    page.keyboard.press("t")  # ties 4 (the last pick) with 1
    page.keyboard.press("3")
    expect(page.locator("#ranking li")).to_have_count(3)
    expect(page.locator("#ranking li").nth(1)).to_contain_text("2nd (tied)")
    expect(page.locator("#pool .card").nth(3).locator(".rank-badge")).to_have_text("2nd (tied)")
    page.keyboard.press("Backspace")  # undo the 3 …
    expect(page.locator("#ranking li")).to_have_count(2)
    page.keyboard.press("3")  # … and place it again
    shot(page, "ranking")
    page.keyboard.press("Enter")
    second = wait_for_next(page, first)

    assert second != first
    ranking = Ranking.objects.get(task_id=first, annotator=world["bob"])
    assert ranking.ordering == [[c[1]], [c[0], c[3]], [c[2]]]
    assert pair_set(ranking) == {
        (c[1], c[0], 1), (c[1], c[3], 1), (c[1], c[2], 2), (c[0], c[2], 1), (c[3], c[2], 1),
    }
    assert Assignment.objects.get(task_id=first, annotator=world["bob"]).state == Assignment.State.SUBMITTED
    expect(page.locator("#done-today")).to_have_text("1")


def test_drag_and_drop_ranks_and_ties(page, live_server, world):
    """Cards dragged to the ranking make new ranks; one dropped on a rank ties with it."""
    login(page, live_server, "bob")
    first = open_work(page, live_server)
    c = on_screen_ids(page)
    cards = page.locator("#pool .card")
    drop_end = page.locator("#drop-end")
    cards.nth(2).drag_to(drop_end)
    cards.nth(0).drag_to(drop_end)
    expect(page.locator("#ranking li")).to_have_count(2)
    cards.nth(3).drag_to(page.locator("#ranking li").nth(1))  # the middle of 2nd: tie with card 1
    expect(page.locator("#ranking li")).to_have_count(2)
    expect(page.locator("#ranking li").nth(1)).to_contain_text("tied")
    cards.nth(1).drag_to(drop_end)
    # Reorder inside the ranking: drag the 1st rank's chip below the last rank.
    last = page.locator("#ranking li").nth(2)
    box = last.bounding_box()
    page.locator("#ranking li").nth(0).locator(".chip").drag_to(last, target_position={"x": box["width"] / 2, "y": box["height"] - 2})
    expect(page.locator("#ranking li").nth(2)).to_contain_text(page.locator("#pool .card").nth(2).locator(".text").inner_text())
    submit = page.locator("#btn-submit")
    submit.dblclick()  # a double click must never submit twice
    wait_for_next(page, first)

    assert Ranking.objects.filter(task_id=first).count() == 1
    ranking = Ranking.objects.get(task_id=first)
    assert ranking.ordering == [[c[0], c[3]], [c[1]], [c[2]]]
    assert Ranking.objects.filter(annotator=world["bob"]).count() == 1


def test_skip_hands_the_task_back_and_shows_the_next(page, live_server, world):
    login(page, live_server, "bob")
    first = open_work(page, live_server)
    page.keyboard.press("1")
    page.keyboard.press("s")
    second = wait_for_next(page, first)
    assert second != first
    assert Assignment.objects.get(task_id=first, annotator=world["bob"]).state == Assignment.State.SKIPPED
    assert not Ranking.objects.filter(task_id=first).exists()
    expect(page.locator("#ranking li")).to_have_count(0)  # a fresh task starts with an empty ranking


def test_flags_and_rationale_are_stored_with_the_ranking(page, live_server, world):
    login(page, live_server, "bob")
    first = open_work(page, live_server)
    page.keyboard.press("f")
    expect(page.locator("#flags")).to_be_visible()
    expect(page.locator("#flags input").first).to_be_focused()
    page.keyboard.press("Space")  # all bad
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Space")  # image unclear
    page.keyboard.press("Escape")
    expect(page.locator("#flags")).to_be_hidden()
    page.keyboard.press("r")
    expect(page.locator("#rationale")).to_be_focused()
    page.keyboard.type("All wrong; 1 and 2 equally so. <b>bold</b>")
    page.keyboard.press("Escape")
    for key in ["1", "2", "t", "3", "4", "Enter"]:
        page.keyboard.press(key)
    wait_for_next(page, first)

    ranking = Ranking.objects.get(task_id=first)
    assert (ranking.flag_all_bad, ranking.flag_unsafe, ranking.flag_image_unclear) == (True, False, True)
    assert ranking.rationale == "All wrong; 1 and 2 equally so. <b>bold</b>"
    assert len(ranking.ordering) == 3
    assert ranking.time_spent_ms is not None and ranking.time_spent_ms > 0


def test_an_incomplete_ranking_is_not_sent(page, live_server, world):
    login(page, live_server, "bob")
    first = open_work(page, live_server)
    page.keyboard.press("1")
    page.keyboard.press("Enter")
    expect(page.locator("#alert")).to_contain_text("3 left")
    assert task_id(page) == first
    assert not Ranking.objects.exists()


def test_a_lost_lease_says_so_and_keeps_the_ranking_on_screen(page, live_server, world):
    """The lease ran out and the task went to someone else: 409, said plainly, the work still there."""
    dave = f.user("dave")
    member_set(project=world["project"], user=dave, role="annotator")
    login(page, live_server, "bob")
    first = open_work(page, live_server)
    for key in ["3", "1", "t", "2", "4"]:
        page.keyboard.press(key)
    page.locator("#rationale").fill("my careful reasoning")
    page.keyboard.press("Escape")
    # Meanwhile: bob's lease runs out, and dave is handed the task.
    Assignment.objects.filter(task_id=first, annotator=world["bob"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    RankingTask.objects.filter(pk__lt=first).update(state=RankingTask.State.CLOSED)
    RankingTask.objects.filter(pk__gt=first).update(priority=-1)
    taken = queue.next_task(annotator=dave, project=world["project"])
    assert taken.task_id == first

    page.keyboard.press("Enter")
    alert = page.locator("#alert")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("went to another annotator")
    expect(alert).to_contain_text("Your ranking is still on screen")
    expect(page.locator("#work")).to_have_attribute("data-error", "lease_lost")
    assert task_id(page) == first
    expect(page.locator("#ranking li")).to_have_count(3)
    expect(page.locator("#rationale")).to_have_value("my careful reasoning")
    shot(page, "lease-lost")
    assert not Ranking.objects.filter(task_id=first).exists()

    page.keyboard.press("n")  # on to the next task
    wait_for_next(page, first)


def eventually(page, check, *, seconds: float = 10.0) -> None:
    """Wait (letting the browser run) until ``check()`` holds: for what the server does after a page is gone."""
    for _ in range(int(seconds * 10)):
        if check():
            return
        page.wait_for_timeout(100)
    assert check()


def state_of(task: int, annotator) -> str:
    return Assignment.objects.get(task_id=task, annotator=annotator).state


def test_an_unreachable_server_says_reconnecting_and_the_ranking_is_stored_once(page, live_server, world):
    """Refused and 503 for as long as the server is "down", then stored by the server with its answer lost
    (a 502 from the proxy): the page says it is reconnecting, keeps the ranking frozen on screen, and
    resends the same client_uuid. The server stays down until the test has seen all that, so a slow
    machine cannot run through the retries before the page is looked at.

    The route is in place before the page loads and armed just before Enter: a route added to a page
    that is already running let a submit through once on a loaded CI machine."""
    sent: list[str] = []
    answered: list[str] = []
    server = {"armed": False, "down": True, "answer_lost": False}

    def flaky(route):
        if not server["armed"]:
            route.continue_()
            return
        sent.append(route.request.post_data_json["client_uuid"])
        if server["down"]:
            if len(sent) % 2:
                answered.append("refused")
                route.abort("connectionrefused")
            else:
                answered.append("503")
                route.fulfill(status=503, content_type="text/html", body="<h1>Service Unavailable</h1>")
        elif not server["answer_lost"]:
            server["answer_lost"] = True
            stored = route.fetch()  # the server stores it; the answer never reaches the page
            assert stored.status == 201
            answered.append("stored, 502")
            route.fulfill(status=502, content_type="text/html", body="<h1>Bad Gateway</h1>")
        else:
            answered.append("passed on")
            route.continue_()

    page.route(SUBMITS, flaky)
    login(page, live_server, "bob")
    first = open_work(page, live_server)
    c = on_screen_ids(page)
    for key in ["2", "1", "3", "4"]:
        page.keyboard.press(key)
    # On a loaded machine the page may still be rendering the picks: submit only once all four show.
    expect(page.locator("#ranking li")).to_have_count(4)
    expect(page.locator("#work")).not_to_have_attribute("aria-busy", "true")
    server["armed"] = True
    page.keyboard.press("Enter")
    alert = page.locator("#alert")
    expect(alert).to_contain_text("Reconnecting")
    expect(alert).to_contain_text("stored once")
    expect(page.locator("#work")).to_have_attribute("data-error", "reconnecting")
    page.keyboard.press("Backspace")  # frozen while it is being sent: a retry resends what was sent
    expect(page.locator("#ranking li")).to_have_count(4)
    shot(page, "reconnecting")
    # Both kinds of outage (refused, then 503) before the server comes back.
    page.wait_for_function("() => Number(document.getElementById('work').dataset.attempts) >= 2")
    server["down"] = False
    second = wait_for_next(page, first, timeout=30_000)  # the next try comes after the backoff of the last

    assert answered[:2] == ["refused", "503"] and answered[-2:] == ["stored, 502", "passed on"], answered
    assert len(set(sent)) == 1, sent
    assert second != first
    ranking = Ranking.objects.get(task_id=first)
    assert ranking.ordering == [[c[1]], [c[0]], [c[2]], [c[3]]]
    assert str(ranking.client_uuid) == sent[0]
    assert Ranking.objects.filter(annotator=world["bob"]).count() == 1
    expect(alert).to_be_hidden()
    expect(page.locator("#done-today")).to_have_text("1")


def test_enter_tries_again_at_once_while_reconnecting(page, live_server, world):
    """The waits between tries grow (0.5, 1, 2, 4, 8 s …); Enter does not sit them out."""
    offline = {"on": False}
    page.route(SUBMITS, lambda route: route.abort("internetdisconnected") if offline["on"] else route.continue_())
    login(page, live_server, "bob")
    first = open_work(page, live_server)
    for key in ["1", "2", "3", "4"]:
        page.keyboard.press(key)
    expect(page.locator("#ranking li")).to_have_count(4)
    expect(page.locator("#work")).not_to_have_attribute("aria-busy", "true")
    offline["on"] = True
    page.keyboard.press("Enter")
    expect(page.locator("#alert")).to_contain_text("Reconnecting")
    expect(page.locator("#btn-retry")).to_be_visible()
    # The fifth failure waits 8 s ± 20 % before its own next try: at least 6.4 s.
    expect(page.locator("#work")).to_have_attribute("data-attempts", "5", timeout=15_000)
    offline["on"] = False
    page.keyboard.press("Enter")
    expect(page.locator("#work")).not_to_have_attribute("data-task-id", str(first), timeout=5_000)
    assert Ranking.objects.filter(task_id=first).count() == 1


def test_leaving_an_untouched_task_gives_its_lease_back(page, live_server, world):
    """The annotator leaves without ranking anything; a better task arrives (a new policy's candidates);
    back on the ranking page they get that one, not the stale lease."""
    login(page, live_server, "bob")
    first = open_work(page, live_server)
    page.goto(f"{live_server.url}/")
    eventually(page, lambda: state_of(first, world["bob"]) == Assignment.State.RELEASED)

    better = f.task(world["project"], priority=5, source="policy-v3")
    assert open_work(page, live_server) == better.pk


def test_closing_the_tab_of_an_untouched_task_gives_its_lease_back(context, live_server, world):
    page = context.new_page()
    login(page, live_server, "bob")
    first = open_work(page, live_server)
    page.close()
    eventually(context.new_page(), lambda: state_of(first, world["bob"]) == Assignment.State.RELEASED)


def test_a_touched_task_keeps_its_lease_and_a_reload_brings_its_ranking_back(page, live_server, world):
    login(page, live_server, "bob")
    first = open_work(page, live_server)
    c = on_screen_ids(page)
    for key in ["2", "1", "t"]:
        page.keyboard.press(key)
    page.keyboard.press("f")
    page.keyboard.press("Space")  # all bad
    page.keyboard.press("Escape")
    page.locator("#rationale").fill("half done")
    expect(page.locator("#ranking li")).to_have_count(1)

    page.reload()
    expect(page.locator("#work")).to_have_attribute("data-state", "ready")
    assert task_id(page) == first
    assert state_of(first, world["bob"]) == Assignment.State.ACTIVE
    expect(page.locator("#alert")).to_contain_text("unsent ranking")
    expect(page.locator("#ranking li")).to_have_count(1)
    expect(page.locator("#ranking li").first).to_contain_text("1st (tied)")
    expect(page.locator("#rationale")).to_have_value("half done")
    expect(page.locator("#btn-flags")).to_have_class("on")

    page.goto(f"{live_server.url}/")  # leaving a touched task keeps its lease
    page.goto(f"{live_server.url}/projects/shapes/work/")
    expect(page.locator("#work")).to_have_attribute("data-state", "ready")
    assert task_id(page) == first
    assert state_of(first, world["bob"]) == Assignment.State.ACTIVE
    page.keyboard.press("3")
    page.keyboard.press("4")
    page.keyboard.press("Enter")
    wait_for_next(page, first)
    ranking = Ranking.objects.get(task_id=first)
    assert ranking.ordering == [[c[1], c[0]], [c[2]], [c[3]]]
    assert (ranking.flag_all_bad, ranking.rationale) == (True, "half done")
    assert page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith('lensloop:draft:'))") == []


XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


@pytest.mark.parametrize("csp", [True, False], ids=["with-csp", "escaping-alone"])
def test_untrusted_text_is_shown_as_text_and_runs_nothing(browser, live_server, world, csp):
    """Candidates, the prompt and the instructions carry markup: it appears literally and never runs,
    even with the Content-Security-Policy bypassed (escaping alone must hold)."""
    proj = world["project"]
    RankingTask.objects.filter(project=proj).update(state=RankingTask.State.CLOSED)
    evil = f.task(proj, texts=[XSS, "fine <b>caption</b>", "x\" onmouseover=\"window.__xss=3", "plain"], priority=5)
    evil.prompt.text = "Describe </p><script>window.__xss = 4</script>"
    evil.prompt.save()
    proj.instructions = "Be careful.\n\n<script>window.__xss = 5</script><img src=x onerror=\"window.__xss=6\"> [link](javascript:alert(1))"
    proj.save()

    context = browser.new_context(viewport={"width": 1366, "height": 860}, bypass_csp=not csp)
    try:
        page = context.new_page()
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        login(page, live_server, "bob")
        open_work(page, live_server)
        texts = page.locator("#pool .card .text").all_inner_texts()
        assert XSS in texts
        assert "fine <b>caption</b>" in texts
        expect(page.locator("#prompt")).to_have_text("Describe </p><script>window.__xss = 4</script>")
        page.keyboard.press("i")
        page.locator("#pool .card").nth(0).hover()
        page.keyboard.press("1")  # the ranking list shows candidate texts too
        page.keyboard.press("2")
        page.keyboard.press("3")
        page.keyboard.press("4")
        expect(page.locator("#ranking li")).to_have_count(4)
        page.locator("#ranking .chip").nth(2).hover()
        assert page.evaluate("() => window.__xss") is None
        assert page.locator("#pool img, #ranking img, #prompt img, .markdown img").count() == 0
        assert page.locator("main script").count() == 1  # only the JSON config block
        assert page.locator(".markdown a[href^=javascript]").count() == 0
        assert not dialogs
        if csp:
            shot(page, "xss-escaped")
    finally:
        context.close()


def test_the_empty_queue_says_so(page, live_server, world):
    RankingTask.objects.filter(project=world["project"]).update(state=RankingTask.State.DONE)
    login(page, live_server, "bob")
    page.goto(f"{live_server.url}/projects/shapes/work/")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#empty-title")).to_be_focused()
    expect(page.locator("#work")).to_be_hidden()
    shot(page, "queue-empty")


def test_a_warning_comes_before_the_lease_expires(page, live_server, world):
    page.clock.install()
    login(page, live_server, "bob")
    open_work(page, live_server)
    expect(page.locator("#lease-warning")).to_be_hidden()
    page.clock.fast_forward("28:30")  # the lease is 30 minutes; the warning shows in the last 2
    expect(page.locator("#lease-warning")).to_be_visible()
    expect(page.locator("#lease-warning")).to_contain_text("ends in 1:")
    page.clock.fast_forward("02:00")
    expect(page.locator("#lease-warning")).to_contain_text("has run out")


def top_task_with_image(project, width: int, height: int) -> RankingTask:
    """A task ahead of all others in the queue whose picture is ``width`` × ``height`` pixels."""
    from annotation.images import check_image, store_image
    from annotation.models import Image

    checked = check_image(f.png_bytes(color=(30, 120, 200), size=(width, height)))
    store_image(checked)
    image, _ = Image.objects.get_or_create(
        sha256=checked.sha256,
        defaults=dict(file=checked.relpath, format=checked.format, width=checked.width, height=checked.height,
                      size_bytes=checked.size_bytes),
    )
    task = f.task(project, priority=10)
    task.prompt.image = image
    task.prompt.save(update_fields=["image"])
    return task


@pytest.mark.parametrize("dpr", [1, 2])
def test_z_shows_a_small_image_at_one_image_pixel_per_css_pixel(browser, live_server, world, dpr):
    """A 128 px image fits a pane four times its size; Z ("100%") shows it 128 CSS pixels wide and
    says 100% — at device pixel ratio 1 and 2 alike — and Z again fits it."""
    top_task_with_image(world["project"], 128, 128)
    context = browser.new_context(viewport={"width": 1366, "height": 860}, device_scale_factor=dpr)
    try:
        page = context.new_page()
        login(page, live_server, "bob")
        open_work(page, live_server)
        image, level = page.locator("#task-image"), page.locator("#zoom-level")
        fitted = image.bounding_box()["width"]
        assert fitted > 256, f"the pane should be far wider than the image; fitted at {fitted}px"
        expect(level).to_have_text(f"{round(fitted / 128 * 100)}%")

        page.keyboard.press("z")
        expect(level).to_have_text("100%")
        box = image.bounding_box()
        assert (round(box["width"], 1), round(box["height"], 1)) == (128.0, 128.0)
        expect(page.locator("#zoom-full")).to_have_text("100%")

        page.keyboard.press("z")
        expect(level).to_have_text(f"{round(fitted / 128 * 100)}%")
        assert abs(image.bounding_box()["width"] - fitted) < 0.5
    finally:
        context.close()


def test_twenty_tasks_with_the_keyboard_alone(page, live_server, world):
    """Done when: an annotator works through 20 tasks without touching the mouse."""
    page.goto(f"{live_server.url}/accounts/login/")
    # The username field has autofocus; on a busy machine keys typed before it took focus were lost.
    page.wait_for_function("() => document.activeElement && document.activeElement.name === 'username'")
    page.keyboard.type("bob")
    page.keyboard.press("Tab")
    page.keyboard.type("pw-bob")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/")
    # From the home page to the ranking page by keyboard: Tab to "Start ranking", Enter.
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.textContent.trim()") == "Start ranking":
            break
    page.keyboard.press("Enter")
    expect(page.locator("#work")).to_have_attribute("data-state", "ready")

    seen = []
    plans = [["1", "2", "3", "4"], ["4", "3", "t", "2", "1"], ["2", "1", "t", "4", "t", "3"], ["3", "1", "2", "Backspace", "4", "2"]]
    for i in range(20):
        current = task_id(page)
        seen.append(current)
        for key in plans[i % len(plans)]:
            page.keyboard.press(key)
        if i == 7:
            page.keyboard.press("f")
            page.keyboard.press("Space")
            page.keyboard.press("Escape")
        page.keyboard.press("Enter")
        if i < 19:
            wait_for_next(page, current)
    expect(page.locator("#done-today")).to_have_text("20")

    rankings = Ranking.objects.filter(annotator=world["bob"])
    assert rankings.count() == 20
    assert set(rankings.values_list("task_id", flat=True)) == set(seen)
    assert rankings.filter(flag_all_bad=True).count() == 1
    group_sizes = sorted(len(r.ordering) for r in rankings)
    assert (group_sizes.count(4), group_sizes.count(3), group_sizes.count(2)) == (10, 5, 5)
    assert PreferencePair.objects.filter(ranking__annotator=world["bob"]).count() == 5 * 6 + 5 * 5 + 5 * 3 + 5 * 6
