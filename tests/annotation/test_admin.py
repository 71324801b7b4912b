"""The Django admin cannot change what the services own: staff post real admin forms, and the task's state
and counters, leases, rankings and base models stay as the services' rules leave them.

Personas: root is a superuser (every admin permission), sam is staff with every annotation permission
but not a superuser, bob an annotator.
"""

from __future__ import annotations

import uuid
from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from annotation.models import Assignment, Project, Prompt, Ranking, RankingTask
from annotation.services import queue
from tests import factories as f

pytestmark = pytest.mark.django_db


class _FormFields(HTMLParser):
    """The values a browser would post from the admin's change form (inputs, selects, textareas)."""

    def __init__(self):
        super().__init__()
        self.data: dict[str, list[str]] = {}
        self._select = self._textarea = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        name = a.get("name")
        if tag == "input" and name and a.get("type") not in ("submit", "button", "file"):
            if a.get("type") in ("checkbox", "radio") and "checked" not in a:
                return
            self.data.setdefault(name, []).append(a.get("value", "on" if a.get("type") == "checkbox" else ""))
        elif tag == "select" and name:
            self._select = name
            self.data.setdefault(name, [])
        elif tag == "option" and self._select and "selected" in a:
            self.data[self._select].append(a.get("value", ""))
        elif tag == "textarea" and name:
            self._textarea = name
            self.data[name] = [""]

    def handle_data(self, data):
        if self._textarea:
            self.data[self._textarea][0] += data

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            if self._textarea:
                self.data[self._textarea][0] = self.data[self._textarea][0].lstrip("\n")
            self._textarea = None


def post_change_form(client, url, **changes):
    """GET the admin's change form, change some fields, POST it back as a browser would."""
    page = client.get(url)
    assert page.status_code == 200, url
    parser = _FormFields()
    parser.feed(page.content.decode())
    data = {**parser.data, **{k: [str(v)] for k, v in changes.items()}}
    data.pop("csrfmiddlewaretoken", None)
    return client.post(url, data)


@pytest.fixture
def world():
    root = f.user("root", is_staff=True, is_superuser=True)
    sam = f.user("sam", is_staff=True)
    sam.user_permissions.set(Permission.objects.filter(content_type__app_label="annotation"))
    bob = f.user("bob")
    proj = f.project("shapes", k=2, admins=[sam], annotators=[bob])
    f.tasks(proj, 2)
    leased = queue.next_task(annotator=bob, project=proj)
    return {"root": root, "sam": sam, "bob": bob, "project": proj, "assignment": leased, "task": leased.task}


def admin(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_posted_task_form_changes_the_priority_but_not_the_state_or_the_counters(world):
    task = world["task"]
    before = (task.state, task.leased_count, task.completed_count, task.required_annotations, task.candidate_ids)
    response = post_change_form(
        admin(world["root"]), f"/admin/annotation/rankingtask/{task.pk}/change/",
        priority=7, state="open", leased_count=0, completed_count=1, required_annotations=5, candidate_ids="[1, 2]",
    )
    assert response.status_code == 302
    task.refresh_from_db()
    assert task.priority == 7
    assert (task.state, task.leased_count, task.completed_count, task.required_annotations, task.candidate_ids) == before


def test_leases_rankings_and_candidates_cannot_be_edited_in_the_admin(world):
    assignment, task = world["assignment"], world["task"]
    client = admin(world["root"])
    url = f"/admin/annotation/assignment/{assignment.pk}/change/"
    assert client.post(url, {"state": "expired", "task": task.pk}).status_code == 403
    assignment.refresh_from_db()
    assert assignment.state == Assignment.State.ACTIVE
    queue.submit_ranking(annotator=world["bob"], task_id=task.pk, ordering=[[c] for c in task.candidate_ids],
                         client_uuid=uuid.uuid4())
    ranking = Ranking.objects.get()
    flipped = str([[c] for c in reversed(task.candidate_ids)])
    assert client.post(f"/admin/annotation/ranking/{ranking.pk}/change/", {"ordering": flipped}).status_code == 403
    ranking.refresh_from_db()
    assert ranking.ordering == [[c] for c in task.candidate_ids]
    cand = task.candidate_ids[0]
    assert client.post(f"/admin/annotation/candidate/{cand}/change/", {"text": "rewritten"}).status_code == 403
    assert client.post(f"/admin/annotation/assignment/{assignment.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Assignment.objects.filter(pk=assignment.pk).exists()


def test_no_task_is_added_by_hand(world):
    assert admin(world["root"]).get("/admin/annotation/rankingtask/add/").status_code == 403


def test_closing_tasks_is_an_action_that_calls_the_service(world):
    task, assignment = world["task"], world["assignment"]
    response = admin(world["root"]).post(
        "/admin/annotation/rankingtask/", {"action": "close_tasks", "_selected_action": [task.pk]}
    )
    assert response.status_code == 302
    task.refresh_from_db()
    assignment.refresh_from_db()
    assert (task.state, task.leased_count) == (RankingTask.State.CLOSED, 0)
    assert assignment.state == Assignment.State.EXPIRED  # the lease ended as close_task ends it


def test_a_prompts_split_stays_when_its_form_is_posted(world):
    prompt = world["task"].prompt
    response = post_change_form(admin(world["root"]), f"/admin/annotation/prompt/{prompt.pk}/change/",
                                split="eval", text="other", external_id="row-9")
    assert response.status_code == 302
    prompt.refresh_from_db()
    assert (prompt.split, prompt.external_id) == (Prompt.Split.TRAIN, "row-9")
    assert prompt.text != "other"


def test_staff_cannot_point_a_project_outside_the_model_roots_in_the_admin(world, settings, tmp_path):
    settings.LENSLOOP_MODEL_ROOTS = [tmp_path / "models"]
    url = f"/admin/annotation/project/{world['project'].pk}/change/"
    response = post_change_form(admin(world["sam"]), url, base_model="/etc")
    assert response.status_code == 200 and str(tmp_path / "models") in response.content.decode()
    world["project"].refresh_from_db()
    assert world["project"].base_model == ""
    inside = tmp_path / "models" / "vlm"
    assert post_change_form(admin(world["sam"]), url, base_model=str(inside)).status_code == 302
    assert post_change_form(admin(world["root"]), url, base_model="/opt/any/vlm").status_code == 302
    world["project"].refresh_from_db()
    assert world["project"].base_model == "/opt/any/vlm"
    # staff may still edit other fields of a project whose path a superuser set
    assert post_change_form(admin(world["sam"]), url, name="Renamed").status_code == 302


def test_deleting_a_task_or_a_project_still_takes_its_records(world):
    task = world["task"]
    client = admin(world["root"])
    assert client.post(f"/admin/annotation/rankingtask/{task.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Assignment.objects.filter(task_id=task.pk).exists()
    project = world["project"]
    assert client.post(f"/admin/annotation/project/{project.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Project.objects.filter(pk=project.pk).exists()


def test_every_admin_page_of_the_app_renders(world):
    """The read-only views and forms of each model, with real rows."""
    client = admin(world["root"])
    for model, pk in [("project", world["project"].pk), ("membership", None), ("image", world["task"].prompt.image_id),
                      ("prompt", world["task"].prompt_id), ("candidate", world["task"].candidate_ids[0]),
                      ("rankingtask", world["task"].pk), ("assignment", world["assignment"].pk), ("ranking", None),
                      ("preferencepair", None)]:
        assert client.get(f"/admin/annotation/{model}/").status_code == 200, model
        if pk is not None:
            assert client.get(f"/admin/annotation/{model}/{pk}/change/").status_code == 200, model
