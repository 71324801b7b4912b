"""The Training page's editor of the policy's composed reward in a real browser: an admin adds terms with the
keyboard-reachable buttons, picks a built-in (its parameters example appears as the placeholder), writes a
function's dotted path, and saves; a term whose function does not import comes back with the error on its row
and nothing saved; removing a row and saving again keeps the rest. The check runs the engine's dry run in a
real subprocess (rlhf.services.check_reward)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from rlhf.models import LoopSettings
from tests import factories as f
from tests.e2e.helpers import login
from tests.rlhf.helpers import rank

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def reward_world(transactional_db, settings, tmp_path, monkeypatch):
    settings.LENSLOOP_WORKERS_HAVE_CUDA = False
    (tmp_path / "teamrewards.py").write_text("def short(prompts, completions, **kwargs):\n"
                                             "    return [float(len(c.split()) <= 8) for c in completions]\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # where the workers would find the team's code
    alice = f.user("alice")
    proj = f.project("shapes", k=4, admins=[alice], annotators=[f.user("bob")])
    rank(proj, alice, 2)
    return proj


def saved(project):
    return LoopSettings.objects.get(project=project).round_params["reward"]


def test_an_admin_composes_the_policy_reward(page, live_server, reward_world):
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/shapes/training/")
    expect(page.locator("#reward-formula")).to_have_text("reward_model")
    rows = page.locator("#reward-rows tr.reward-term")
    expect(rows).to_have_count(2)  # the reward model, and an empty row to fill in

    # Second row: banned words, its parameters example as the placeholder.
    second = rows.nth(1)
    second.get_by_label("Reward", exact=True).select_option("banned_words")
    params = second.get_by_label("Parameters (JSON)")
    expect(params).to_have_attribute("placeholder", '{"words": ["very", "lovely"], "penalty": 1}')
    second.get_by_label("Weight").fill("0.5")
    params.fill('{"words": ["lovely"]}')

    # A third row for the team's own function, which does not import under the name typed first.
    page.click("#reward-add")
    third = rows.nth(2)
    expect(third.get_by_label("Reward", exact=True)).to_be_focused()
    expect(third.locator(".term-custom")).to_be_hidden()
    third.get_by_label("Reward", exact=True).select_option("custom")
    custom = third.get_by_label("Dotted path of your reward function")
    expect(custom).to_be_visible()
    expect(custom).to_be_focused()
    custom.fill("teamrewards:shortt")
    third.get_by_label("Weight").fill("0.2")
    page.click("#save-reward")

    third = page.locator("#reward-rows tr.reward-term").nth(2)
    expect(third.locator(".errorlist")).to_contain_text("module 'teamrewards' has no 'shortt'")
    assert "reward" not in (LoopSettings.objects.filter(project=reward_world).first() or LoopSettings()).round_params
    expect(third.get_by_label("Dotted path of your reward function")).to_have_value("teamrewards:shortt")  # as typed
    third.get_by_label("Dotted path of your reward function").fill("teamrewards:short")
    page.click("#save-reward")

    expect(page.locator(".messages")).to_contain_text("Saved: PPO and GRPO rounds reward the policy with")
    expect(page.locator("#reward-formula")).to_have_text(
        'reward_model + 0.5 × banned_words(words=["lovely"]) + 0.2 × teamrewards:short')
    assert saved(reward_world) == [{"reward": "reward_model", "weight": 1.0},
                                   {"reward": "banned_words", "weight": 0.5, "params": {"words": ["lovely"]}},
                                   {"reward": "teamrewards:short", "weight": 0.2}]

    # Remove the banned words and save again.
    page.locator("#reward-rows tr.reward-term").nth(1).get_by_role("button", name="Remove this term").click()
    page.click("#save-reward")
    expect(page.locator("#reward-formula")).to_have_text("reward_model + 0.2 × teamrewards:short")
    assert [t["reward"] for t in saved(reward_world)] == ["reward_model", "teamrewards:short"]
