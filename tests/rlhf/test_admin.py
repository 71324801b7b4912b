"""The loop's Django admin: runs and model versions change only through actions that call the services.

Personas: root is a superuser (every admin permission), bob an annotator whose rankings feed the rounds.
"""

from __future__ import annotations

import json

import pytest
from django.test import Client

from rlhf.models import LoopSettings, ModelVersion, TrainingRun
from rlhf.services import start_round
from tests import factories as f
from tests.annotation.test_admin import post_change_form
from tests.rlhf.helpers import fake_round, rank

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(settings):
    settings.LENSLOOP_WORKERS_HAVE_CUDA = False
    root, bob = f.user("root", is_staff=True, is_superuser=True), f.user("bob")
    proj = f.project("shapes", k=4, annotators=[bob])
    rank(proj, bob, 3)
    round_run = fake_round(proj, root)
    client = Client()
    client.force_login(root)
    return {"project": proj, "round": round_run, "admin": client}


def _version(label: str) -> ModelVersion:
    return ModelVersion.objects.get(label=label)


def test_a_posted_version_form_does_not_change_which_version_is_active(world):
    base = _version("base")
    response = post_change_form(world["admin"], f"/admin/rlhf/modelversion/{base.pk}/change/",
                                active="on", path="/etc", base_model="/etc")
    assert response.status_code == 302
    base.refresh_from_db()
    assert (base.active, base.path, base.base_model) == (False, "", "demo")
    assert _version("policy-v1").active


def test_making_a_version_active_is_an_action_that_calls_the_rollback_service(world):
    base = _version("base")
    response = world["admin"].post("/admin/rlhf/modelversion/", {"action": "make_active", "_selected_action": [base.pk]})
    assert response.status_code == 302
    assert _version("base").active and not _version("policy-v1").active


def test_the_action_is_refused_while_a_round_is_in_progress(world):
    start_round(project=world["project"], params={"algorithm": "ppo"}, enqueue=False)
    base = _version("base")
    response = world["admin"].post("/admin/rlhf/modelversion/", {"action": "make_active", "_selected_action": [base.pk]},
                                   follow=True)
    assert "in progress" in response.content.decode()
    assert not _version("base").active and _version("policy-v1").active


def test_a_posted_run_form_does_not_change_its_state_and_cancel_is_an_action(world):
    queued = start_round(project=world["project"], params={"algorithm": "ppo"}, enqueue=False)
    url = f"/admin/rlhf/trainingrun/{queued.pk}/change/"
    assert post_change_form(world["admin"], url, state="succeeded", run_dir="/etc").status_code == 302
    queued.refresh_from_db()
    assert queued.state == TrainingRun.State.QUEUED and queued.run_dir != "/etc"
    world["admin"].post("/admin/rlhf/trainingrun/", {"action": "cancel_runs", "_selected_action": [queued.pk]})
    queued.refresh_from_db()
    assert queued.state == TrainingRun.State.CANCELLED
    assert set(queued.steps.values_list("state", flat=True)) == {"cancelled"}
    world["admin"].post("/admin/rlhf/trainingrun/", {"action": "resume_rounds", "_selected_action": [queued.pk]})
    queued.refresh_from_db()
    assert queued.state == TrainingRun.State.QUEUED


def test_runs_and_versions_are_not_added_by_hand(world):
    assert world["admin"].get("/admin/rlhf/trainingrun/add/").status_code == 403
    assert world["admin"].get("/admin/rlhf/modelversion/add/").status_code == 403


def test_loop_settings_in_the_admin_are_validated_like_the_apis(world):
    form = {"project": world["project"].pk, "auto_round_pairs": 10, "round_params": json.dumps({"algorithm": "reinforce"}),
            "promotion_gate": "auto", "gate_reward": "", "gate_comparisons": 20, "eval_prompts": 100}
    response = world["admin"].post("/admin/rlhf/loopsettings/add/", form)
    assert response.status_code == 200 and "algorithm must be one of" in response.content.decode()
    assert not LoopSettings.objects.exists()
    response = world["admin"].post("/admin/rlhf/loopsettings/add/", {**form, "round_params": json.dumps({"policy_steps": 5})})
    assert response.status_code == 302
    assert LoopSettings.objects.get().round_params["policy_steps"] == 5


def test_the_admin_sets_the_promotion_gate_too(world):
    """The gate's settings are in the admin as on the training page; an unknown reward is refused."""
    form = {"project": world["project"].pk, "auto_round_pairs": 0, "round_params": "{}", "promotion_gate": "human",
            "gate_reward": "no_such_reward", "gate_comparisons": 12, "eval_prompts": 50}
    response = world["admin"].post("/admin/rlhf/loopsettings/add/", form)
    assert response.status_code == 200 and "no_such_reward" in response.content.decode()
    response = world["admin"].post("/admin/rlhf/loopsettings/add/", {**form, "gate_reward": "demo_reward"})
    assert response.status_code == 302
    row = LoopSettings.objects.get()
    assert (row.promotion_gate, row.gate_reward, row.gate_comparisons, row.eval_prompts) == ("human", "demo_reward", 12, 50)


def test_every_admin_page_of_the_loop_renders(world):
    client = world["admin"]
    for model, pk in [("trainingrun", world["round"].pk), ("modelversion", _version("policy-v1").pk), ("loopsettings", None)]:
        assert client.get(f"/admin/rlhf/{model}/").status_code == 200, model
        if pk is not None:
            assert client.get(f"/admin/rlhf/{model}/{pk}/change/").status_code == 200, model
