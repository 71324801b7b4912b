"""The server-rendered pages and the ranking page's JSON endpoints, over real URLs with Django's client.

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
from annotation.models import Assignment, Candidate, Membership, PreferencePair, Project, Ranking, RankingTask
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


def post_json(client, url, body=None):
    return client.post(url, data=json.dumps(body or {}), content_type="application/json")


def test_pages_send_anonymous_visitors_to_the_login_page():
    for url in ["/", "/projects/shapes/work/", "/projects/new/", "/projects/shapes/dashboard/"]:
        response = client_for().get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url


def test_json_endpoints_answer_401_to_anonymous_clients(world):
    response = post_json(client_for(), "/projects/shapes/work/next/")
    assert response.status_code == 401
    assert "log in again" in response.json()["detail"]


def test_outsiders_are_refused_everywhere(world):
    charlie = client_for(world["charlie"])
    assert charlie.get("/projects/shapes/work/").status_code == 403
    assert post_json(charlie, "/projects/shapes/work/next/").status_code == 403
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


def test_next_leases_a_task_and_names_the_images_likely_to_follow(world):
    bob = client_for(world["bob"])
    body = post_json(bob, "/projects/shapes/work/next/").json()
    task = body["task"]
    assert Assignment.objects.get(task_id=task["task_id"], annotator=world["bob"]).state == Assignment.State.ACTIVE
    assert len(task["candidates"]) == 3 and all(set(c) == {"id", "text"} for c in task["candidates"])  # no source
    assert [u["task_id"] for u in body["upcoming"]] and task["task_id"] not in [u["task_id"] for u in body["upcoming"]]
    assert body["progress"]["done_today"] == 0
    # Asking again gives the same task: the lease holds.
    assert post_json(bob, "/projects/shapes/work/next/").json()["task"]["task_id"] == task["task_id"]


def test_the_page_gives_an_untouched_lease_back_with_its_session_and_csrf_header(world):
    """What the ranking page sends on ``pagehide``: a keepalive POST to the config's release URL that
    carries the session cookie and the CSRF token in a header, no body."""
    bob = Client(enforce_csrf_checks=True)
    bob.force_login(world["bob"])
    page = bob.get("/projects/shapes/work/")
    config = page.context["config"]
    assert config["user"] == world["bob"].pk  # keys the drafts kept in the browser
    csrf = page.cookies["csrftoken"].value
    next_body = bob.post("/projects/shapes/work/next/", data="{}", content_type="application/json", HTTP_X_CSRFTOKEN=csrf)
    task_id = next_body.json()["task"]["task_id"]
    release = config["urls"]["apiRelease"].replace("/0/", f"/{task_id}/")

    assert bob.post(release).status_code == 403  # no token, no release
    response = bob.post(release, HTTP_X_CSRFTOKEN=csrf, HTTP_ACCEPT="application/json")
    assert response.status_code == 204
    assert Assignment.objects.get(task_id=task_id, annotator=world["bob"]).state == Assignment.State.RELEASED


def test_submit_stores_the_ranking_and_answers_with_the_next_task(world):
    bob = client_for(world["bob"])
    task = post_json(bob, "/projects/shapes/work/next/").json()["task"]
    a, b, c = (cand["id"] for cand in task["candidates"])
    body = {"ordering": [[b], [a, c]], "client_uuid": str(uuid.uuid4()), "flags": ["unsafe"], "rationale": "r"}
    response = post_json(bob, f"/projects/shapes/work/tasks/{task['task_id']}/submit/", body)
    assert response.status_code == 201
    data = response.json()
    assert data["ranking"]["created"] is True
    assert data["task"]["task_id"] != task["task_id"]
    ranking = Ranking.objects.get(task_id=task["task_id"])
    assert ranking.ordering == [[b], [a, c]] and ranking.flag_unsafe and ranking.rationale == "r"
    assert set(PreferencePair.objects.filter(ranking=ranking).values_list("chosen_id", "rejected_id")) == {(b, a), (b, c)}

    # The same submit again (a double click, a retry): the first result, nothing new.
    again = post_json(bob, f"/projects/shapes/work/tasks/{task['task_id']}/submit/", body)
    assert again.status_code == 200 and again.json()["ranking"]["id"] == ranking.pk
    assert Ranking.objects.count() == 1


def test_ahead_names_upcoming_images_and_progress_without_leasing(world):
    bob = client_for(world["bob"])
    task = post_json(bob, "/projects/shapes/work/next/").json()["task"]
    leases = Assignment.objects.count()
    data = bob.get(f"/projects/shapes/work/ahead/?task={task['task_id']}").json()
    assert len(data["upcoming"]) == 2 and task["task_id"] not in [u["task_id"] for u in data["upcoming"]]
    assert all(u["image_url"].startswith("/api/projects/shapes/images/") for u in data["upcoming"])
    assert data["progress"] == {"done_today": 0, "done_total": 0, "open_in_queue": 3}
    assert Assignment.objects.count() == leases
    assert client_for(world["charlie"]).get("/projects/shapes/work/ahead/").status_code == 403


def test_submit_refuses_a_ranking_that_leaves_a_candidate_out(world):
    bob = client_for(world["bob"])
    task = post_json(bob, "/projects/shapes/work/next/").json()["task"]
    body = {"ordering": [[task["candidates"][0]["id"]]], "client_uuid": str(uuid.uuid4())}
    response = post_json(bob, f"/projects/shapes/work/tasks/{task['task_id']}/submit/", body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_ranking"
    assert not Ranking.objects.exists()


def test_submit_after_the_task_went_to_someone_else_is_a_409(world):
    dave = f.user("dave")
    Membership.objects.create(project=world["project"], user=dave)
    bob = client_for(world["bob"])
    task = post_json(bob, "/projects/shapes/work/next/").json()["task"]
    Assignment.objects.filter(annotator=world["bob"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    RankingTask.objects.exclude(pk=task["task_id"]).update(state=RankingTask.State.CLOSED)
    assert queue.next_task(annotator=dave, project=world["project"]).task_id == task["task_id"]
    ordering = [[c["id"]] for c in task["candidates"]]
    response = post_json(bob, f"/projects/shapes/work/tasks/{task['task_id']}/submit/", {"ordering": ordering, "client_uuid": str(uuid.uuid4())})
    assert response.status_code == 409
    assert response.json()["error"] == "lease_lost"
    assert "another annotator" in response.json()["detail"]


def test_submit_to_a_task_of_another_project_is_a_404(world):
    other = f.project("other", k=3, annotators=[world["bob"]])
    foreign = f.task(other)
    response = post_json(client_for(world["bob"]), f"/projects/shapes/work/tasks/{foreign.pk}/submit/", {})
    assert response.status_code == 404


def test_skip_ends_the_lease_and_answers_with_the_next_task(world):
    bob = client_for(world["bob"])
    task = post_json(bob, "/projects/shapes/work/next/").json()["task"]
    data = post_json(bob, f"/projects/shapes/work/tasks/{task['task_id']}/skip/", {"reason": "blurry"}).json()
    assert data["task"]["task_id"] != task["task_id"]
    skipped = Assignment.objects.get(task_id=task["task_id"], annotator=world["bob"])
    assert skipped.state == Assignment.State.SKIPPED and skipped.skip_reason == "blurry"


def test_an_empty_queue_answers_with_no_task(world):
    RankingTask.objects.update(state=RankingTask.State.DONE)
    data = post_json(client_for(world["bob"]), "/projects/shapes/work/next/").json()
    assert data["task"] is None and data["upcoming"] == []


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
