"""The loop's REST API: who may launch, watch, cancel; clear errors. Nothing runs here (no worker):
the jobs wait in Redis."""

import uuid

import pytest
from rest_framework.test import APIClient

from annotation.services import queue
from lensloop.queue import get_queue
from rlhf.models import TrainingRun
from tests import factories as f

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world():
    alice, bob, charlie = f.user("alice"), f.user("bob"), f.user("charlie")
    proj = f.project("loopapi", k=2, admins=[alice], annotators=[bob])
    f.tasks(proj, 2)
    for get_queue_name in ("train", "generate"):
        get_queue(get_queue_name).empty()
    return {"alice": alice, "bob": bob, "charlie": charlie, "project": proj}


def _client(user=None):
    client = APIClient()
    if user:
        client.force_authenticate(user)
    return client


def _rank_one(world):
    a = queue.next_task(annotator=world["bob"], project=world["project"])
    queue.submit_ranking(annotator=world["bob"], task_id=a.task_id, ordering=[[c] for c in a.task.candidate_ids], client_uuid=uuid.uuid4())


def test_a_round_needs_pairs_first(world):
    response = _client(world["alice"]).post("/api/projects/loopapi/rounds/", {}, format="json")
    assert response.status_code == 400 and "no preference pairs" in response.json()["detail"]


def test_a_project_admin_launches_a_round_and_a_second_one_is_refused_while_it_runs(world):
    _rank_one(world)
    alice = _client(world["alice"])
    first = alice.post("/api/projects/loopapi/rounds/", {"algorithm": "dpo", "policy_steps": 5}, format="json")
    assert first.status_code == 201, first.json()
    body = first.json()
    assert [s["kind"] for s in body["steps"]] == ["export", "reward", "dpo", "evaluate", "register", "generate"]
    assert len(get_queue("train").job_ids) == 1  # the chain: later steps wait on their predecessor
    second = alice.post("/api/projects/loopapi/rounds/", {}, format="json")
    assert second.status_code == 409 and second.json()["error"] == "round_in_progress"
    cancelled = alice.post(f"/api/runs/{body['id']}/cancel/")
    assert cancelled.json()["state"] == "cancelled"
    assert set(TrainingRun.objects.filter(round_id=body["id"]).values_list("state", flat=True)) == {"cancelled"}
    assert alice.post("/api/projects/loopapi/rounds/", {}, format="json").status_code == 201


@pytest.mark.parametrize(("persona", "launch", "read"), [("bob", 403, 200), ("charlie", 403, 403), (None, 401, 401)])
def test_only_project_admins_launch_and_only_members_watch(world, persona, launch, read):
    _rank_one(world)
    client = _client(world[persona] if persona else None)
    assert client.post("/api/projects/loopapi/rounds/", {}, format="json").status_code == launch
    assert client.get("/api/projects/loopapi/runs/").status_code == read
    assert client.get("/api/projects/loopapi/versions/").status_code == read
    assert client.get("/api/projects/loopapi/leaderboard/").status_code == read


def test_bad_parameters_are_a_400_naming_the_field(world):
    _rank_one(world)
    response = _client(world["alice"]).post("/api/projects/loopapi/rounds/", {"algorithm": "reinforce", "lora_r": 0}, format="json")
    assert response.status_code == 400 and {"algorithm", "lora_r"} <= set(response.json()["fields"])


def test_a_value_an_engine_step_would_refuse_is_a_400_before_anything_is_queued(world):
    _rank_one(world)
    response = _client(world["alice"]).post("/api/projects/loopapi/rounds/", {"policy_batch_size": 3}, format="json")
    assert response.status_code == 400, response.json()
    assert "ppo step would refuse" in response.json()["detail"] and "policy_batch_size" in response.json()["detail"]
    assert not TrainingRun.objects.filter(project__slug="loopapi").exists()


def test_an_unknown_peft_method_is_a_400_naming_the_field_and_nothing_is_queued(world):
    _rank_one(world)
    response = _client(world["alice"]).post("/api/projects/loopapi/rounds/", {"peft_method": "prefix"}, format="json")
    assert response.status_code == 400 and "peft_method" in response.json()["fields"], response.json()
    assert not TrainingRun.objects.filter(project__slug="loopapi").exists()
    assert get_queue("train").count == 0


def test_prompt_tuning_on_a_family_it_cannot_train_is_a_400_before_anything_is_queued(world, tmp_path):
    _rank_one(world)
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_vl"}')
    world["project"].base_model = str(tmp_path)
    world["project"].save(update_fields=["base_model"])
    response = _client(world["alice"]).post("/api/projects/loopapi/rounds/", {"peft_method": "prompt_tuning"},
                                            format="json")
    assert response.status_code == 400, response.json()
    assert "cannot train a 'qwen2_vl' model: it computes its 3-D rotary positions" in response.json()["detail"]
    assert not TrainingRun.objects.filter(project__slug="loopapi").exists()
    assert get_queue("train").count == 0


def test_a_peft_method_4bit_cannot_take_is_a_400_before_anything_is_queued(world):
    _rank_one(world)
    response = _client(world["alice"]).post("/api/projects/loopapi/rounds/", {"peft_method": "loha", "qlora": True},
                                            format="json")
    assert response.status_code == 400, response.json()
    assert "peft_method='loha' cannot train on 4-bit" in response.json()["detail"]
    assert not TrainingRun.objects.filter(project__slug="loopapi").exists()


def test_comparing_versions_needs_two_existing_policies(world):
    response = _client(world["alice"]).post("/api/projects/loopapi/generate/", {"compare": ["base", "policy-v9"]}, format="json")
    assert response.status_code == 400 and "two different policy versions" in response.json()["detail"]


def test_a_projects_engine_settings_apply_to_its_rounds_unless_a_round_overrides_them(world):
    _rank_one(world)
    alice, bob = _client(world["alice"]), _client(world["bob"])
    settings = {"round_params": {"lora_modules_to_save": ["lm_head"], "policy_batch_size": 32}}
    assert bob.patch("/api/projects/loopapi/loop-settings/", settings, format="json").status_code == 403
    saved = alice.patch("/api/projects/loopapi/loop-settings/", settings, format="json")
    assert saved.status_code == 200, saved.json()
    assert saved.json()["round_params"]["lora_modules_to_save"] == ["lm_head"]
    assert bob.get("/api/projects/loopapi/loop-settings/").json()["round_params"]["policy_batch_size"] == 32
    patched = alice.patch("/api/projects/loopapi/loop-settings/", {"round_params": {"policy_steps": 9}}, format="json")
    assert patched.json()["round_params"]["lora_modules_to_save"] == ["lm_head"]  # the rest stays
    assert patched.json()["round_params"]["policy_steps"] == 9

    first = alice.post("/api/projects/loopapi/rounds/", {"algorithm": "grpo"}, format="json")
    assert first.status_code == 201, first.json()
    config = TrainingRun.objects.get(pk=first.json()["id"]).config
    assert config["lora_modules_to_save"] == ["lm_head"] and config["policy_batch_size"] == 32
    alice.post(f"/api/runs/{first.json()['id']}/cancel/")
    second = alice.post("/api/projects/loopapi/rounds/", {"policy_batch_size": 8}, format="json")
    assert TrainingRun.objects.get(pk=second.json()["id"]).config["policy_batch_size"] == 8


def test_bad_engine_settings_are_refused_with_a_reason(world):
    alice = _client(world["alice"])
    bad = alice.patch("/api/projects/loopapi/loop-settings/", {"round_params": {"use_reward_model": False}}, format="json")
    assert bad.status_code == 400 and "needs a verifiable_reward" in bad.json()["detail"]
    bad = alice.patch("/api/projects/loopapi/loop-settings/", {"round_params": {"lora_rank": 4}}, format="json")
    assert bad.status_code == 400 and "unknown field(s) ['lora_rank']" in bad.json()["detail"]


@pytest.mark.parametrize("key", ["base_model", "model_path", "path", "adapter_path", "reward_model_path", "run_dir"])
def test_no_round_parameter_names_a_model_path(world, key):
    """The project's base model is the only model path a project admin sets (checked against the model
    roots, tests/annotation/test_model_paths.py); round parameters carry none."""
    _rank_one(world)
    alice = _client(world["alice"])
    bad = alice.patch("/api/projects/loopapi/loop-settings/", {"round_params": {key: "/etc"}}, format="json")
    assert bad.status_code == 400 and f"unknown field(s) ['{key}']" in bad.json()["detail"]
    started = alice.post("/api/projects/loopapi/rounds/", {key: "/etc"}, format="json")
    assert started.status_code == 201
    assert "/etc" not in str(TrainingRun.objects.get(pk=started.json()["id"]).config)


def test_a_new_round_never_reuses_a_folder_left_by_another_database(world):
    """A database reset with the data folder kept: the engine must not resume a stranger's checkpoint."""
    from rlhf.services import cancel_run, runs_root, start_round

    _rank_one(world)
    first = start_round(project=world["project"], enqueue=False)
    cancel_run(first)
    next_pk = max(first.steps.values_list("pk", flat=True)) + 1
    stale = runs_root() / f"round-{next_pk}" / "3-ppo" / "checkpoint"
    stale.mkdir(parents=True)
    second = start_round(project=world["project"], enqueue=False)
    assert second.pk == next_pk and not (runs_root() / f"round-{next_pk}" / "3-ppo").exists()
    assert [p.name for p in runs_root().glob(f"round-{next_pk}.orphan-*/3-ppo/checkpoint")] == ["checkpoint"]


def test_an_admin_rolls_the_policy_back_and_the_next_round_continues_from_it(world, tmp_path):
    from rlhf.models import ModelVersion
    from rlhf.services import activate_versions, base_policy

    project = world["project"]
    base = base_policy(project)
    (tmp_path / "v1").mkdir()
    v1 = ModelVersion.objects.create(project=project, kind="policy", label="policy-v1", parent=base,
                                     base_model=base.base_model, path=str(tmp_path / "v1"), weights="adapter")
    activate_versions(v1)
    gone = ModelVersion.objects.create(project=project, kind="policy", label="policy-v2", parent=v1,
                                       base_model=base.base_model, path=str(tmp_path / "deleted"), weights="adapter")
    alice, bob = _client(world["alice"]), _client(world["bob"])

    assert bob.post(f"/api/versions/{base.pk}/activate/").status_code == 403
    assert _client(world["charlie"]).post(f"/api/versions/{base.pk}/activate/").status_code == 403
    refused = alice.post(f"/api/versions/{gone.pk}/activate/")
    assert refused.status_code == 400 and "its files are gone" in refused.json()["detail"]
    assert ModelVersion.objects.get(project=project, kind="policy", active=True) == v1  # nothing changed

    back = alice.post(f"/api/versions/{base.pk}/activate/")
    assert back.status_code == 200 and back.json()["active"] is True and back.json()["label"] == "base"
    assert list(ModelVersion.objects.filter(project=project, kind="policy", active=True)) == [base]
    assert base_policy(project) == base  # what the next round's policy step and new samples start from

    _rank_one(world)
    run = alice.post("/api/projects/loopapi/rounds/", {}, format="json").json()
    during = alice.post(f"/api/versions/{v1.pk}/activate/")
    assert during.status_code == 409 and during.json()["error"] == "round_in_progress"
    assert base_policy(project) == base
    alice.post(f"/api/runs/{run['id']}/cancel/")
    assert alice.post(f"/api/versions/{v1.pk}/activate/").json()["active"] is True
