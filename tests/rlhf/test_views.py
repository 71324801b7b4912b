"""The training pages over real URLs with Django's client: who may see and do what, launching rounds
from the form, a run's curves and log tail, versions with their lineage, the leaderboard.

Personas: alice is a project admin, bob an annotator, charlie an outsider. No worker runs here: a
launched round stays queued (its jobs are enqueued on commit, and these tests never commit).
"""

from __future__ import annotations

import pytest

from annotation.models import PreferencePair
from rlhf import charts
from rlhf.models import LoopSettings, TrainingRun
from rlhf.services import ROUND_DEFAULTS, start_round
from tests import factories as f
from tests.rlhf.helpers import client_for, fake_round, ppo_metrics, rank, reward_metrics

pytestmark = pytest.mark.django_db

FORM = {k: ("on" if v is True else v) for k, v in ROUND_DEFAULTS.items() if v is not False}


@pytest.fixture
def world(settings):
    settings.LENSLOOP_WORKERS_HAVE_CUDA = False
    alice, bob, charlie = f.user("alice"), f.user("bob"), f.user("charlie")
    proj = f.project("shapes", k=4, admins=[alice], annotators=[bob])
    rank(proj, bob, 6)
    return {"alice": alice, "bob": bob, "charlie": charlie, "project": proj}


def launch(client, **fields):
    return client.post("/projects/shapes/training/rounds/", {**FORM, **fields})


def rounds():
    return TrainingRun.objects.filter(kind="round")


# --- who may do what ------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_the_login_page(world):
    run = start_round(project=world["project"], enqueue=False)
    anonymous = client_for()
    for url in ["/projects/shapes/training/", "/projects/shapes/training/versions/", f"/runs/{run.pk}/"]:
        response = anonymous.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url
    response = launch(anonymous)
    assert response.status_code == 302 and rounds().count() == 1


def test_outsiders_can_neither_see_nor_act(world):
    run = start_round(project=world["project"], enqueue=False)
    charlie = client_for(world["charlie"])
    for url in ["/projects/shapes/training/", "/projects/shapes/training/versions/", f"/runs/{run.pk}/", f"/runs/{run.pk}/curves/"]:
        assert charlie.get(url).status_code == 403, url
    assert launch(charlie).status_code == 403
    assert charlie.post(f"/runs/{run.pk}/cancel/").status_code == 403
    run.refresh_from_db()
    assert run.state == "queued" and rounds().count() == 1


def test_annotators_may_watch_but_not_launch_cancel_or_change_settings(world):
    run = start_round(project=world["project"], enqueue=False)
    bob = client_for(world["bob"])
    page = bob.get("/projects/shapes/training/")
    assert page.status_code == 200
    assert b'id="round-form"' not in page.content and b'id="auto-form"' not in page.content
    assert f'id="run-{run.pk}"'.encode() in page.content
    assert bob.get(f"/runs/{run.pk}/").status_code == 200
    assert b'id="run-cancel"' not in bob.get(f"/runs/{run.pk}/").content
    assert bob.get("/projects/shapes/training/versions/").status_code == 200
    assert launch(bob).status_code == 403
    assert bob.post(f"/runs/{run.pk}/cancel/").status_code == 403
    assert bob.post(f"/runs/{run.pk}/resume/").status_code == 403
    assert bob.post("/projects/shapes/training/settings/", {"auto_round_pairs": 5}).status_code == 403
    assert bob.post("/projects/shapes/training/generate/").status_code == 403
    run.refresh_from_db()
    assert run.state == "queued" and not LoopSettings.objects.exists()
    assert TrainingRun.objects.filter(kind="generate", round=None).count() == 0


def test_pages_send_a_content_security_policy(world):
    response = client_for(world["alice"]).get("/projects/shapes/training/")
    assert "script-src 'self'" in response["Content-Security-Policy"]


# --- launching rounds -----------------------------------------------------------------------------


def test_an_admin_launches_a_round_from_the_form(world):
    alice = client_for(world["alice"])
    page = alice.get("/projects/shapes/training/")
    assert b'id="round-form"' in page.content and b'value="40"' in page.content  # defaults filled in
    response = launch(alice, algorithm="dpo", policy_steps=12, lora_r=16, beta=0.2)
    round_run = rounds().get()
    assert response.status_code == 302 and response["Location"].endswith(f"/projects/shapes/training/#run-{round_run.pk}")
    assert round_run.created_by == world["alice"] and round_run.state == "queued"
    assert round_run.config["algorithm"] == "dpo" and round_run.config["policy_steps"] == 12
    assert round_run.config["lora_r"] == 16 and round_run.config["beta"] == 0.2
    assert [s.kind for s in round_run.steps.order_by("position")] == ["export", "reward", "dpo", "evaluate", "register", "generate"]
    listed = alice.get("/projects/shapes/training/")
    assert f"Round #{round_run.pk} (DPO) queued".encode() in listed.content
    assert f'aria-label="Progress of run #{round_run.pk}"'.encode() in listed.content
    assert b"waiting for a worker" in listed.content


def test_a_second_launch_while_a_round_is_queued_says_a_round_is_in_progress(world):
    alice = client_for(world["alice"])
    launch(alice)
    response = launch(alice, algorithm="sft")
    assert response.status_code == 409
    assert b"already has a round in progress" in response.content
    assert b'role="alert"' in response.content
    assert rounds().count() == 1


def test_bad_parameters_show_errors_and_start_nothing(world):
    response = launch(client_for(world["alice"]), policy_steps=0, lora_r="many", algorithm="rlhf-magic")
    assert response.status_code == 400
    form = response.context["form"]
    assert set(form.errors) == {"policy_steps", "lora_r", "algorithm"}
    assert b'class="errorlist"' in response.content
    assert not rounds().exists()


def test_the_form_offers_the_peft_methods_and_refuses_an_unknown_one(world):
    page = client_for(world["alice"]).get("/projects/shapes/training/")
    assert b'name="peft_method"' in page.content and b'value="bottleneck_adapter"' in page.content
    assert b'value="prompt_tuning"' in page.content
    response = launch(client_for(world["alice"]), peft_method="prefix_tuning")
    assert response.status_code == 400 and set(response.context["form"].errors) == {"peft_method"}
    assert not rounds().exists()
    launch(client_for(world["alice"]), peft_method="ia3")
    assert rounds().get().config["peft_method"] == "ia3"


def test_a_project_without_pairs_cannot_start_a_round(world):
    PreferencePair.objects.all().delete()
    response = launch(client_for(world["alice"]))
    assert response.status_code == 400 and b"no preference pairs yet" in response.content
    assert not rounds().exists()


def test_qlora_cannot_be_switched_on_without_cuda(world):
    alice = client_for(world["alice"])
    assert b"Needs a CUDA GPU" in alice.get("/projects/shapes/training/").content
    launch(alice, qlora="on")
    assert rounds().get().config["qlora"] is False


def test_qlora_is_offered_where_the_workers_have_cuda(world, settings):
    settings.LENSLOOP_WORKERS_HAVE_CUDA = True
    alice = client_for(world["alice"])
    assert b"Needs a CUDA GPU" not in alice.get("/projects/shapes/training/").content
    launch(alice, qlora="on")
    assert rounds().get().config["qlora"] is True


# --- automatic rounds, cancel, resume, generate ---------------------------------------------------


def test_an_admin_turns_automatic_rounds_on_and_off(world):
    alice = client_for(world["alice"])
    response = alice.post("/projects/shapes/training/settings/", {"auto_round_pairs": 50})
    assert response.status_code == 302
    assert LoopSettings.objects.get(project=world["project"]).auto_round_pairs == 50
    assert b"a round starts whenever 50 new preference pairs" in alice.get("/projects/shapes/training/").content
    assert alice.post("/projects/shapes/training/settings/", {"auto_round_pairs": -3}).status_code == 400
    alice.post("/projects/shapes/training/settings/", {"auto_round_pairs": 0})
    assert LoopSettings.objects.get(project=world["project"]).auto_round_pairs == 0


def test_the_launch_form_can_save_the_parameters_of_automatic_rounds(world):
    response = launch(client_for(world["alice"]), action="save_auto", algorithm="grpo", policy_steps=7)
    assert response.status_code == 302 and not rounds().exists()
    params = LoopSettings.objects.get(project=world["project"]).round_params
    assert params["algorithm"] == "grpo" and params["policy_steps"] == 7


def test_rounds_from_the_form_use_the_projects_engine_settings_and_the_page_lists_them(world):
    from rlhf.services import loop_settings_set

    loop_settings_set(project=world["project"], round_params={"lora_modules_to_save": ["lm_head"]})
    alice = client_for(world["alice"])
    page = alice.get("/projects/shapes/training/")
    assert b'id="engine-params"' in page.content and b"<code>lora_modules_to_save</code> lm_head" in page.content
    launch(alice, action="save_auto", algorithm="grpo")  # saving the form's fields keeps the engine settings
    launch(alice, algorithm="dpo")
    assert rounds().get().config["lora_modules_to_save"] == ["lm_head"]
    assert LoopSettings.objects.get(project=world["project"]).round_params["lora_modules_to_save"] == ["lm_head"]


def test_automatic_rounds_list_their_parameters_as_people_read_them(world):
    from rlhf.services import loop_settings_set

    alice = client_for(world["alice"])
    launch(alice, action="save_auto", algorithm="grpo", reward_epochs=2.0)
    loop_settings_set(project=world["project"], round_params={"lora_modules_to_save": ["lm_head", "embed_tokens"]})
    page = alice.get("/projects/shapes/training/").content.decode()
    section = page.split('id="auto-params"')[1].split("</dl>")[0]
    for label, value in [("Algorithm", "GRPO"), ("QLoRA", "No"), ("Reward-model epochs", "2"),
                         ("Learning rate", "the engine&#x27;s default"), ("Modules trained in full", "lm_head, embed_tokens")]:
        assert f"<dt>{label}</dt><dd>{value}</dd>" in section, label
    for raw in ["False", "True", "[", "2.0", "lora_modules_to_save"]:
        assert raw not in section, raw


def test_a_rounds_page_lists_its_parameters_as_people_read_them(world):
    run = start_round(project=world["project"], params={"lora_target_modules": ["q_proj", "k_proj"]}, enqueue=False)
    section = client_for(world["bob"]).get(f"/runs/{run.pk}/").content.decode().split('id="config"')[1].split("</dl>")[0]
    assert "<dt>QLoRA</dt><dd>No</dd>" in section and "<dt>LoRA target modules</dt><dd>q_proj, k_proj</dd>" in section
    assert "<dt>Reward model in the policy&#x27;s reward</dt><dd>Yes</dd>" in section
    assert "False" not in section and "[" not in section


def test_an_admin_cancels_and_resumes_a_round(world):
    alice = client_for(world["alice"])
    run = start_round(project=world["project"], enqueue=False)
    response = alice.post(f"/runs/{run.pk}/cancel/")
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.state == "cancelled" and set(run.steps.values_list("state", flat=True)) == {"cancelled"}
    page = alice.get(f"/runs/{run.pk}/")
    assert b'id="run-resume"' in page.content and b'id="run-cancel"' not in page.content
    alice.post(f"/runs/{run.pk}/resume/")
    run.refresh_from_db()
    assert run.state == "queued" and set(run.steps.values_list("state", flat=True)) == {"queued"}


def test_resuming_a_round_that_is_not_stopped_says_why(world):
    run = start_round(project=world["project"], enqueue=False)
    response = client_for(world["alice"]).post(f"/runs/{run.pk}/resume/", follow=True)
    assert b"only failed or cancelled rounds resume" in response.content


def test_an_admin_samples_new_tasks_from_the_active_policy(world):
    response = client_for(world["alice"]).post("/projects/shapes/training/generate/")
    run = TrainingRun.objects.get(kind="generate")
    assert response.status_code == 302 and run.round is None and run.state == "queued"


# --- progress, curves, log tails ------------------------------------------------------------------


def test_a_running_round_shows_how_far_it_is(world):
    run = start_round(project=world["project"], enqueue=False)
    run.steps.filter(position=1).update(state="succeeded")
    run.steps.filter(position=2).update(state="running", step=15, total_steps=30)
    TrainingRun.objects.filter(pk=run.pk).update(state="running")
    page = client_for(world["alice"]).get("/projects/shapes/training/").content.decode()
    assert 'value="25"' in page  # (1 done + 0.5 of the reward model) / 6 steps
    assert "step 2 of 6: Reward model 15/30" in page
    detail = client_for(world["bob"]).get(f"/runs/{run.pk}/").content.decode()
    assert 'aria-label="Progress of step 2, Reward model"' in detail and 'value="50"' in detail


def test_queued_steps_say_which_step_they_wait_for_not_a_worker(world):
    run = start_round(project=world["project"], enqueue=False)
    alice = client_for(world["alice"])

    def statuses():
        return [s.ui_status for s in alice.get(f"/runs/{run.pk}/").context["steps"]]

    assert statuses() == ["waiting for a worker", "waiting for step 1 (Export snapshot)",
                          "waiting for step 2 (Reward model)", "waiting for step 3 (PPO)",
                          "waiting for step 4 (Evaluate)", "waiting for step 5 (Register versions)"]
    TrainingRun.objects.filter(pk=run.pk).update(state="running")
    run.steps.filter(position=1).update(state="succeeded")
    run.steps.filter(position=2).update(state="running", step=3, total_steps=30)
    assert statuses()[1:4] == ["3/30", "waiting for step 2 (Reward model)", "waiting for step 3 (PPO)"]
    ppo = run.steps.get(position=3)
    assert "waiting for step 2 (Reward model)" in alice.get(f"/runs/{ppo.pk}/").content.decode()  # the step's own page
    run.steps.filter(position=2).update(state="succeeded")  # the PPO job is now really in the queue
    assert statuses()[2:4] == ["waiting for a worker", "waiting for step 3 (PPO)"]
    assert "waiting for a worker" in alice.get(f"/runs/{ppo.pk}/").content.decode()


def test_a_standalone_run_and_a_rounds_first_step_wait_for_a_worker(world):
    run = start_round(project=world["project"], enqueue=False)
    first = run.steps.get(position=1)
    assert first.waiting_for() is None and first.waiting_for(list(run.steps.all())) is None
    assert run.steps.get(position=2).waiting_for() == first
    alice = client_for(world["alice"])
    alice.post("/projects/shapes/training/generate/")
    generate = TrainingRun.objects.get(kind="generate", round=None)
    assert generate.waiting_for() is None
    row = alice.get("/projects/shapes/training/").content.decode().split(f'id="run-{generate.pk}"')[1].split("</tr>")[0]
    assert "waiting for a worker" in row


def test_a_rounds_progress_is_the_models_on_the_page_and_in_the_api(world):
    run = start_round(project=world["project"], enqueue=False)
    run.steps.filter(position__lte=2).update(state="succeeded")
    run.steps.filter(position=3).update(state="running", step=10, total_steps=40)
    TrainingRun.objects.filter(pk=run.pk).update(state="running")
    run.refresh_from_db()
    assert run.progress == pytest.approx((2 + 0.25) / 6)
    alice = client_for(world["alice"])
    assert alice.get(f"/api/runs/{run.pk}/").json()["progress"] == pytest.approx(run.progress)
    assert f'value="{round(100 * run.progress)}"' in alice.get("/projects/shapes/training/").content.decode()
    TrainingRun.objects.filter(pk=run.pk).update(state="succeeded")
    run.refresh_from_db()
    assert run.progress == 1.0


def test_a_finished_run_says_how_long_it_took_in_seconds_when_under_a_minute(world):
    from datetime import timedelta

    from django.utils import timezone

    run = start_round(project=world["project"], enqueue=False)
    start = timezone.now()
    TrainingRun.objects.filter(pk=run.pk).update(state="succeeded", started_at=start, finished_at=start + timedelta(seconds=47))
    assert "(took 47 s)" in client_for(world["alice"]).get(f"/runs/{run.pk}/").content.decode()
    run.refresh_from_db()
    run.finished_at = start + timedelta(hours=2, minutes=4, seconds=9)
    assert run.duration == "2 h 4 min"
    run.finished_at = start + timedelta(minutes=3, seconds=5)
    assert run.duration == "3 min 5 s"


def test_the_run_page_draws_the_curves_the_engine_logged(world):
    run = start_round(project=world["project"], enqueue=False)
    reward, ppo = run.steps.get(kind="reward"), run.steps.get(kind="ppo")
    reward.metrics = reward_metrics()
    reward.save()
    ppo.metrics = ppo_metrics()
    ppo.save()
    alice = client_for(world["alice"])
    page = alice.get(f"/runs/{run.pk}/").content.decode()
    for title in ["Loss", "Accuracy", "Reward", "KL divergence to the reference policy", "policy/entropy"]:
        assert f">{title}</title>" in page, title
    assert "objective/kl: 40 points" in page and "eval/accuracy: 2 points, first 0.52, last 0.78" in page
    step_page = alice.get(f"/runs/{ppo.pk}/").content.decode()
    assert "objective/scores: 40 points" in step_page and "Step 3 of round" in step_page
    fragment = alice.get(f"/runs/{run.pk}/curves/").content.decode()
    assert fragment.count("<svg") == page.count("<svg") - page.count('class="chart interval-chart"')


def test_log_tails_and_errors_are_shown_as_text_never_as_markup(world):
    run = start_round(project=world["project"], enqueue=False)
    step = run.steps.get(kind="reward")
    step.state, step.log_tail = "failed", "loss=0.3\n<script>alert('log')</script>\n"
    step.error = "<img src=x onerror=alert('err')>"
    step.save()
    TrainingRun.objects.filter(pk=run.pk).update(state="failed", error="step 2 failed: <b>bold</b>")
    step.metrics = [{"step": 1, "<svg onload=alert(1)>": 1.0}, {"step": 2, "<svg onload=alert(1)>": 2.0}]
    step.save()
    alice = client_for(world["alice"])
    for url in [f"/runs/{run.pk}/", f"/runs/{step.pk}/"]:
        page = alice.get(url).content.decode()
        assert "<script>alert" not in page and "<img src=x" not in page and "<svg onload" not in page, url
        assert "<b>bold</b>" not in page
    page = alice.get(f"/runs/{run.pk}/").content.decode()
    assert "&lt;script&gt;alert(&#x27;log&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;svg onload=alert(1)&gt;" in page


# --- versions, lineage, leaderboard ---------------------------------------------------------------


def test_the_versions_page_shows_lineage_from_rankings_to_samples(world):
    round_run = fake_round(world["project"], world["alice"])
    page = client_for(world["bob"]).get("/projects/shapes/training/versions/").content.decode()
    assert 'id="v-policy-v1"' in page and 'id="v-reward-v1"' in page and 'id="v-base"' in page
    lineage = page.split('aria-label="Lineage of policy-v1"')[1].split("</ol>")[0]
    for text in ["12 rankings, 60 preference pairs", "reward-v1, pairwise accuracy 78%", "policy-v1 from base by PPO",
                 # rank()'s 6 candidates named "policy-v1" are not counted: policy-v1 did not generate them
                 "12 candidates in 3 ranking tasks (0 fully ranked)"]:
        assert text in lineage, text
    assert lineage.index("Rankings") < lineage.index("Reward model") < lineage.index("Policy") < lineage.index("Samples")
    assert f'href="/runs/{round_run.pk}/"' in lineage
    assert "Policies trained against it" in page.split('id="v-reward-v1"')[1]
    assert "train/loss" in page and "0.11" in page  # key metrics of policy-v1


def test_an_admin_makes_an_earlier_policy_active_from_the_versions_page(world, tmp_path):
    from rlhf.models import ModelVersion

    fake_round(world["project"], world["alice"])
    ModelVersion.objects.filter(label="policy-v1").update(path=str(tmp_path))
    base = ModelVersion.objects.get(project=world["project"], label="base")
    url = f"/projects/shapes/training/versions/{base.pk}/activate/"
    watcher = client_for(world["bob"])
    assert 'class="inline version-activate"' not in watcher.get("/projects/shapes/training/versions/").content.decode()
    assert watcher.post(url).status_code == 403

    admin = client_for(world["alice"])
    page = admin.get("/projects/shapes/training/versions/").content.decode()
    head = page.split('id="v-base"')[1].split("</form>")[0]
    assert "Make active" in head and url in head
    assert url.replace(str(base.pk), str(ModelVersion.objects.get(label="policy-v1").pk)) not in page  # active: no button
    response = admin.post(url, follow=True)
    assert response.redirect_chain[-1][0] == "/projects/shapes/training/versions/#v-base"
    assert "base is now the active policy." in response.content.decode()
    assert ModelVersion.objects.get(project=world["project"], kind="policy", active=True) == base
    assert ModelVersion.objects.get(project=world["project"], kind="reward", active=True).label == "reward-v1"

    launch(admin)  # a round is queued: no switching under it
    response = admin.post(f"/projects/shapes/training/versions/{ModelVersion.objects.get(label='policy-v1').pk}/activate/",
                          follow=True)
    assert "a round of shapes is in progress" in response.content.decode()
    assert ModelVersion.objects.get(project=world["project"], kind="policy", active=True) == base


def test_the_leaderboard_ranks_sources_with_intervals_and_compares_two(world):
    rank(world["project"], world["bob"], 12)
    alice = client_for(world["alice"])
    response = alice.get("/projects/shapes/training/versions/")
    board = response.context["board"]
    assert [r["source"] for r in board] == ["reference", "policy-v1", "base"]
    assert all(r["ci_low"] <= r["rating"] <= r["ci_high"] for r in board)
    page = response.content.decode()
    assert "Bradley–Terry rating of each source with its 95 % interval" in page
    assert page.count("<tr>") == 1 + len(board)
    compared = alice.get("/projects/shapes/training/versions/", {"a": "policy-v1", "b": "base"}).content.decode()
    assert "annotators ranked policy-v1 above base in" in compared
    assert "P(policy-v1 preferred) = 0." in compared


def test_the_project_dashboard_and_the_nav_link_to_training(world):
    page = client_for(world["alice"]).get("/projects/shapes/dashboard/").content.decode()
    assert page.count('href="/projects/shapes/training/"') == 2  # the nav and the dashboard's button


def test_the_home_pages_project_card_links_admins_and_staff_to_training(world):
    assert 'href="/projects/shapes/training/"' in client_for(world["alice"]).get("/").content.decode()
    assert 'href="/projects/shapes/training/"' not in client_for(world["bob"]).get("/").content.decode()
    world["bob"].is_staff = True
    world["bob"].save(update_fields=["is_staff"])
    assert 'href="/projects/shapes/training/"' in client_for(world["bob"]).get("/").content.decode()


# --- chart helpers --------------------------------------------------------------------------------


def test_metrics_fall_into_the_panels_people_look_for():
    assert charts.family("objective/kl") == "kl" and charts.family("losses/approx_kl") == "kl"
    assert charts.family("eval/accuracy") == "accuracy" and charts.family("train/acc") == "accuracy"
    assert charts.family("objective/scores") == "reward" and charts.family("reward") == "reward"
    assert charts.family("losses/value_loss") == "loss" and charts.family("policy/entropy") is None
    assert charts.family("rewards/banned_words/mean") == "terms"  # a composed reward's terms: a panel of their own


def test_the_terms_of_a_composed_reward_share_a_panel_without_their_spreads():
    rows = [{"step": s, "objective/scores": 0.1 * s, "rewards/reward_model/mean": 0.2 * s,
             "rewards/banned_words/mean": -1.0 + 0.3 * s, "rewards/banned_words/std": 0.4} for s in (1, 2, 3)]
    panels, figures = charts.run_panels(rows, id_prefix="t")
    assert [p["title"] for p in panels] == ["Reward", "Reward terms (each term's mean, before its weight)"]
    terms = str(panels[1]["svg"])
    assert "rewards/banned_words/mean" in terms and "rewards/reward_model/mean" in terms and "/std" not in terms
    assert "rewards/banned_words/mean" not in str(panels[0]["svg"]) and figures == {}


PPO_REWARDS = ["objective/scores", "objective/scores_raw", "objective/non_score_reward", "objective/rlhf_reward",
               "eval/reward_mean", "eval/reward_sampled"]  # what rlhf.engine.ppo logs


def test_a_legend_too_wide_for_one_row_wraps_and_every_entry_stays_inside_the_chart():
    import re

    from annotation.charts import text_width

    svg = charts.line_chart([(name, [(0, i), (1, i + 1)]) for i, name in enumerate(PPO_REWARDS)], title="Reward", chart_id="r")
    width, height = (float(v) for v in re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg).groups())
    entries = re.findall(r'<g class="legend-entry"><title>([^<]*)</title>.*?<text x="([\d.]+)" y="([\d.]+)" class="label">([^<]*)</text>', svg)
    assert [e[0] for e in entries] == PPO_REWARDS
    assert [e[3] for e in entries] == PPO_REWARDS  # none had to be cut
    for _, x, y, shown in entries:
        assert float(x) + text_width(shown) <= width and 0 < float(y) < height, shown
    assert len({y for _, _, y, _ in entries}) > 1  # wrapped onto several rows
    assert height > 220  # the chart grew by the rows; the plot kept its size


def test_a_legend_name_wider_than_the_chart_is_cut_with_its_full_name_in_the_tooltip():
    long = "objective/" + "very_long_metric_name_" * 6
    svg = charts.line_chart([(long, [(0, 1), (1, 2)])], title="Reward", chart_id="r")
    assert f"<title>{long}</title>" in svg and "…</text>" in svg


def test_metric_series_keep_only_finite_numbers():
    rows = [{"step": 1, "loss": 1.0, "note": "x", "flag": True, "bad": float("nan")}, {"loss": 0.5}]
    assert charts.metric_series(rows) == {"loss": [(1.0, 1.0), (1.0, 0.5)]}  # the second row's x is its index
    panels, figures = charts.run_panels([{"step": 1, "accuracy": 0.7}], id_prefix="t")
    assert panels == [] and figures == {"accuracy": 0.7}


def test_metric_series_come_in_the_same_order_whatever_order_a_row_keeps_its_keys_in():
    # PostgreSQL's jsonb reorders a row's keys (shortest first); SQLite keeps them as written.
    written = [{"step": 1, "objective/scores": 1.0, "objective/rlhf_reward": 0.5, "eval/reward_mean": 0.2}]
    reordered = [dict(sorted(written[0].items(), key=lambda kv: (len(kv[0]), kv[0])))]
    assert list(charts.metric_series(written)) == list(charts.metric_series(reordered)) == [
        "eval/reward_mean", "objective/rlhf_reward", "objective/scores"]


def test_the_api_carries_the_status_text_the_page_shows_so_the_script_computes_nothing(world):
    """TrainingRun.status_text is the one source of the sentence under a progress bar: the pages render
    it and the API's ``status`` carries it to static/js/runs.js, which only displays it."""
    run = start_round(project=world["project"], enqueue=False)
    TrainingRun.objects.filter(pk=run.pk).update(state="running")
    run.steps.filter(position=1).update(state="succeeded")
    run.steps.filter(position=2).update(state="running", step=3, total_steps=30)
    alice = client_for(world["alice"])
    detail = alice.get(f"/api/runs/{run.pk}/").json()
    assert detail["status"] == "step 2 of 6: Reward model 3/30"
    assert [s["status"] for s in detail["steps"]][:4] == ["", "3/30", "waiting for step 2 (Reward model)",
                                                          "waiting for step 3 (PPO)"]
    listed = {r["id"]: r for r in alice.get("/api/projects/shapes/runs/").json()}
    assert listed[run.pk]["status"] == detail["status"]
    assert detail["status"] in alice.get("/projects/shapes/training/").content.decode()
