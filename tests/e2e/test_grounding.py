"""Ranking box answers in a real browser: the demo's grounding and detection projects (manage.py demo --task …),
each candidate's boxes drawn over the image in its colour and scaled with it, hover and focus bringing one
candidate's boxes forward, ranking by keyboard and by drag as for captions, and the page reading the box format
exactly as the reward does (tests/engine/box_examples.json).

Personas: the demo's annotator1 ranks; its password comes from the demo's logins file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command
from playwright.sync_api import expect

from annotation.models import Candidate, Ranking, RankingTask
from rlhf.engine.rewards import parse_boxes
from rlhf.management.commands.demo import demo_logins
from tests.e2e.helpers import login, on_screen_ids, open_work, shot, wait_for_next

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = json.loads((Path(__file__).resolve().parents[1] / "engine" / "box_examples.json").read_text())


@pytest.fixture
def grounding(settings, tmp_path):
    """The demo's grounding project, 8 scenes with the world's box answers; annotator1 logged-in-able."""
    settings.VAR_DIR = tmp_path
    call_command("demo", task="grounding", images=8)
    return demo_logins()


def boxes_on_screen(page) -> dict[int, list[list[float]]]:
    """Candidate id → the boxes the overlay draws for it, in image pixels (the SVG's own units)."""
    return {int(k): v for k, v in page.locator(".box-overlay .cand-boxes").evaluate_all(
        """gs => Object.fromEntries(gs.map(g => [g.dataset.id, [...g.querySelectorAll('rect')].map(r =>
             [+r.getAttribute('x'), +r.getAttribute('y'), +r.getAttribute('x') + +r.getAttribute('width'),
              +r.getAttribute('y') + +r.getAttribute('height')])]))""").items()}


def test_the_page_parses_box_answers_exactly_as_the_reward_does(page, live_server, grounding):
    login(page, live_server, "annotator1", grounding["annotator1"])
    open_work(page, live_server, "demo-grounding")
    got = page.evaluate("""async (texts) => {
        const { parseBoxes } = await import('/static/js/boxes.js');
        return texts.map(t => parseBoxes(t).map(b => [b.label, b.box]));
    }""", [e["text"] for e in EXAMPLES])
    assert got == [e["boxes"] for e in EXAMPLES]


def test_each_candidates_box_is_drawn_in_its_colour_over_the_image_at_its_place(page, live_server, grounding):
    login(page, live_server, "annotator1", grounding["annotator1"])
    first = open_work(page, live_server, "demo-grounding")
    ids = on_screen_ids(page)
    texts = dict(Candidate.objects.filter(pk__in=ids).values_list("pk", "text"))
    drawn = boxes_on_screen(page)
    assert set(drawn) == set(ids)
    for cid in ids:
        assert drawn[cid] == [box for _, box in parse_boxes(texts[cid])], texts[cid]
    # A candidate without a box has no rectangle and says so on its card.
    for i, cid in enumerate(ids):
        card = page.locator("#pool .card").nth(i)
        if drawn[cid]:
            expect(card.locator(".no-box-badge")).to_have_count(0)
        else:
            expect(card.locator(".no-box-badge")).to_have_text("no box")

    # Colour: the rectangle's stroke is the colour of its card's number badge, and no two candidates share one.
    colours = []
    for i, cid in enumerate(ids):
        badge = page.locator("#pool .card").nth(i).locator(".num").evaluate("e => getComputedStyle(e).backgroundColor")
        group = page.locator(f'.box-overlay .cand-boxes[data-id="{cid}"]')
        if drawn[cid]:
            stroke = group.locator("rect").first.evaluate("e => getComputedStyle(e).stroke")
            assert stroke == badge
            expect(group.locator("text").first).to_have_text(str(i + 1))
        colours.append(badge)
    assert len(set(colours)) == len(ids)

    # Place: the box covers the same part of the displayed image as of the image itself, at fit and zoomed in.
    width = RankingTask.objects.get(pk=first).prompt.image.width
    cid = next(c for c in ids if drawn[c])
    x0, y0, x1, y1 = drawn[cid][0]

    def check_place():
        img = page.locator("#task-image").bounding_box()
        # The rectangle's geometry on screen, without its stroke (which a bounding box would include).
        sx0, sy0, sx1, sy1 = page.locator(f'.box-overlay .cand-boxes[data-id="{cid}"] rect').first.evaluate(
            """r => { const m = r.getScreenCTM(), b = r.getBBox();
                      return [m.a * b.x + m.e, m.d * b.y + m.f, m.a * (b.x + b.width) + m.e, m.d * (b.y + b.height) + m.f]; }""")
        k = img["width"] / width
        expected = (img["x"] + x0 * k, img["y"] + y0 * k, img["x"] + x1 * k, img["y"] + y1 * k)
        assert all(abs(a - b) < 1.5 for a, b in zip((sx0, sy0, sx1, sy1), expected, strict=True)), (
            (sx0, sy0, sx1, sy1), expected)

    check_place()
    page.locator("#viewer").focus()
    page.keyboard.press("+")
    page.keyboard.press("+")
    page.keyboard.press("ArrowLeft")
    check_place()
    page.keyboard.press("0")
    shot(page, "grounding")


def test_hover_and_focus_bring_one_candidates_box_forward(page, live_server, grounding):
    login(page, live_server, "annotator1", grounding["annotator1"])
    open_work(page, live_server, "demo-grounding")
    ids = on_screen_ids(page)
    groups = page.locator(".box-overlay .cand-boxes")
    page.locator("#pool .card").nth(1).hover()
    expect(page.locator(f'.box-overlay .cand-boxes[data-id="{ids[1]}"]')).to_have_class("cand-boxes active")
    expect(page.locator(".box-overlay .cand-boxes.dim")).to_have_count(len(ids) - 1)
    expect(groups.last).to_have_attribute("data-id", str(ids[1]))  # drawn last: on top of the others
    page.mouse.move(5, 5)  # away from the candidates: all equal again
    expect(page.locator(".box-overlay .cand-boxes.dim")).to_have_count(0)
    page.locator("#pool .card").nth(2).focus()
    expect(page.locator(f'.box-overlay .cand-boxes[data-id="{ids[2]}"]')).to_have_class("cand-boxes active")


def test_box_answers_rank_by_keyboard_and_by_drag_and_are_stored(page, live_server, grounding):
    login(page, live_server, "annotator1", grounding["annotator1"])
    first = open_work(page, live_server, "demo-grounding")
    c = on_screen_ids(page)
    for key in ("3", "1", "4", "t", "2"):  # T ties 4 with 1
        page.keyboard.press(key)
    expect(page.locator("#ranking li")).to_have_count(3)
    # The ranked chips carry their candidate's colour too; focusing a tied rank brings both boxes forward.
    page.locator("#ranking li").nth(1).focus()
    expect(page.locator(".box-overlay .cand-boxes.active")).to_have_count(2)
    page.keyboard.press("Enter")
    second = wait_for_next(page, first)
    assert Ranking.objects.get(task_id=first).ordering == [[c[2]], [c[0], c[3]], [c[1]]]

    d = on_screen_ids(page)
    drop_end = page.locator("#drop-end")
    cards = page.locator("#pool .card")
    for i in (1, 0, 3, 2):
        cards.nth(i).locator(".handle").drag_to(drop_end)
    expect(page.locator("#ranking li")).to_have_count(4)
    page.locator("#btn-submit").click()
    wait_for_next(page, second)
    assert Ranking.objects.get(task_id=second).ordering == [[d[1]], [d[0]], [d[3]], [d[2]]]


def test_detection_answers_draw_several_labelled_boxes(page, live_server, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    call_command("demo", task="detection", images=4)
    login(page, live_server, "annotator1", demo_logins()["annotator1"])
    task = open_work(page, live_server, "demo-detection")
    ids = on_screen_ids(page)
    texts = dict(Candidate.objects.filter(pk__in=ids).values_list("pk", "text"))
    drawn = boxes_on_screen(page)
    for i, cid in enumerate(ids):
        stated = parse_boxes(texts[cid])
        assert drawn[cid] == [box for _, box in stated]
        labels = page.locator(f'.box-overlay .cand-boxes[data-id="{cid}"] text').all_text_contents()
        assert labels == [f"{i + 1} {label}" for label, _ in stated]
    # Several boxes to a candidate: each of the 4 tasks of seed 0 has an answer with two or more (a scene's
    # objects, or a wrong answer's extra box), whichever task the queue serves first.
    assert max(len(v) for v in drawn.values()) >= 2, (task, texts)


def test_a_caption_project_draws_no_boxes(page, live_server, settings, tmp_path):
    """Numbers in a caption are no box: only box tasks get the overlay."""
    settings.VAR_DIR = tmp_path
    call_command("demo", images=4, candidates="world")
    login(page, live_server, "annotator1", demo_logins()["annotator1"])
    open_work(page, live_server, "demo-shapes")
    expect(page.locator(".box-overlay")).to_have_count(0)
    expect(page.locator("#work")).not_to_have_class("work box-task")

