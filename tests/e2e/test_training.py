"""The training pages in a real browser: an admin goes from the project dashboard to Training, launches
a round and watches its progress bar move as the steps advance (the page polls the JSON API); a run's
page with its curves and log tail; model versions with lineage and the leaderboard.

No worker runs here: the test moves the round's steps itself, as a worker would, so what the browser
shows is deterministic. (The README's screenshots of these pages come from a real round:
scripts/demo_walkthrough.py.)
"""

from __future__ import annotations

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from rlhf.models import TrainingRun
from rlhf.services import fail_run, start_round
from tests import factories as f
from tests.e2e.helpers import login
from tests.rlhf.helpers import fake_round, ppo_metrics, rank, reward_metrics

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def loop_world(transactional_db, settings):
    settings.LENSLOOP_WORKERS_HAVE_CUDA = False
    alice, bob = f.user("alice", is_staff=True), f.user("bob")
    proj = f.project("shapes", k=4, admins=[alice], annotators=[bob])
    proj.name = "Shapes captions"
    proj.save(update_fields=["name"])
    rank(proj, bob, 12)
    return {"alice": alice, "bob": bob, "project": proj}


def test_an_admin_launches_a_round_and_watches_it_progress(page, live_server, loop_world):
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/shapes/dashboard/")
    page.click("#to-training")
    expect(page).to_have_url(f"{live_server.url}/projects/shapes/training/")
    expect(page.get_by_label("LoRA rank")).to_have_value("8")
    expect(page.get_by_label("QLoRA")).to_be_disabled()  # no CUDA on the workers here
    page.get_by_label("Algorithm").select_option("ppo")
    page.get_by_label("Policy steps").fill("30")
    page.click("#launch-round")

    round_run = TrainingRun.objects.get(kind="round")
    assert round_run.config["policy_steps"] == 30 and round_run.created_by == loop_world["alice"]
    row = page.locator(f"#run-{round_run.pk}")
    expect(page.locator(".messages")).to_contain_text(f"Round #{round_run.pk} (PPO) queued")
    expect(row.locator("[data-field=state]")).to_have_text("Queued")
    bar = row.get_by_role("progressbar", name=f"Progress of run #{round_run.pk}")
    expect(bar).to_have_attribute("value", "0")
    expect(row.locator("[data-field=status]")).to_have_text("waiting for a worker")

    # A worker picks it up: the export is done, the reward model is half trained.
    now = timezone.now()
    TrainingRun.objects.filter(pk=round_run.pk).update(state="running", started_at=now)
    round_run.steps.filter(position=1).update(state="succeeded", step=1, total_steps=1)
    round_run.steps.filter(position=2).update(state="running", step=15, total_steps=30, heartbeat_at=now)
    expect(row.locator("[data-field=state]")).to_have_text("Running")
    expect(bar).to_have_attribute("value", "25")  # (1 + 15/30) of 6 steps
    expect(row.locator("[data-field=status]")).to_have_text("step 2 of 6: Reward model 15/30")
    round_run.steps.filter(position=2).update(state="succeeded", step=30)
    round_run.steps.filter(position=3).update(state="running", step=12, total_steps=30, heartbeat_at=timezone.now())
    expect(row.locator("[data-field=status]")).to_have_text("step 3 of 6: PPO 12/30")
    expect(bar).to_have_attribute("value", "40")

    # A second launch while this one runs is refused, saying why.
    page.click("#launch-round")
    expect(page.locator("#round-errors")).to_contain_text("already has a round in progress")
    assert TrainingRun.objects.filter(kind="round").count() == 1


def test_an_admin_picks_the_peft_method_among_the_folded_settings(page, live_server, loop_world):
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/shapes/training/")
    method = page.get_by_label("PEFT method")
    expect(method).to_be_hidden()  # folded with the other "more" settings
    page.locator("details.more > summary", has_text="More: adapter, reward model and sampling").click()
    expect(method).to_have_value("lora")
    method.select_option("bottleneck_adapter")
    page.click("#launch-round")
    expect(page.locator(".messages")).to_contain_text("queued")
    assert TrainingRun.objects.get(kind="round").config["peft_method"] == "bottleneck_adapter"


def test_a_run_page_shows_curves_steps_and_an_escaped_log(page, live_server, loop_world):
    round_run = fake_round(loop_world["project"], loop_world["alice"])
    ppo = round_run.steps.get(kind="ppo")
    ppo.log_tail += "<script>window.pwned = 1</script>\n"
    ppo.save(update_fields=["log_tail"])
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/runs/{round_run.pk}/")
    expect(page.locator("#run-page [data-field=state]").first).to_have_text("Succeeded")
    expect(page.get_by_role("img", name="KL divergence to the reference policy")).to_be_visible()
    expect(page.get_by_role("img", name="Accuracy")).to_be_visible()
    expect(page.locator("#steps-table tbody tr")).to_have_count(6)
    expect(page.locator("#log-tail")).to_contain_text("<script>window.pwned = 1</script>")
    assert page.evaluate("window.pwned") is None
    page.click("#steps-table >> text=PPO")
    expect(page.get_by_role("heading", name=f"Step 3 of round #{round_run.pk}: PPO")).to_be_visible()
    expect(page.get_by_role("img", name="Reward")).to_be_visible()


def test_versions_show_lineage_and_which_one_annotators_prefer(page, live_server, loop_world):
    fake_round(loop_world["project"], loop_world["alice"])
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/shapes/training/")
    page.click("text=Model versions and leaderboard")
    lineage = page.get_by_role("list", name="Lineage of policy-v1")
    expect(lineage.locator("li")).to_have_count(4)
    expect(lineage).to_contain_text("reward-v1, pairwise accuracy 78%")
    expect(page.locator("#leaderboard tbody tr").first).to_contain_text("reference")
    page.select_option("#compare-a", "policy-v1")
    page.select_option("#compare-b", "base")
    page.click("#compare-form button")
    expect(page.locator("#compare-result")).to_contain_text("annotators ranked policy-v1 above base")


def test_a_running_rounds_page_follows_its_log_and_curves_live(page, live_server, loop_world):
    round_run = start_round(project=loop_world["project"], enqueue=False)
    TrainingRun.objects.filter(pk=round_run.pk).update(state="running", started_at=timezone.now())
    round_run.steps.filter(position=1).update(state="succeeded")
    reward = round_run.steps.get(position=2)
    TrainingRun.objects.filter(pk=reward.pk).update(
        state="running", step=2, total_steps=30, heartbeat_at=timezone.now(), metrics=reward_metrics()[:3],
        log_tail="step 2/30 loss=0.66\n",
    )
    login(page, live_server, "bob")  # an annotator may watch
    page.goto(f"{live_server.url}/runs/{round_run.pk}/")
    expect(page.locator("#log-of")).to_have_text("of step 2, Reward model")
    expect(page.locator("#log-tail")).to_have_text("step 2/30 loss=0.66\n")
    expect(page.locator("#run-cancel")).to_have_count(0)

    TrainingRun.objects.filter(pk=reward.pk).update(
        step=20, metrics=reward_metrics()[:21], log_tail="step 20/30 loss=0.41\n<b>not bold</b>\n",
        heartbeat_at=timezone.now(),
    )
    expect(page.locator("#log-tail")).to_contain_text("step 20/30 loss=0.41\n<b>not bold</b>")
    expect(page.locator("#curves")).to_contain_text("21 logged points")
    expect(page.locator(".run-head [data-field=status]")).to_have_text("step 2 of 6: Reward model 20/30")

    # It fails: the page says so, with the error, as text.
    fail_run(reward, "CUDA out of memory <oops>")
    expect(page.locator(".run-head [data-field=state]")).to_have_text("Failed")
    expect(page.locator("#run-error")).to_contain_text("CUDA out of memory <oops>")


def test_queued_steps_say_which_step_they_wait_for_as_the_round_moves(page, live_server, loop_world):
    round_run = start_round(project=loop_world["project"], enqueue=False)
    TrainingRun.objects.filter(pk=round_run.pk).update(state="running", started_at=timezone.now())
    steps = {s.position: s for s in round_run.steps.all()}
    TrainingRun.objects.filter(pk=steps[1].pk).update(state="succeeded")
    TrainingRun.objects.filter(pk=steps[2].pk).update(state="running", step=5, total_steps=30, heartbeat_at=timezone.now())
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/runs/{round_run.pk}/")

    def status(position):
        return page.locator(f'#steps-table tr[data-run-id="{steps[position].pk}"] [data-field=status]')

    expect(status(3)).to_have_text("waiting for step 2 (Reward model)")
    expect(status(4)).to_have_text("waiting for step 3 (PPO)")
    # The reward model is done: PPO's job is in the queue now, the later steps still wait on theirs.
    TrainingRun.objects.filter(pk=steps[2].pk).update(state="succeeded", step=30)
    expect(status(3)).to_have_text("waiting for a worker")
    expect(status(4)).to_have_text("waiting for step 3 (PPO)")  # written by the same poll as the line above

    # A queued step's own page says the same, and follows the step before it.
    page.goto(f"{live_server.url}/runs/{steps[4].pk}/")
    head = page.locator(".run-head [data-field=status]")
    expect(head).to_have_text("waiting for step 3 (PPO)")
    TrainingRun.objects.filter(pk=steps[3].pk).update(state="succeeded", step=40, total_steps=40)
    expect(head).to_have_text("waiting for a worker")


PPO_REWARDS = ["objective/scores", "objective/scores_raw", "objective/non_score_reward", "objective/rlhf_reward",
               "eval/reward_mean", "eval/reward_sampled"]  # the reward series rlhf.engine.ppo logs


def test_every_legend_entry_of_a_ppo_runs_reward_chart_is_inside_the_chart(page, live_server, loop_world):
    round_run = fake_round(loop_world["project"], loop_world["alice"])
    ppo = round_run.steps.get(kind="ppo")
    ppo.metrics = [{**row, **{name: row["objective/scores"] + 0.1 * i for i, name in enumerate(PPO_REWARDS)}}
                   for row in ppo_metrics()]
    ppo.save(update_fields=["metrics"])
    login(page, live_server, "alice")
    page.goto(f"{live_server.url}/runs/{ppo.pk}/")
    chart = page.get_by_role("img", name="Reward")
    expect(chart).to_be_visible()
    # Measured by the browser in the chart's own units: what the viewBox leaves out is cut off on screen.
    boxes = chart.evaluate("""svg => {
        const vb = svg.viewBox.baseVal;
        return [...svg.querySelectorAll("text.label")].map((t) => {
            const b = t.getBBox();
            return {text: t.textContent, left: b.x, right: b.x + b.width, top: b.y, bottom: b.y + b.height,
                    width: vb.width, height: vb.height};
        });
    }""")
    assert [b["text"] for b in boxes] == sorted(PPO_REWARDS)  # alphabetical, whatever order the database keeps keys in
    for b in boxes:
        assert b["left"] >= 0 and b["right"] <= b["width"] and b["top"] >= 0 and b["bottom"] <= b["height"], b
