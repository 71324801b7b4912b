"""The promotion gate in a real browser: a round whose policy the gate held back shows why on its page and on
the versions page, with the over-optimisation warning; an admin makes it active anyway.

The round is written directly (tests/rlhf/helpers.py) with the held-out figures the engine's evaluate
would have written, so what the browser shows is deterministic.
"""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from rlhf.models import ModelVersion
from tests import factories as f
from tests.e2e.helpers import login, shot
from tests.rlhf.helpers import rank
from tests.rlhf.test_heldout_views import held_back_round

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def gated_world(transactional_db, tmp_path):
    alice, bob = f.user("alice", is_staff=True), f.user("bob")
    proj = f.project("shapes", k=4, admins=[alice], annotators=[bob])
    rank(proj, bob, 6)
    world = {"alice": alice, "bob": bob, "project": proj}
    round_run, policy = held_back_round(world)
    ModelVersion.objects.filter(pk=policy.pk).update(path=str(tmp_path))  # its files exist: it may be made active
    return {**world, "round": round_run, "policy": policy}


def test_a_held_back_policy_shows_why_and_an_admin_makes_it_active_anyway(page, live_server, gated_world):
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/runs/{gated_world['round'].pk}/")
    card = page.locator("#heldout")
    expect(card.locator(".gate-decision")).to_contain_text("Held back by the gate")
    expect(card.locator(".gate-reason")).to_contain_text("worse than base beyond noise")
    expect(card.locator("tr[data-figure=verifiable]")).to_contain_text("[-0.180, -0.060] n=40")
    expect(card.get_by_role("alert").filter(has_text="Over-optimisation monitor")).to_be_visible()
    shot(page, "run-heldout", full_page=True)
    if os.environ.get("LENSLOOP_SHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["LENSLOOP_SHOT_DIR"], "run-heldout.png"), full_page=True)

    page.goto(f"{live_server.url}/projects/shapes/training/versions/")
    expect(page.locator("#heldout-versions tr[data-version=base]")).to_contain_text("0.531")
    expect(page.locator("#heldout-versions tr[data-version=policy-v1]")).to_contain_text("Held back by the gate")
    expect(page.locator("#heldout .heldout-details").first).to_contain_text("over-optimisation warning")
    version = page.locator("#v-policy-v1")
    expect(version.locator(".gate-decision")).to_contain_text("A project admin may still make it active.")
    if os.environ.get("LENSLOOP_SHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["LENSLOOP_SHOT_DIR"], "versions-heldout.png"), full_page=True)
    version.get_by_role("button", name="Make active").click()
    expect(page.locator(".messages")).to_contain_text("policy-v1 is now the active policy.")
    expect(page.locator("#v-policy-v1 .gate-reason")).to_contain_text("Made active by hand")
    assert ModelVersion.objects.get(project=gated_world["project"], kind="policy", active=True).label == "policy-v1"
