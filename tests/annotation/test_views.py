"""The server-rendered pages over real URLs with Django's client, and the REST API calls the ranking
page makes with its session and CSRF header (the API itself is tested in test_api.py).

Personas: alice is a project admin (and staff), bob an annotator, charlie an outsider.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from annotation import charts, ui_selectors
from annotation.models import Assignment, Candidate, Membership, Project, Ranking, RankingTask
from annotation.services import queue
from tests import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    alice, bob, charlie = f.user("alice", is_staff=True), f.user("bob"), f.user("charlie")
    proj = f.project("shapes", k=3, admins=[alice], annotators=[bob])
    f.tasks(proj, 4)
    return {"alice": alice, "bob": bob, "charlie": charlie, "project": proj}


def client_for(user=None) -> Client:
    client = Client(enforce_csrf_checks=False)
    if user is not None:
        client.force_login(user)
    return client


def test_pages_send_anonymous_visitors_to_the_login_page():
    for url in ["/", "/projects/shapes/work/", "/projects/new/", "/projects/shapes/dashboard/"]:
        response = client_for().get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url


def test_outsiders_are_refused_everywhere(world):
    charlie = client_for(world["charlie"])
    assert charlie.get("/projects/shapes/work/").status_code == 403
    for page in ["dashboard", "import", "members", "export"]:
        assert charlie.get(f"/projects/shapes/{page}/").status_code == 403, page


def test_annotators_may_rank_but_not_administer(world):
    bob = client_for(world["bob"])
    assert bob.get("/projects/shapes/work/").status_code == 200
    for page in ["dashboard", "import", "members", "export"]:
        assert bob.get(f"/projects/shapes/{page}/").status_code == 403, page
    assert bob.get("/projects/new/").status_code == 403


def test_the_home_page_lists_my_projects_with_my_counts(world):
    response = client_for(world["bob"]).get("/")
    assert response.status_code == 200
    assert b"Shapes" in response.content and b"Start ranking" in response.content
    assert b"Dashboard" not in response.content  # bob is no project admin


def test_the_ranking_page_sends_a_strict_content_security_policy_and_no_inline_script(world):
    world["project"].instructions = "**Bold** <script>alert(1)</script> [x](javascript:alert(2))"
    world["project"].save()
    response = client_for(world["bob"]).get("/projects/shapes/work/")
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    html = response.content.decode()
    assert "<strong>Bold</strong>" in html
    assert "<script>alert(1)" not in html and "javascript:" not in html
    assert 'type="application/json"' in html  # the page's config is data, not code


def test_the_ranking_page_works_through_the_rest_api_with_its_session_and_csrf_header(world):
    """The calls the ranking page makes, to the URLs its config names, as a browser sends them: the
    session cookie, and Django's CSRF token in the X-CSRFToken header (DRF's session authentication
    refuses a write without it). Lease, look ahead, submit answering with the next task, skip answering
    with the next task, and the keepalive release on ``pagehide`` (no body)."""
    bob = Client(enforce_csrf_checks=True)
    bob.force_login(world["bob"])
    page = bob.get("/projects/shapes/work/")
    config = page.context["config"]
    assert config["user"] == world["bob"].pk  # keys the drafts kept in the browser
    assert all(u.startswith("/api/") for name, u in config["urls"].items() if name != "home")
    csrf = page.cookies["csrftoken"].value

    def url(name, task_id):  # as work.js fills them in
        return config["urls"][name].replace("/0/", f"/{task_id}/")

    def post(url, body=None, token=csrf):
        headers = {"HTTP_X_CSRFTOKEN": token} if token else {}
        return bob.post(url, data=json.dumps(body) if body is not None else "", content_type="application/json",
                        HTTP_ACCEPT="application/json", **headers)

    refused = post(config["urls"]["next"], {}, token=None)
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]  # no token, no lease
    assert not Assignment.objects.exists()
    task = post(config["urls"]["next"], {}).json()
    ahead = bob.get(f"{config['urls']['upcoming']}?task={task['task_id']}").json()  # a read: no token needed
    assert ahead["upcoming"] and ahead["progress"]["done_today"] == 0

    ids = [c["id"] for c in task["candidates"]]
    body = {"ordering": [[i] for i in ids], "client_uuid": str(uuid.uuid4()), "flags": [], "rationale": "", "time_spent_ms": 900}
    assert post(f"{url('submit', task['task_id'])}?next=1", body, token=None).status_code == 403
    submitted = post(f"{url('submit', task['task_id'])}?next=1", body)
    assert submitted.status_code == 201 and Ranking.objects.get(task_id=task["task_id"]).time_spent_ms == 900
    second = submitted.json()["next_task"]
    assert second["task_id"] != task["task_id"]

    third = post(f"{url('skip', second['task_id'])}?next=1", {}).json()["next_task"]
    assert Assignment.objects.get(task_id=second["task_id"], annotator=world["bob"]).state == Assignment.State.SKIPPED

    release = url("release", third["task_id"])
    assert bob.post(release).status_code == 403  # no token, no release
    response = bob.post(release, HTTP_X_CSRFTOKEN=csrf, HTTP_ACCEPT="application/json")
    assert response.status_code == 204
    assert Assignment.objects.get(task_id=third["task_id"], annotator=world["bob"]).state == Assignment.State.RELEASED


def test_an_ended_session_is_a_401_the_page_can_explain(world):
    """The ranking page says "your session ended" on a 401 and keeps the ranking; the API answers one
    to a request without a session (and without a token)."""
    response = Client(enforce_csrf_checks=True).post("/api/projects/shapes/next/", data="{}", content_type="application/json")
    assert response.status_code == 401 and response.json()["error"] == "not_authenticated"


def test_a_staff_user_creates_a_project_and_becomes_its_admin(world):
    response = client_for(world["alice"]).post(
        "/projects/new/",
        {"name": "Street signs", "slug": "", "task_type": "vqa", "candidates_per_task": 4, "overlap": 2,
         "lease_minutes": 20, "instructions": "Rank.", "base_model": ""},
    )
    assert response.status_code == 302 and response["Location"] == "/projects/street-signs/import/"
    project = Project.objects.get(slug="street-signs")
    assert (project.task_type, project.overlap, project.created_by) == ("vqa", 2, world["alice"])
    assert Membership.objects.get(project=project, user=world["alice"]).role == "admin"


def test_project_creation_refuses_k_outside_2_to_9(world):
    response = client_for(world["alice"]).post(
        "/projects/new/", {"name": "Bad", "task_type": "caption", "candidates_per_task": 12, "overlap": 1, "lease_minutes": 30}
    )
    assert response.status_code == 200
    assert not Project.objects.filter(name="Bad").exists()


def test_members_are_added_changed_and_removed(world):
    alice = client_for(world["alice"])
    alice.post("/projects/shapes/members/", {"username": "charlie", "role": "annotator"})
    assert Membership.objects.get(project=world["project"], user=world["charlie"]).role == "annotator"
    alice.post("/projects/shapes/members/", {"username": "charlie", "role": "admin"})
    assert Membership.objects.get(project=world["project"], user=world["charlie"]).role == "admin"
    response = alice.post("/projects/shapes/members/", {"username": "nobody", "role": "admin"})
    assert b"no user called" in response.content
    alice.post("/projects/shapes/members/", {"remove": "charlie"})
    assert not Membership.objects.filter(project=world["project"], user=world["charlie"]).exists()


def test_the_dashboard_escapes_source_names_and_shows_figures(world):
    proj = world["project"]
    f.task(proj, source="<b>policy-v2</b>")
    for _ in range(2):
        assignment = queue.next_task(annotator=world["bob"], project=proj)
        ids = assignment.task.candidate_ids
        queue.submit_ranking(
            annotator=world["bob"], task_id=assignment.task_id, ordering=[[i] for i in ids],
            client_uuid=uuid.uuid4(), flags={"all_bad"}, time_spent_ms=3000,
        )
    html = client_for(world["alice"]).get("/projects/shapes/dashboard/").content.decode()
    assert "<b>policy-v2</b>" not in html and "&lt;b&gt;policy-v2&lt;/b&gt;" in html
    assert "Rankings per hour" in html and "<svg" in html
    assert "3.0 s" in html  # bob's median time per task


def test_the_export_page_offers_every_format_and_source(world):
    f.task(world["project"], source="policy-v3")
    html = client_for(world["alice"]).get("/projects/shapes/export/").content.decode()
    for fmt in ["records", "trl", "parquet", "rankings"]:
        assert f'value="{fmt}"' in html
    assert 'value="policy-v3"' in html and 'action="/api/projects/shapes/export/"' in html


def test_rankings_per_hour_counts_each_hour_and_keeps_empty_ones(world):
    proj = world["project"]
    now = timezone.now()
    for _ in range(3):
        assignment = queue.next_task(annotator=world["bob"], project=proj)
        ids = assignment.task.candidate_ids
        queue.submit_ranking(annotator=world["bob"], task_id=assignment.task_id, ordering=[ids], client_uuid=uuid.uuid4())
    Ranking.objects.filter(pk=Ranking.objects.first().pk).update(created_at=now - timedelta(hours=5))
    points = ui_selectors.rankings_per_hour(proj, hours=48, now=now)
    assert len(points) == 48 and sum(n for _, n in points) == 3
    assert points[-1][1] == 2 and points[-6][1] == 1


def test_candidates_by_source_counts_wins_and_losses(world):
    proj = world["project"]
    RankingTask.objects.update(state=RankingTask.State.CLOSED)
    task = f.task(proj, texts=["a", "b", "c"])
    Candidate.objects.filter(pk=task.candidate_ids[0]).update(source="policy-v2")
    assignment = queue.next_task(annotator=world["bob"], project=proj)
    ids = assignment.task.candidate_ids
    queue.submit_ranking(annotator=world["bob"], task_id=task.pk, ordering=[[ids[0]], [ids[1], ids[2]]], client_uuid=uuid.uuid4())
    rows = {r["source"]: r for r in ui_selectors.candidates_by_source(proj)}
    assert (rows["policy-v2"]["won"], rows["policy-v2"]["lost"], rows["policy-v2"]["win_rate"]) == (2, 0, 1.0)
    assert (rows["import"]["won"], rows["import"]["lost"], rows["import"]["win_rate"]) == (0, 2, 0.0)


def test_charts_escape_labels_and_scale_to_round_maxima():
    assert [charts._nice_max(v) for v in (0, 1, 3, 7, 12, 99, 101)] == [1, 1, 5, 10, 20, 100, 200]
    svg = charts.horizontal_bars([("<script>", 3, "3 & more")], title="t<", chart_id="x")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "3 &amp; more" in svg
