"""Base models are confined to the configured model roots, for everyone but superusers.

Personas: alice is a project admin (not staff), sam is staff (not a superuser), su (user "root") is a superuser.
The workers load whatever a project names, so a path outside the roots would let a project admin have
them read any folder.
"""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.test import Client
from rest_framework.test import APIClient

from annotation.models import Project
from annotation.services.projects import check_model_path, project_create, project_update
from lensloop.env import env_paths
from tests import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def roots(settings, tmp_path):
    """One model root holding a model, a folder outside it, and a link from inside the root to outside."""
    root = tmp_path / "models"
    (root / "vlm-a").mkdir(parents=True)
    outside = tmp_path / "secrets"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    settings.LENSLOOP_MODEL_ROOTS = [root]
    settings.LENSLOOP_ALLOW_HUB_MODELS = False
    return {"root": root.resolve(), "outside": outside.resolve()}


@pytest.fixture
def world(roots):
    alice, bob = f.user("alice"), f.user("bob")
    sam = f.user("sam", is_staff=True)
    su = f.user("root", is_staff=True, is_superuser=True)
    proj = f.project("shapes", k=2, admins=[alice], annotators=[bob])
    return {"alice": alice, "bob": bob, "sam": sam, "su": su, "project": proj, **roots}


# ------------------------------------------------------------------------------------------ the rule


@pytest.mark.parametrize("value", ["", "demo", " demo "])
def test_the_built_in_demo_model_is_always_allowed(roots, value):
    assert check_model_path(value, user=None) == value.strip()


def test_a_folder_inside_a_root_is_allowed_and_kept_resolved(roots):
    assert check_model_path(str(roots["root"] / "vlm-a"), user=None) == str(roots["root"] / "vlm-a")
    assert check_model_path(str(roots["root"] / "vlm-a" / ".." / "vlm-b"), user=None) == str(roots["root"] / "vlm-b")


@pytest.mark.parametrize(
    "value",
    ["/etc", "{root}/../secrets", "{root}/escape", "{root}/escape/model", "{root}-evil/model", "relative/../../etc", "./vlm-a"],
)
def test_a_path_outside_the_roots_is_refused_naming_them(roots, value):
    """`..`, symbolic links and a sibling folder sharing the root's prefix do not get out."""
    value = value.format(root=roots["root"])
    with pytest.raises(ValidationError) as caught:
        check_model_path(value, user=None)
    assert str(roots["root"]) in caught.value.messages[0]


def test_hub_ids_need_the_setting(roots, settings):
    with pytest.raises(ValidationError, match="LENSLOOP_ALLOW_HUB_MODELS"):
        check_model_path("HuggingFaceTB/SmolVLM-256M-Instruct", user=None)
    settings.LENSLOOP_ALLOW_HUB_MODELS = True
    assert check_model_path("HuggingFaceTB/SmolVLM-256M-Instruct", user=None) == "HuggingFaceTB/SmolVLM-256M-Instruct"
    for value in ("../etc", "a/..", ".hidden/x", "/etc/passwd", "a/b/c"):
        with pytest.raises(ValidationError):
            check_model_path(value, user=None)


def test_a_hub_id_that_is_also_a_local_folder_is_refused(roots, settings, tmp_path, monkeypatch):
    """The engine would load the local folder of that name before asking the hub."""
    settings.LENSLOOP_ALLOW_HUB_MODELS = True
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match="also a folder"):
        check_model_path("org/name", user=None)


def test_a_superuser_may_name_any_path(world):
    assert check_model_path("/opt/shared/vlm", user=world["su"]) == "/opt/shared/vlm"
    with pytest.raises(ValidationError):
        check_model_path("/opt/shared/vlm", user=world["sam"])


def test_model_roots_come_from_a_colon_separated_list_of_absolute_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("LENSLOOP_MODEL_ROOTS", f"{tmp_path}/a/../b::{tmp_path}/c")
    assert env_paths("LENSLOOP_MODEL_ROOTS", []) == [(tmp_path / "b").resolve(), (tmp_path / "c").resolve()]
    monkeypatch.setenv("LENSLOOP_MODEL_ROOTS", "models")
    with pytest.raises(ImproperlyConfigured, match="not an absolute path"):
        env_paths("LENSLOOP_MODEL_ROOTS", [])
    monkeypatch.delenv("LENSLOOP_MODEL_ROOTS")
    assert env_paths("LENSLOOP_MODEL_ROOTS", [tmp_path / "x" / ".."]) == [tmp_path.resolve()]


# ------------------------------------------------------------------------------------------ the services


def test_project_create_refuses_an_outside_path_for_a_staff_creator(world):
    with pytest.raises(ValidationError) as caught:
        project_create(name="Leak", created_by=world["sam"], base_model=str(world["outside"]))
    assert "base_model" in caught.value.message_dict
    assert not Project.objects.filter(name="Leak").exists()
    made = project_create(name="Fine", created_by=world["sam"], base_model=str(world["root"] / "vlm-a"))
    assert made.base_model == str(world["root"] / "vlm-a")


def test_project_create_lets_a_superuser_and_the_command_line_name_any_path(world):
    assert project_create(name="Su", created_by=world["su"], base_model="/opt/vlm").base_model == "/opt/vlm"
    assert project_create(name="Cli", base_model="/opt/vlm").base_model == "/opt/vlm"
    assert project_create(name="Cli2", created_by=world["alice"], base_model="/opt/vlm", any_model_path=True).base_model


def test_project_update_refuses_an_outside_path_for_a_project_admin(world):
    proj = world["project"]
    with pytest.raises(ValidationError):
        project_update(project=proj, user=world["alice"], base_model=str(world["outside"]))
    proj.refresh_from_db()
    assert proj.base_model == ""


def test_project_update_keeps_a_path_a_superuser_set_when_other_fields_change(world):
    proj = world["project"]
    project_update(project=proj, user=world["su"], base_model="/opt/vlm")
    project_update(project=proj, user=world["alice"], name="Renamed", base_model="/opt/vlm")
    proj.refresh_from_db()
    assert (proj.name, proj.base_model) == ("Renamed", "/opt/vlm")


# ------------------------------------------------------------------------------------------ the API


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_a_project_admin_cannot_patch_the_base_model_outside_the_roots(world):
    for value in (str(world["outside"]), f"{world['root']}/escape", f"{world['root']}/../secrets", "org/name"):
        response = _api(world["alice"]).patch("/api/projects/shapes/", {"base_model": value}, format="json")
        assert response.status_code == 400, value
        body = response.json()
        assert body["error"] == "invalid" and "base_model" in body["fields"]
        assert str(world["root"]) in body["detail"]
    world["project"].refresh_from_db()
    assert world["project"].base_model == ""


def test_a_project_admin_may_patch_a_base_model_inside_the_roots(world):
    value = f"{world['root']}/vlm-a/../vlm-a"
    response = _api(world["alice"]).patch("/api/projects/shapes/", {"base_model": value}, format="json")
    assert response.status_code == 200 and response.json()["base_model"] == str(world["root"] / "vlm-a")
    world["project"].refresh_from_db()
    assert world["project"].base_model == str(world["root"] / "vlm-a")


def test_creating_a_project_over_the_api_checks_the_base_model(world):
    body = {"name": "Leak", "candidates_per_task": 3, "base_model": str(world["outside"])}
    response = _api(world["sam"]).post("/api/projects/", body, format="json")
    assert response.status_code == 400 and "base_model" in response.json()["fields"]
    assert _api(world["su"]).post("/api/projects/", body, format="json").status_code == 201


# ------------------------------------------------------------------------------------------ the web form


def test_the_new_project_form_refuses_an_outside_path_for_staff(world):
    client = Client()
    client.force_login(world["sam"])
    form = {"name": "Leak", "slug": "", "task_type": "caption", "candidates_per_task": 3, "overlap": 1,
            "lease_minutes": 30, "instructions": "", "base_model": str(world["outside"])}
    response = client.post("/projects/new/", form)
    assert response.status_code == 200
    assert str(world["root"]) in response.content.decode()
    assert not Project.objects.filter(name="Leak").exists()
    response = client.post("/projects/new/", {**form, "base_model": str(world["root"] / "vlm-a")})
    assert response.status_code == 302
    assert Project.objects.get(name="Leak").base_model == str(world["root"] / "vlm-a")
