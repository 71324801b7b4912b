"""Reviewing rankings: the service, the export it changes, the REST API and the page.

Personas: alice is an admin of "shapes", bob its annotator, charlie an outsider; dora is the admin of
another project, "other".
"""

import json
import uuid

import pytest
from django.test import Client
from rest_framework.test import APIClient

from annotation.exceptions import NotFound
from annotation.models import PreferencePair, Ranking
from annotation.services import queue, reviews
from annotation.services.exports import ExportFilter, write_export
from tests import factories as f

pytestmark = pytest.mark.django_db


def _rank(user, proj) -> Ranking:
    assignment = queue.next_task(annotator=user, project=proj)
    c = assignment.task.candidate_ids
    return queue.submit_ranking(
        annotator=user, task_id=assignment.task_id, ordering=[[c[0]], [c[1], c[2]]], client_uuid=uuid.uuid4(),
        flags=["unsafe"], rationale="the first names the shape", time_spent_ms=4200,
    ).ranking


@pytest.fixture
def world():
    alice, bob, charlie, dora = f.user("alice"), f.user("bob"), f.user("charlie"), f.user("dora")
    proj = f.project("shapes", k=3, admins=[alice], annotators=[bob])
    other = f.project("other", k=3, admins=[dora], annotators=[bob])
    f.tasks(proj, 2)
    f.tasks(other, 1)
    first, second = _rank(bob, proj), _rank(bob, proj)
    foreign = _rank(bob, other)
    return {"alice": alice, "bob": bob, "charlie": charlie, "dora": dora, "project": proj, "other": other,
            "first": first, "second": second, "foreign": foreign}


def _state(ranking) -> str:
    return Ranking.objects.values_list("review", flat=True).get(pk=ranking.pk)


def _records(proj, out) -> list[dict]:
    write_export(ExportFilter(project=proj), "records", out)
    return [json.loads(x) for x in (out / "preferences.jsonl").read_text().splitlines()]


# --- service ---------------------------------------------------------------------------------------


def test_a_new_ranking_is_pending_on_every_queue(world):
    # The PostgreSQL queue inserts rankings with its own SQL: the column's database default fills it.
    assert _state(world["first"]) == "pending"
    assert Ranking.objects.get(pk=world["first"].pk).review_note == ""


def test_an_admin_rejects_then_accepts_again(world):
    alice, ranking = world["alice"], world["first"]
    got = reviews.ranking_review(ranking_id=ranking.pk, project=world["project"], reviewer=alice, decision="reject",
                                 note=" lazy ")
    stored = Ranking.objects.get(pk=ranking.pk)
    assert got.review == stored.review == "rejected"
    assert (stored.reviewed_by, stored.review_note) == (alice, "lazy") and stored.reviewed_at is not None
    reviews.ranking_review(ranking_id=ranking.pk, project=world["project"], reviewer=alice, decision="accept")
    assert _state(ranking) == "accepted"


def test_the_service_refuses_bad_input_and_changes_nothing(world):
    proj, alice, ranking = world["project"], world["alice"], world["first"]
    with pytest.raises(reviews.InvalidReview) as bad:
        reviews.ranking_review(ranking_id=ranking.pk, project=proj, reviewer=alice, decision="maybe")
    assert bad.value.status == 400 and "decision" in bad.value.message
    with pytest.raises(reviews.ReviewForbidden) as forbidden:
        reviews.ranking_review(ranking_id=ranking.pk, project=proj, reviewer=world["bob"], decision="reject")
    assert forbidden.value.status == 403
    with pytest.raises(NotFound):  # a ranking of another project, under this project's admin
        reviews.ranking_review(ranking_id=world["foreign"].pk, project=proj, reviewer=alice, decision="reject")
    assert set(Ranking.objects.values_list("review", flat=True)) == {"pending"}


def test_rejected_rankings_leave_the_records_export_and_come_back_when_accepted(world, tmp_path):
    proj, alice, ranking = world["project"], world["alice"], world["first"]
    everything = _records(proj, tmp_path / "before")
    assert {r["ranking_id"] for r in everything} == {world["first"].pk, world["second"].pk}

    reviews.ranking_review(ranking_id=ranking.pk, project=proj, reviewer=alice, decision="reject")
    after = _records(proj, tmp_path / "rejected")
    assert {r["ranking_id"] for r in after} == {world["second"].pk}
    assert len(after) == len(everything) - PreferencePair.objects.filter(ranking=ranking).count()
    assert write_export(ExportFilter(project=proj), "rankings", tmp_path / "rankings")["rows"] == 1
    kept = write_export(ExportFilter(project=proj, include_rejected=True), "records", tmp_path / "all")
    assert kept["rows"] == len(everything)

    reviews.ranking_review(ranking_id=ranking.pk, project=proj, reviewer=alice, decision="accept")
    assert _records(proj, tmp_path / "accepted") == everything


# --- REST API --------------------------------------------------------------------------------------


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_the_api_lists_rankings_for_review_with_candidate_texts(world):
    alice = api(world["alice"])
    reviews.ranking_review(ranking_id=world["first"].pk, project=world["project"], reviewer=world["alice"],
                           decision="reject")
    body = alice.get("/api/projects/shapes/rankings/").json()
    assert body["count"] == 2 and [r["id"] for r in body["results"]] == [world["second"].pk, world["first"].pk]
    row = body["results"][1]
    assert row["annotator"] == "bob" and row["review"] == "rejected" and row["reviewed_by"] == "alice"
    assert row["flags"] == ["unsafe"] and row["time_spent_ms"] == 4200 and row["rationale"]
    assert [[c["id"] for c in g] for g in row["ordered_candidates"]] == row["ordering"]
    assert all(c["text"] for g in row["ordered_candidates"] for c in g)
    assert row["image_url"].startswith("/api/projects/shapes/images/")
    rejected = alice.get("/api/projects/shapes/rankings/?review=rejected").json()
    assert [r["id"] for r in rejected["results"]] == [world["first"].pk]
    assert alice.get("/api/projects/shapes/rankings/?review=pending").json()["count"] == 1
    bad = alice.get("/api/projects/shapes/rankings/?review=sideways")
    assert bad.status_code == 400 and "review" in bad.json()["fields"]


def test_an_admin_accepts_and_rejects_through_the_api(world):
    alice, ranking = api(world["alice"]), world["first"]
    url = f"/api/rankings/{ranking.pk}/review/"
    response = alice.post(url, {"decision": "reject", "note": "random order"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["review"] == "rejected" and response.json()["review_note"] == "random order"
    assert _state(ranking) == "rejected"
    assert alice.post(url, {"decision": "accept"}, format="json").status_code == 200
    assert _state(ranking) == "accepted"


@pytest.mark.parametrize(("who", "status"), [("bob", 403), ("charlie", 404), ("dora", 404)])
def test_only_the_rankings_project_admins_review_it(world, who, status):
    response = api(world[who]).post(f"/api/rankings/{world['first'].pk}/review/", {"decision": "reject"}, format="json")
    assert response.status_code == status, response.content
    assert _state(world["first"]) == "pending"


def test_a_ranking_of_another_project_or_none_is_a_404_and_nothing_changes(world):
    alice = api(world["alice"])
    response = alice.post(f"/api/rankings/{world['foreign'].pk}/review/", {"decision": "reject"}, format="json")
    assert response.status_code == 404
    assert alice.post("/api/rankings/999999/review/", {"decision": "reject"}, format="json").status_code == 404
    assert _state(world["foreign"]) == "pending"


def test_a_bad_decision_is_a_400_naming_the_field(world):
    response = api(world["alice"]).post(f"/api/rankings/{world['first'].pk}/review/", {"decision": "maybe"},
                                        format="json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid" and "decision" in response.json()["fields"]
    assert _state(world["first"]) == "pending"


def test_anonymous_reviewers_are_refused(world):
    assert APIClient().post(f"/api/rankings/{world['first'].pk}/review/", {"decision": "reject"}).status_code == 401


# --- the page --------------------------------------------------------------------------------------


def page_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_review_page_shows_the_ranking_and_its_review_buttons(world):
    response = page_client(world["alice"]).get("/projects/shapes/review/")
    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="ranking-{world["first"].pk}"' in html and "the first names the shape" in html
    assert "unsafe" in html and "tie" in html and 'value="reject"' in html
    assert f'id="ranking-{world["foreign"].pk}"' not in html
    assert "disagreement" in html  # says when the consensus order comes


def test_the_review_page_rejects_through_a_form_with_csrf(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world["alice"])
    page = client.get("/projects/shapes/review/")
    token = page.cookies["csrftoken"].value
    response = client.post("/projects/shapes/review/?review=pending",
                           {"ranking": world["first"].pk, "decision": "reject", "csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response["Location"].endswith("?review=pending")
    assert _state(world["first"]) == "rejected"
    listed = client.get("/projects/shapes/review/?review=rejected").content.decode()
    assert f'data-ranking="{world["first"].pk}" data-review="rejected"' in listed
    assert Client(enforce_csrf_checks=True).post("/projects/shapes/review/").status_code in (302, 403)


def test_the_review_page_is_for_admins_only_and_keeps_to_its_project(world):
    assert page_client(world["bob"]).get("/projects/shapes/review/").status_code == 403
    assert page_client(world["charlie"]).get("/projects/shapes/review/").status_code == 403
    alice = page_client(world["alice"])
    response = alice.post("/projects/shapes/review/", {"ranking": world["foreign"].pk, "decision": "reject"})
    assert response.status_code == 404 and _state(world["foreign"]) == "pending"
    alice.post("/projects/shapes/review/", {"ranking": world["first"].pk, "decision": "sideways"})
    assert _state(world["first"]) == "pending"
