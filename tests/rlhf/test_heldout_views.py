"""Held-out figures, the promotion gate and the over-optimisation monitor on the training pages and the API.

Personas: alice is a project admin, bob an annotator. The round is written directly (tests/rlhf/helpers.py);
its held-out evaluation is given as the engine's evaluate would have written it.
"""

from __future__ import annotations

import pytest

from annotation.models import Prompt
from rlhf.models import LoopSettings, ModelVersion
from tests import factories as f
from tests.rlhf.helpers import client_for, fake_round, rank

pytestmark = pytest.mark.django_db

FIGURES = {
    "prompts": 40, "prompts_sha": "0123456789ab", "heldout": "prompts_file eval.jsonl",
    "policy/verifiable": 0.412, "policy/verifiable_low": 0.35, "policy/verifiable_high": 0.47, "policy/verifiable_n": 40,
    "baseline/verifiable": 0.531, "baseline/verifiable_low": 0.47, "baseline/verifiable_high": 0.59,
    "baseline/verifiable_n": 40,
    "diff/verifiable": -0.119, "diff/verifiable_low": -0.18, "diff/verifiable_high": -0.06, "diff/verifiable_n": 40,
    "policy/reward_model_score": 0.9, "policy/reward_model_score_low": 0.7, "policy/reward_model_score_high": 1.1,
    "policy/reward_model_score_n": 40,
    "baseline/reward_model_score": 0.2, "baseline/reward_model_score_low": 0.0,
    "baseline/reward_model_score_high": 0.4, "baseline/reward_model_score_n": 40,
    "diff/reward_model_score": 0.7, "diff/reward_model_score_low": 0.5, "diff/reward_model_score_high": 0.9,
    "diff/reward_model_score_n": 40,
    "policy/verifiable_sampled": 0.623, "policy/verifiable_sampled_low": 0.58, "policy/verifiable_sampled_high": 0.66,
    "policy/verifiable_sampled_n": 40,
    "diff/verifiable_sampled": 0.081, "diff/verifiable_sampled_low": 0.04, "diff/verifiable_sampled_high": 0.12,
    "diff/verifiable_sampled_n": 40,
    "reward_model/accuracy": 0.75, "reward_model/accuracy_low": 0.6, "reward_model/accuracy_high": 0.86,
    "reward_model/pairs": 36,
}
REASON = ("worse than base beyond noise: demo_reward on 40 held-out prompts: policy-v1 0.412, base 0.531; "
          "difference -0.119, 95% bootstrap interval [-0.180, -0.060]")


@pytest.fixture
def world():
    alice, bob = f.user("alice"), f.user("bob")
    proj = f.project("shapes", k=4, admins=[alice], annotators=[bob])
    rank(proj, bob, 6)
    return {"alice": alice, "bob": bob, "project": proj}


def held_back_round(world):
    """A round whose policy-v1 the gate held back: worse on held-out prompts while its reward-model score rose."""
    round_run = fake_round(world["project"], world["alice"])
    policy = ModelVersion.objects.get(project=world["project"], label="policy-v1")
    base = ModelVersion.objects.get(project=world["project"], label="base")
    policy.metrics = {**policy.metrics, "eval": FIGURES}
    policy.gate_state, policy.gate_reason = "failed", REASON
    policy.gate = {"method": "verifiable", "reward": "demo_reward", "active": "base", "active_id": base.pk}
    policy.active = False
    policy.save()
    ModelVersion.objects.filter(pk=base.pk).update(active=True)
    return round_run, policy


def test_the_versions_page_compares_policies_on_the_held_out_set_with_intervals_and_sample_sizes(world):
    held_back_round(world)
    response = client_for(world["bob"]).get("/projects/shapes/training/versions/")
    page = response.content.decode()
    section = page.split('id="heldout"')[1].split("</section>")[0]
    table = section.split('id="heldout-versions"')[1].split("</table>")[0]
    assert "held-out set <code>0123456789ab</code> (40 prompts)" in table
    rows = {row.split('"')[0]: row for row in table.split('data-version="')[1:]}
    assert "0.531" in rows["base"] and "[0.470, 0.590] n=40" in rows["base"]
    assert "0.412" in rows["policy-v1"] and "[0.350, 0.470] n=40" in rows["policy-v1"]
    assert "Held back by the gate" in rows["policy-v1"]
    # Sampled answers too, where a round's gain mostly is: policy-v1's; the base's were not measured here.
    assert "Verifiable reward, sampled (T = 1)" in table
    assert "0.623 <span" in rows["policy-v1"] and "[0.580, 0.660] n=40" in rows["policy-v1"]
    assert rows["base"].count('class="num"') == 2 and '<span class="muted">—</span>' in rows["base"]
    assert "95 % percentile-bootstrap interval" in section


def test_a_held_back_policy_says_why_and_an_admin_may_still_make_it_active(world):
    held_back_round(world)
    page = client_for(world["alice"]).get("/projects/shapes/training/versions/").content.decode()
    version = page.split('id="v-policy-v1"')[1].split("</li>")[0]
    assert "Held back by the gate" in version and REASON.replace("'", "&#x27;") in version
    assert "A project admin may still make it active." in version and "Make active" in version
    whole = page.split('id="v-policy-v1"')[1].split('id="v-base"')[0]
    figures = whole.split('class="figures metric-figures"')[1].split("</dl>")[0]
    assert "<dt>eval/policy/verifiable</dt>" in figures and "baseline" not in figures and "_high" not in figures


def test_the_monitor_warns_on_the_run_and_versions_pages_when_the_reward_model_rises_and_the_truth_falls(world):
    round_run, _ = held_back_round(world)
    for url in (f"/runs/{round_run.pk}/", "/projects/shapes/training/versions/"):
        page = client_for(world["bob"]).get(url).content.decode()
        monitor = page.split('class="monitor alert"')[1].split("</div>")[0]
        assert 'data-warning="true"' in monitor, url
        assert "Reward model&#x27;s score: Δ 0.700" in monitor or "Reward model's score: Δ 0.700" in monitor, url
        assert "held-out verifiable reward: Δ -0.119" in monitor and "both beyond noise" in monitor, url


def test_the_run_page_shows_both_policies_held_out_figures_beside_each_other(world):
    round_run, _ = held_back_round(world)
    page = client_for(world["bob"]).get(f"/runs/{round_run.pk}/").content.decode()
    card = page.split('id="heldout-title"')[1].split("</section>")[0]
    assert "policy-v1 and base on the same 40" in card and "held-out" in card
    verifiable = card.split('data-figure="verifiable"')[1].split("</tr>")[0]
    for text in ("0.412", "0.531", "-0.119", "[-0.180, -0.060] n=40"):
        assert text in verifiable, text
    sampled = card.split('data-figure="verifiable_sampled"')[1].split("</tr>")[0]
    assert "sampled (T = 1)" in sampled and "0.623" in sampled and "[0.040, 0.120] n=40" in sampled
    assert "Held back by the gate" in card
    assert "[0.600, 0.860] n=36 held-out pairs (Wilson)" in card
    step = client_for(world["bob"]).get(f"/runs/{round_run.steps.get(kind='evaluate').pk}/").content.decode()
    assert 'id="heldout-title"' in step, "a round's steps show the round's held-out evaluation too"


def test_figures_measured_on_training_prompts_are_flagged_not_shown_as_held_out(world):
    _, policy = held_back_round(world)
    policy.metrics = {**policy.metrics, "eval": {("train/" + k if "/" in k else k): v for k, v in FIGURES.items()}
                      | {"heldout": "none"}}
    policy.save()
    page = client_for(world["bob"]).get("/projects/shapes/training/versions/").content.decode()
    assert "Measured on training prompts, not held-out ones" in page
    assert "training prompts</span>" in page.split('id="heldout-versions"')[1]


def test_the_leaderboard_compares_versions_on_held_out_prompts_with_sample_sizes(world):
    held = list(Prompt.objects.filter(project=world["project"]).order_by("id").values_list("pk", flat=True)[:3])
    Prompt.objects.filter(pk__in=held).update(split="eval")
    client = client_for(world["bob"])
    response = client.get("/projects/shapes/training/versions/")
    assert response.context["prompts"] == "eval"
    board = response.context["board"]
    assert board and all(r["rankings"] <= 3 and r["comparisons"] >= r["rankings"] for r in board)
    page = response.content.decode()
    assert "On held-out prompts." in page and "on held-out prompts only" in page and "<th class=\"num\">Rankings</th>" in page
    everything = client.get("/projects/shapes/training/versions/", {"prompts": "all"}).context["board"]
    assert max(r["rankings"] for r in everything) == 6 > max(r["rankings"] for r in board)
    api = client.get("/api/projects/shapes/leaderboard/", {"split": "eval"}).json()
    assert {r["source"]: r["rankings"] for r in api} == {r["source"]: r["rankings"] for r in board}
    assert client.get("/api/projects/shapes/leaderboard/", {"split": "test"}).status_code == 400


def test_without_held_out_rankings_the_leaderboard_says_it_counts_every_prompt(world):
    response = client_for(world["bob"]).get("/projects/shapes/training/versions/")
    assert response.context["prompts"] == "all" and response.context["board"]
    assert "On all prompts, training ones included." in response.content.decode()


def test_an_admin_sets_the_promotion_gate_and_an_annotator_may_not(world):
    url = "/projects/shapes/training/gate/"
    form = {"promotion_gate": "human", "gate_reward": "", "gate_comparisons": 12, "eval_prompts": 100}
    assert client_for(world["bob"]).post(url, form).status_code == 403
    response = client_for(world["alice"]).post(url, form, follow=True)
    assert response.status_code == 200 and "Promotion gate: reward model and side-by-side rankings" in response.content.decode()
    row = LoopSettings.objects.get(project=world["project"])
    assert (row.promotion_gate, row.gate_comparisons, row.eval_prompts) == ("human", 12, 100)
    bad = client_for(world["alice"]).post(url, {**form, "gate_reward": "truth"})
    assert bad.status_code == 400
    page = client_for(world["bob"]).get("/projects/shapes/training/").content.decode()
    assert 'id="gate-title"' in page and 'id="gate-form"' not in page


def test_the_api_reports_each_versions_gate_and_changes_the_gate_settings(world):
    held_back_round(world)
    client = client_for(world["alice"])
    versions = {v["label"]: v for v in client.get("/api/projects/shapes/versions/").json()}
    assert versions["policy-v1"]["gate_state"] == "failed" and versions["policy-v1"]["gate_reason"] == REASON
    assert versions["policy-v1"]["gate"]["active"] == "base" and versions["base"]["gate_state"] == ""
    response = client.patch("/api/projects/shapes/loop-settings/", {"promotion_gate": "off", "gate_comparisons": 5},
                            content_type="application/json")
    assert response.status_code == 200 and response.json()["promotion_gate"] == "off"
    assert response.json()["gate_comparisons"] == 5 and response.json()["eval_prompts"] == 200
    bad = client.patch("/api/projects/shapes/loop-settings/", {"gate_reward": "truth"}, content_type="application/json")
    assert bad.status_code == 400 and "gate_reward" in bad.json()["detail"]
