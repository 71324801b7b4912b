"""A project's composed reward (the policy's reward in PPO and GRPO rounds) through the Training page's editor,
the loop-settings API and the round API: saved only after the engine's checks and a dry run of every term in an
engine process (rlhf.services.check_reward), errors on the row they name, nothing saved or queued on a bad spec.

No worker runs here: a launched round stays queued (these tests never commit).
"""

from __future__ import annotations

import textwrap

import pytest
from rest_framework.test import APIClient

from rlhf.engine.round import RoundConfig, ground_truth_reward
from rlhf.models import LoopSettings, TrainingRun
from rlhf.services import LoopError, loop_settings_set, start_round
from tests import factories as f
from tests.rlhf.helpers import client_for, rank

pytestmark = pytest.mark.django_db


@pytest.fixture
def team_rewards(tmp_path, monkeypatch):
    """User reward functions a team installs where the workers run (the check's engine process inherits
    PYTHONPATH, as a worker's environment would carry it)."""
    pkg = tmp_path / "teamrewards"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rules.py").write_text(textwrap.dedent("""
        def short(prompts, completions, **kwargs):
            return [float(len(c.split()) <= 8) for c in completions]

        def needs_labels(prompts, completions, ground_truth, **kwargs):
            return [float(gt["label"] == c) for c, gt in zip(completions, ground_truth)]
    """))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return tmp_path


@pytest.fixture
def world(settings):
    settings.LENSLOOP_WORKERS_HAVE_CUDA = False
    alice, bob = f.user("alice"), f.user("bob")
    proj = f.project("shapes", k=4, admins=[alice], annotators=[bob])
    rank(proj, bob, 4)
    return {"alice": alice, "bob": bob, "project": proj}


def rows(*terms) -> dict:
    """The editor's POST: one row per (reward, weight, params[, custom path])."""
    data = {"term-reward": [], "term-custom": [], "term-weight": [], "term-params": []}
    for term in terms:
        reward, weight, params, custom = (*term, "")[:4]
        data["term-reward"].append(reward)
        data["term-custom"].append(custom)
        data["term-weight"].append(weight)
        data["term-params"].append(params)
    return data


def saved_reward(project):
    row = LoopSettings.objects.filter(project=project).first()
    return None if row is None else row.round_params.get("reward")


def test_the_editor_saves_a_composed_reward_and_the_page_says_it(world, team_rewards):
    alice = client_for(world["alice"])
    page = alice.get("/projects/shapes/training/")
    assert b'id="reward-form"' in page.content and b'<strong id="reward-formula">reward_model</strong>' in page.content
    response = alice.post("/projects/shapes/training/reward/", rows(
        ("reward_model", "1", ""), ("banned_words", "0.5", '{"words": ["very"]}'),
        ("custom", "0.2", "", "teamrewards.rules:short"), ("", "1", "")))  # the empty row is skipped
    assert response.status_code == 302 and response["Location"].endswith("#reward-title")
    assert saved_reward(world["project"]) == [{"reward": "reward_model", "weight": 1.0},
                                              {"reward": "banned_words", "weight": 0.5, "params": {"words": ["very"]}},
                                              {"reward": "teamrewards.rules:short", "weight": 0.2}]
    page = alice.get("/projects/shapes/training/")
    formula = 'reward_model + 0.5 × banned_words(words=[&quot;very&quot;]) + 0.2 × teamrewards.rules:short'
    assert formula in page.content.decode()
    assert 'value="teamrewards.rules:short"' in page.content.decode()  # the custom row comes back as typed
    # A round launched from the page (or the API) rewards its policy with it.
    round_run = start_round(project=world["project"], enqueue=False)
    cfg = RoundConfig(**{k: v for k, v in round_run.config.items()})
    policy = cfg.policy_config(base_model="demo", seed=0, prompts_file="p", reward_model_path="rm")
    assert policy["reward"] == saved_reward(world["project"]) and policy["reward_model_path"] == "rm"


@pytest.mark.parametrize("posted, row, message", [
    (rows(("reward_model", "1", ""), ("custom", "1", "", "teamrewards.nothere:fn")), 1,
     "&#x27;teamrewards.nothere:fn&#x27; does not import: ModuleNotFoundError"),
    (rows(("reward_model", "1", ""), ("custom", "1", "", "teamrewards.rules:needs_labels")), 1,
     "raised TypeError on a one-sample dry run"),
    (rows(("reward_model", "1", ""), ("length", "abc", "")), 1, "weight: &#x27;abc&#x27; is not a number"),
    (rows(("banned_words", "1", '{"words": ["a"'),), 0, "params: not valid JSON"),
    (rows(("banned_words", "1", ""),), 0, "banned_words needs [&#x27;words&#x27;]"),
    (rows(("custom", "1", ""),), 0, "give the function&#x27;s dotted path"),
])
def test_a_bad_term_is_refused_on_its_row_and_nothing_is_saved(world, team_rewards, posted, row, message):
    loop_settings_set(project=world["project"], round_params={"reward": [{"reward": "reward_model"},
                                                                           {"reward": "length", "params": {"max": 20}}]})
    before = saved_reward(world["project"])
    response = client_for(world["alice"]).post("/projects/shapes/training/reward/", posted)
    assert response.status_code == 400
    html = response.content.decode()
    body = html[html.index('id="reward-rows"'):html.index('id="reward-row-template"')]
    row_html = body.split('<tr class="reward-term')[row + 1]
    assert "has-error" in row_html.split(">")[0] and message in row_html, row_html
    assert saved_reward(world["project"]) == before


def test_annotators_cannot_change_the_reward(world):
    response = client_for(world["bob"]).post("/projects/shapes/training/reward/", rows(("length", "1", "")))
    assert response.status_code == 403 and saved_reward(world["project"]) is None
    assert b'id="reward-form"' not in client_for(world["bob"]).get("/projects/shapes/training/").content


def test_api_refuses_bad_terms_naming_them_and_queues_nothing(world, team_rewards):
    api = APIClient()
    api.force_authenticate(world["alice"])
    bad = api.patch("/api/projects/shapes/loop-settings/",
                    {"round_params": {"reward": [{"reward": "reward_model"}, {"reward": "length", "weight": "x"}]}},
                    format="json")
    assert bad.status_code == 400 and "reward[1].weight: 'x' is not a number" in bad.json()["detail"]
    bad = api.post("/api/projects/shapes/rounds/", {"algorithm": "grpo", "reward": [
        {"reward": "teamrewards.rules:needs_labels"}]}, format="json")
    assert bad.status_code == 400 and "reward[0] (teamrewards.rules:needs_labels) raised" in bad.json()["detail"]
    bad = api.post("/api/projects/shapes/rounds/", {"algorithm": "dpo", "reward": [{"reward": "length"}]}, format="json")
    assert bad.status_code == 400 and "needs algorithm ppo or grpo" in bad.json()["detail"]
    assert not TrainingRun.objects.exists()
    ok = api.post("/api/projects/shapes/rounds/", {"algorithm": "ppo", "reward": [
        {"reward": "reward_model"}, {"reward": "teamrewards.rules:short", "weight": 0.3}]}, format="json")
    assert ok.status_code == 201, ok.json()
    assert TrainingRun.objects.get(pk=ok.json()["id"]).config["reward"][1]["reward"] == "teamrewards.rules:short"


def test_a_saved_function_that_breaks_later_stops_the_next_round_before_it_is_queued(world, team_rewards):
    loop_settings_set(project=world["project"], round_params={"reward": [{"reward": "teamrewards.rules:short"}],
                                                              "algorithm": "grpo"})
    (team_rewards / "teamrewards" / "rules.py").write_text("def short(prompts, completions, **kw):\n    return []\n")
    with pytest.raises(LoopError, match=r"reward\[0\] \(teamrewards.rules:short\) returned 0 value\(s\) for 1"):
        start_round(project=world["project"], params={"algorithm": "grpo"}, enqueue=False)
    assert not TrainingRun.objects.exists()


def test_the_gate_and_mark_gold_find_the_verifiable_reward_in_a_composed_reward():
    assert ground_truth_reward({"reward": [{"reward": "reward_model"}, {"reward": "length"},
                                           {"reward": "count_reward", "weight": 0.5}]}) == "count_reward"
    assert ground_truth_reward({"verifiable_reward": "demo_reward"}) == "demo_reward"
    assert ground_truth_reward({"reward": [{"reward": "reward_model"}]}) == ""
