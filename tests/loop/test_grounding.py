"""Grounding projects in the loop: the demo's grounding project ranked by simulated annotators by IoU, rounds
launched from the Training page and the API carrying the IoU reward, and a grounding round end to end (real
Redis, real rq worker, the real engine on the tiny model: export → reward model → GRPO with `iou_reward` →
held-out evaluation → new box tasks).

Personas: alice administers the project; the demo's own accounts in the demo tests.
"""

import pytest
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from annotation.models import PreferencePair, Project, Prompt, RankingTask
from annotation.services.imports import import_bundle
from lensloop.queue import get_queue
from rlhf.engine.demo import world
from rlhf.engine.rewards import REWARDS, iou_reward
from rlhf.models import LoopSettings, ModelVersion, TrainingRun
from rlhf.services import ROUND_DEFAULTS, loop_settings_set
from rlhf.simulate import simulate
from tests import factories as f
from tests.loop.conftest import FAST_ROUND
from tests.support import child_env, manage

FORM = {k: ("on" if v is True else v) for k, v in ROUND_DEFAULTS.items() if v is not False}


@pytest.fixture
def grounding_project(tiny_model_path, tmp_path):
    """30 grounding scenes with the world's box answers (K=4), 16 of them ranked by two simulated annotators;
    the project's rounds add `iou_reward` to the reward model's, its gate is off (mechanics, not promotion)."""
    alice = f.user("alice", is_staff=True)
    proj = f.project("boxes", k=4, admins=[alice])
    proj.base_model, proj.task_type = str(tiny_model_path), Project.TaskType.GROUNDING
    proj.save(update_fields=["base_model", "task_type"])
    world.write_demo_manifest(tmp_path / "bundle", n=30, seed=5, k=4, task_type="grounding", eval_fraction=0.2)
    import_bundle(project=proj, path=tmp_path / "bundle")
    loop_settings_set(project=proj, promotion_gate="off", round_params={"verifiable_reward": "iou_reward"})
    simulate(proj, annotators=2, noise=0.1, limit=16)
    for name in ("train", "generate"):
        get_queue(name).empty()
    return proj


@pytest.mark.django_db
def test_the_demo_grounding_project_is_ranked_by_the_iou_of_its_boxes(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    call_command("demo", task="grounding", images=12)
    project = Project.objects.get(slug="demo-grounding")
    assert project.task_type == "grounding" and project.get_task_type_display().startswith("Grounding")
    loop = LoopSettings.objects.get(project=project)
    assert loop.gate_reward == "iou_reward" and loop.round_params["verifiable_reward"] == "iou_reward"
    for prompt in Prompt.objects.filter(project=project):
        assert prompt.text.startswith("Where is the ")
        assert iou_reward([prompt.text], prompt.reference, ground_truth=[prompt.ground_truth]) == [1.0]
    call_command("simulate_annotators", project="demo-grounding", annotators=2, noise=0.0)
    pairs = PreferencePair.objects.filter(project=project).select_related("prompt", "chosen", "rejected")
    assert pairs.count() > 12
    for pair in pairs:
        gt = pair.prompt.ground_truth
        good, bad = iou_reward([pair.prompt.text] * 2, [pair.chosen.text, pair.rejected.text], ground_truth=[gt, gt])
        assert good > bad, (pair.chosen.text, pair.rejected.text, gt["box"])
    call_command("demo", task="grounding", images=12)  # idempotent: a second start adds nothing
    assert Prompt.objects.filter(project=project).count() == 12


@pytest.mark.django_db
def test_the_demo_detection_project_uses_the_detection_reward(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    call_command("demo", task="detection", images=6)
    project = Project.objects.get(slug="demo-detection")
    assert project.task_type == "detection"
    assert LoopSettings.objects.get(project=project).gate_reward == "detection_reward"
    detect = REWARDS["detection_reward"]
    for prompt in Prompt.objects.filter(project=project):
        assert detect([prompt.text], prompt.reference, ground_truth=[prompt.ground_truth]) == [1.0]
    assert RankingTask.objects.filter(project=project).count() == 6


@pytest.mark.django_db(transaction=True)
def test_rounds_of_a_grounding_project_carry_the_iou_reward_from_the_page_and_the_api(grounding_project):
    alice = grounding_project.memberships.get(role="admin").user
    page = Client()
    page.force_login(alice)
    response = page.post(f"/projects/{grounding_project.slug}/training/rounds/", {**FORM, "algorithm": "grpo"})
    assert response.status_code == 302, response.content[:2000]
    first = TrainingRun.objects.get(project=grounding_project, kind="round")
    assert first.config["verifiable_reward"] == "iou_reward" and first.config["algorithm"] == "grpo"
    TrainingRun.objects.filter(project=grounding_project).update(state="cancelled")

    api = APIClient()
    api.force_authenticate(alice)
    bad = api.post(f"/api/projects/{grounding_project.slug}/rounds/", {"verifiable_reward": "iou"}, format="json")
    assert bad.status_code == 400 and "verifiable_reward" in str(bad.json()), bad.json()
    made = api.post(f"/api/projects/{grounding_project.slug}/rounds/", {"algorithm": "ppo", "policy_steps": 3},
                    format="json")
    assert made.status_code == 201, made.json()
    assert TrainingRun.objects.get(pk=made.json()["id"]).config["verifiable_reward"] == "iou_reward"

    # The box rewards as a project's settings (docs/import-export.md, "Box answers"); a wrong name is refused.
    url = f"/api/projects/{grounding_project.slug}/loop-settings/"
    wrong = api.patch(url, {"gate_reward": "iou"}, format="json")
    assert wrong.status_code == 400 and "gate_reward" in str(wrong.json()), wrong.json()
    assert LoopSettings.objects.get(project=grounding_project).gate_reward == ""  # nothing saved
    right = api.patch(url, {"round_params": {"verifiable_reward": "detection_reward"}, "gate_reward": "detection_reward"},
                      format="json")
    assert right.status_code == 200, right.json()
    assert right.json()["round_params"]["verifiable_reward"] == right.json()["gate_reward"] == "detection_reward"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_grounding_round_runs_end_to_end_with_the_iou_reward(grounding_project):
    alice = grounding_project.memberships.get(role="admin").user
    api = APIClient()
    api.force_authenticate(alice)
    made = api.post(f"/api/projects/{grounding_project.slug}/rounds/", {**FAST_ROUND, "algorithm": "grpo"},
                    format="json")
    assert made.status_code == 201, made.json()
    done = manage("worker", "train", "generate", "--burst", env=child_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    round_run = TrainingRun.objects.get(pk=made.json()["id"])
    steps = {s.kind: s for s in round_run.steps.all()}
    assert round_run.state == "succeeded", "; ".join(f"{k}: {s.state} {s.error[-800:]}" for k, s in steps.items())
    assert round_run.config["verifiable_reward"] == "iou_reward"
    policy = ModelVersion.objects.get(project=grounding_project, kind="policy", active=True)
    held_out = policy.metrics["eval"]
    # The held-out figures of a grounding round: the IoU reward's mean (with its interval) and the demo metrics'
    # mean IoU of the same greedy answers, the same number.
    assert 0.0 <= held_out["policy/verifiable"] <= 1.0 and held_out["policy/verifiable_n"] > 0, sorted(held_out)
    assert abs(held_out["policy/grounding/iou"] - held_out["policy/verifiable"]) < 1e-9
    new_tasks = RankingTask.objects.filter(project=grounding_project, origin=f"run-{steps['generate'].pk}")
    assert new_tasks.exists()
