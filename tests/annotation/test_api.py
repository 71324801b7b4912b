"""The REST API over real URLs: the permission matrix by persona, the queue flow, import and export
(imports as background jobs: tests/annotation/test_import_jobs.py).

Personas: alice is a project admin, bob an annotator, charlie an outsider (member of nothing here),
and an anonymous client.
"""

import io
import json
import uuid
import zipfile
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import Assignment, Membership, PreferencePair, Ranking, RankingTask
from annotation.services import queue
from tests import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    alice, bob, charlie = f.user("alice"), f.user("bob"), f.user("charlie")
    proj = f.project("shapes", k=2, admins=[alice], annotators=[bob])
    f.tasks(proj, 3)
    return {"alice": alice, "bob": bob, "charlie": charlie, "project": proj}


def client_for(user=None, token=False) -> APIClient:
    client = APIClient()
    if user is not None:
        if token:
            client.credentials(HTTP_AUTHORIZATION="Token " + Token.objects.create(user=user).key)
        else:
            client.force_authenticate(user)
    return client


def _zip_bundle() -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.jsonl", json.dumps({"image": "a.png", "prompt": "Describe.", "candidates": ["x", "y"]}) + "\n")
        zf.writestr("a.png", f.png_bytes())
    buf.seek(0)
    buf.name = "bundle.zip"
    return buf


ENDPOINTS = {
    "detail": ("get", "/api/projects/shapes/"),
    "stats": ("get", "/api/projects/shapes/stats/"),
    "next": ("post", "/api/projects/shapes/next/"),
    "upcoming": ("get", "/api/projects/shapes/upcoming/"),
    "rankings": ("get", "/api/projects/shapes/rankings/"),
    "members": ("get", "/api/projects/shapes/members/"),
    "export": ("get", "/api/projects/shapes/export/?format=records"),
    "import": ("post", "/api/projects/shapes/imports/"),
}

# persona -> endpoint -> expected status
MATRIX = {
    "alice": {"detail": 200, "stats": 200, "next": 200, "upcoming": 200, "rankings": 200, "members": 200, "export": 200,
              "import": 202},
    "bob": {"detail": 200, "stats": 200, "next": 200, "upcoming": 200, "rankings": 200, "members": 403, "export": 403,
            "import": 403},
    "charlie": {"detail": 403, "stats": 403, "next": 403, "upcoming": 403, "rankings": 403, "members": 403,
                "export": 403, "import": 403},
    None: {"detail": 401, "stats": 401, "next": 401, "upcoming": 401, "rankings": 401, "members": 401, "export": 401,
           "import": 401},
}


@pytest.mark.parametrize("persona", ["alice", "bob", "charlie", None])
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_the_permission_matrix(world, persona, endpoint):
    client = client_for(world[persona] if persona else None, token=persona == "bob")
    method, url = ENDPOINTS[endpoint]
    kwargs = {"data": {"file": _zip_bundle()}, "format": "multipart"} if endpoint == "import" else {}
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == MATRIX[persona][endpoint], (persona, endpoint, getattr(response, "data", None))


def test_an_annotator_ranks_through_the_api_and_the_pairs_are_stored(world):
    bob = client_for(world["bob"], token=True)
    task = bob.post("/api/projects/shapes/next/").json()
    assert "source" not in json.dumps(task["candidates"])
    image = bob.get(task["image_url"])
    assert image.status_code == 200 and b"".join(image.streaming_content).startswith(b"\x89PNG")
    ids = [c["id"] for c in task["candidates"]]
    body = {"ordering": [[ids[1]], [ids[0]]], "client_uuid": str(uuid.uuid4()), "flags": ["image_unclear"]}
    first = bob.post(f"/api/tasks/{task['task_id']}/submit/", body, format="json")
    assert first.status_code == 201, first.json()
    repeat = bob.post(f"/api/tasks/{task['task_id']}/submit/", body, format="json")
    assert repeat.status_code == 200 and repeat.json()["id"] == first.json()["id"]
    pair = PreferencePair.objects.get()
    assert (pair.chosen_id, pair.rejected_id, pair.margin) == (ids[1], ids[0], 1)
    assert Ranking.objects.get().flag_image_unclear


def test_submit_with_next_answers_with_the_next_task_until_the_queue_is_empty(world):
    bob = client_for(world["bob"], token=True)
    task = bob.post("/api/projects/shapes/next/").json()
    seen = []
    while task is not None:
        seen.append(task["task_id"])
        ids = [c["id"] for c in task["candidates"]]
        response = bob.post(
            f"/api/tasks/{task['task_id']}/submit/?next=1",
            {"ordering": [[i] for i in ids], "client_uuid": str(uuid.uuid4())},
            format="json",
        )
        assert response.status_code == 201, response.json()
        task = response.json()["next_task"]
        # The next task is leased already: asking the queue again gives the same one.
        if task is not None:
            assert bob.post("/api/projects/shapes/next/").json()["task_id"] == task["task_id"]
    assert len(seen) == len(set(seen)) == 3
    assert Ranking.objects.filter(annotator=world["bob"]).count() == 3


def test_next_leases_a_task_without_sources_and_asking_again_gives_the_same_one(world):
    bob = client_for(world["bob"])
    task = bob.post("/api/projects/shapes/next/").json()
    assert Assignment.objects.get(task_id=task["task_id"], annotator=world["bob"]).state == Assignment.State.ACTIVE
    assert len(task["candidates"]) == 2 and all(set(c) == {"id", "text"} for c in task["candidates"])  # no source
    assert task["lease_seconds_left"] > 0 and task["image_url"].startswith("/api/projects/shapes/images/")
    assert bob.post("/api/projects/shapes/next/").json()["task_id"] == task["task_id"]  # the lease holds


def test_upcoming_names_the_images_likely_to_follow_and_the_progress_without_leasing(world):
    """What the ranking page reads while the annotator works: images to load ahead, fresh figures."""
    bob = client_for(world["bob"])
    task = bob.post("/api/projects/shapes/next/").json()
    leases = Assignment.objects.count()
    data = bob.get(f"/api/projects/shapes/upcoming/?task={task['task_id']}").json()
    assert len(data["upcoming"]) == 2 and task["task_id"] not in [u["task_id"] for u in data["upcoming"]]
    assert all(u["image_url"].startswith("/api/projects/shapes/images/") for u in data["upcoming"])
    assert data["progress"] == {"done_today": 0, "done_total": 0, "open_in_queue": 2}  # one of 3 is leased
    assert Assignment.objects.count() == leases
    # Tasks bob holds or has judged are no guess for his next one.
    ids = [c["id"] for c in task["candidates"]]
    bob.post(f"/api/tasks/{task['task_id']}/submit/", {"ordering": [ids], "client_uuid": str(uuid.uuid4())}, format="json")
    data = bob.get("/api/projects/shapes/upcoming/").json()
    assert task["task_id"] not in [u["task_id"] for u in data["upcoming"]] and len(data["upcoming"]) == 2
    assert data["progress"]["done_today"] == data["progress"]["done_total"] == 1


def test_submit_with_next_stores_the_ranking_once_and_answers_with_the_next_task(world):
    """What the ranking page sends for each annotation; a retry with the same client_uuid stores nothing new."""
    bob = client_for(world["bob"])
    task = bob.post("/api/projects/shapes/next/").json()
    a, b = (c["id"] for c in task["candidates"])
    body = {"ordering": [[b], [a]], "client_uuid": str(uuid.uuid4()), "flags": ["unsafe"], "rationale": "r"}
    response = bob.post(f"/api/tasks/{task['task_id']}/submit/?next=1", body, format="json")
    assert response.status_code == 201
    data = response.json()
    assert data["next_task"]["task_id"] != task["task_id"]
    ranking = Ranking.objects.get(task_id=task["task_id"])
    assert data["id"] == ranking.pk
    assert ranking.ordering == [[b], [a]] and ranking.flag_unsafe and ranking.rationale == "r"
    assert set(PreferencePair.objects.filter(ranking=ranking).values_list("chosen_id", "rejected_id")) == {(b, a)}

    again = bob.post(f"/api/tasks/{task['task_id']}/submit/?next=1", body, format="json")
    assert again.status_code == 200 and again.json()["id"] == ranking.pk
    assert again.json()["next_task"]["task_id"] == data["next_task"]["task_id"]  # the same lease, not another
    assert Ranking.objects.count() == 1


def test_a_submit_after_the_lease_ran_out_and_the_task_went_to_someone_else_is_a_409(world):
    dave = f.user("dave")
    Membership.objects.create(project=world["project"], user=dave)
    bob = client_for(world["bob"])
    task = bob.post("/api/projects/shapes/next/").json()
    Assignment.objects.filter(annotator=world["bob"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    RankingTask.objects.exclude(pk=task["task_id"]).update(state=RankingTask.State.CLOSED)
    assert queue.next_task(annotator=dave, project=world["project"]).task_id == task["task_id"]
    ordering = [[c["id"]] for c in task["candidates"]]
    response = bob.post(
        f"/api/tasks/{task['task_id']}/submit/?next=1", {"ordering": ordering, "client_uuid": str(uuid.uuid4())}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["error"] == "lease_lost"
    assert "another annotator" in response.json()["detail"]  # the ranking page shows it as it is
    assert not Ranking.objects.exists()


def test_a_submit_to_a_task_that_does_not_exist_is_a_404(world):
    response = client_for(world["bob"]).post("/api/tasks/999999/submit/?next=1", {}, format="json")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_skip_with_next_ends_the_lease_and_answers_with_the_next_task(world):
    bob = client_for(world["bob"])
    task = bob.post("/api/projects/shapes/next/").json()
    response = bob.post(f"/api/tasks/{task['task_id']}/skip/?next=1", {"reason": "blurry"}, format="json")
    assert response.status_code == 200
    assert response.json()["next_task"]["task_id"] != task["task_id"]
    skipped = Assignment.objects.get(task_id=task["task_id"], annotator=world["bob"])
    assert skipped.state == Assignment.State.SKIPPED and skipped.skip_reason == "blurry"
    # Skipped before: a retry whose first try got through is refused, and the task is not handed back.
    assert bob.post(f"/api/tasks/{task['task_id']}/skip/?next=1", {}, format="json").status_code == 409


def test_with_the_queue_empty_next_is_a_204_and_skip_and_upcoming_say_so(world):
    bob = client_for(world["bob"])
    task = bob.post("/api/projects/shapes/next/").json()
    RankingTask.objects.exclude(pk=task["task_id"]).update(state=RankingTask.State.DONE)
    assert bob.post(f"/api/tasks/{task['task_id']}/skip/?next=1", {}, format="json").json() == {"next_task": None}
    assert bob.post("/api/projects/shapes/next/").status_code == 204
    assert bob.get("/api/projects/shapes/upcoming/").json()["upcoming"] == []


def test_an_unknown_token_or_an_inactive_users_token_is_a_401(world):
    unknown = APIClient()
    unknown.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert unknown.post("/api/projects/shapes/next/").status_code == 401
    bob = client_for(world["bob"], token=True)
    world["bob"].is_active = False
    world["bob"].save()
    response = bob.post("/api/projects/shapes/next/")
    assert response.status_code == 401 and "inactive" in response.json()["detail"]


def test_a_bad_ranking_is_a_400_that_names_the_problem(world):
    bob = client_for(world["bob"])
    task = bob.post("/api/projects/shapes/next/").json()
    ids = [c["id"] for c in task["candidates"]]
    response = bob.post(
        f"/api/tasks/{task['task_id']}/submit/", {"ordering": [[ids[0]]], "client_uuid": str(uuid.uuid4())}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_ranking"
    assert f"leaves out candidates [{ids[1]}]" in response.json()["detail"]


def test_an_invalid_client_uuid_is_a_400_in_the_documented_error_shape(world):
    """{"error", "detail"} as docs/api.md says, with DRF's field map kept under "fields"."""
    bob = client_for(world["bob"])
    task = bob.post("/api/projects/shapes/next/").json()
    ids = [c["id"] for c in task["candidates"]]
    response = bob.post(f"/api/tasks/{task['task_id']}/submit/", {"ordering": [[i] for i in ids], "client_uuid": "nope"}, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid",
        "detail": "client_uuid: Must be a valid UUID.",
        "fields": {"client_uuid": ["Must be a valid UUID."]},
    }
    assert not Ranking.objects.exists()


@pytest.mark.parametrize(
    ("persona", "method", "path", "body", "status", "code"),
    [
        ("alice", "post", "/api/projects/shapes/members/", {"username": "nobody", "role": "annotator"}, 400, "invalid"),
        ("bob", "post", "/api/tasks/{task}/skip/", {"reason": "x" * 501}, 400, "invalid"),
        ("alice", "get", "/api/projects/shapes/export/?format=csv", None, 400, "invalid"),
        ("alice", "patch", "/api/projects/shapes/", {"overlap": 0}, 400, "invalid"),
        ("charlie", "get", "/api/projects/shapes/", None, 403, "permission_denied"),
        (None, "get", "/api/projects/shapes/", None, 401, "not_authenticated"),
        ("bob", "get", "/api/projects/nope/", None, 404, "not_found"),
        ("bob", "delete", "/api/projects/shapes/next/", None, 405, "method_not_allowed"),
    ],
)
def test_every_api_error_has_an_error_code_and_a_readable_detail(world, persona, method, path, body, status, code):
    """DRF's own errors come out in the documented {"error", "detail"} shape too."""
    client = client_for(world[persona] if persona else None)
    if "{task}" in path:
        path = path.format(task=client.post("/api/projects/shapes/next/").json()["task_id"])
    response = getattr(client, method)(path, body, format="json") if body is not None else getattr(client, method)(path)
    assert response.status_code == status
    data = response.json()
    assert data["error"] == code
    assert isinstance(data["detail"], str) and data["detail"]


def test_a_body_that_is_not_json_is_a_parse_error_in_the_documented_shape(world):
    bob = client_for(world["bob"])
    task = bob.post("/api/projects/shapes/next/").json()
    response = bob.post(f"/api/tasks/{task['task_id']}/submit/", "{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"] == "parse_error"


def test_a_lost_lease_is_a_409(world):
    bob, alice = client_for(world["bob"]), client_for(world["alice"])
    task = bob.post("/api/projects/shapes/next/").json()
    assert bob.post(f"/api/tasks/{task['task_id']}/release/").status_code == 204
    ids = [c["id"] for c in task["candidates"]]
    taken = alice.post("/api/projects/shapes/next/").json()
    assert taken["task_id"] == task["task_id"]
    response = bob.post(
        f"/api/tasks/{task['task_id']}/submit/", {"ordering": [[i] for i in ids], "client_uuid": str(uuid.uuid4())}, format="json"
    )
    assert response.status_code == 409 and response.json()["error"] == "lease_lost"


def test_an_outsider_cannot_submit_to_a_task_of_another_project(world):
    task = client_for(world["bob"]).post("/api/projects/shapes/next/").json()
    response = client_for(world["charlie"]).post(
        f"/api/tasks/{task['task_id']}/submit/", {"ordering": [], "client_uuid": str(uuid.uuid4())}, format="json"
    )
    assert response.status_code == 403


def test_an_annotator_sees_only_their_own_rankings(world):
    bob, alice = client_for(world["bob"]), client_for(world["alice"])
    for client in (bob, alice):
        t = client.post("/api/projects/shapes/next/").json()
        ids = [c["id"] for c in t["candidates"]]
        client.post(f"/api/tasks/{t['task_id']}/submit/", {"ordering": [[i] for i in ids], "client_uuid": str(uuid.uuid4())}, format="json")
    assert bob.get("/api/projects/shapes/rankings/").json()["count"] == 1
    assert alice.get("/api/projects/shapes/rankings/").json()["count"] == 2


def test_skip_then_the_queue_moves_on(world):
    bob = client_for(world["bob"])
    first = bob.post("/api/projects/shapes/next/").json()
    assert bob.post(f"/api/tasks/{first['task_id']}/skip/", {"reason": "blurry"}, format="json").status_code == 204
    assert bob.post("/api/projects/shapes/next/").json()["task_id"] != first["task_id"]


def test_an_empty_queue_is_a_204(world):
    proj = f.project("empty", annotators=[world["bob"]])
    assert proj.tasks.count() == 0
    assert client_for(world["bob"]).post("/api/projects/empty/next/").status_code == 204


def test_project_admins_manage_members(world):
    alice = client_for(world["alice"])
    response = alice.post("/api/projects/shapes/members/", {"username": "charlie", "role": "annotator"}, format="json")
    assert response.status_code == 201
    assert client_for(world["charlie"]).get("/api/projects/shapes/").status_code == 200
    assert alice.delete("/api/projects/shapes/members/charlie/").status_code == 204
    assert client_for(world["charlie"]).get("/api/projects/shapes/").status_code == 403


def test_only_staff_create_projects(world):
    body = {"name": "New", "slug": "new", "candidates_per_task": 3}
    assert client_for(world["alice"]).post("/api/projects/", body, format="json").status_code == 403
    staff = f.user("root", is_staff=True)
    response = client_for(staff).post("/api/projects/", body, format="json")
    assert response.status_code == 201 and response.json()["candidates_per_task"] == 3


def test_a_project_with_k_outside_2_to_9_is_refused(world):
    staff = f.user("root", is_staff=True)
    response = client_for(staff).post("/api/projects/", {"name": "Bad", "candidates_per_task": 12}, format="json")
    assert response.status_code == 400 and "candidates_per_task" in response.json()["fields"]


def test_a_project_admin_sets_the_held_out_fraction_within_bounds(world):
    alice = client_for(world["alice"])
    response = alice.patch("/api/projects/shapes/", {"heldout_fraction": 0.2}, format="json")
    assert response.status_code == 200 and response.json()["heldout_fraction"] == 0.2
    world["project"].refresh_from_db()
    assert world["project"].heldout_fraction == 0.2
    too_many = alice.patch("/api/projects/shapes/", {"heldout_fraction": 0.9}, format="json")
    assert too_many.status_code == 400 and "heldout_fraction" in too_many.json()["fields"]


def test_the_export_keeps_one_split_on_request(world):
    alice = client_for(world["alice"])
    assert alice.get("/api/projects/shapes/export/?format=records&split=eval").status_code == 200
    assert alice.get("/api/projects/shapes/export/?format=records&split=test").status_code == 400


def test_the_export_streams_a_zip(world):
    alice = client_for(world["alice"])
    response = alice.get("/api/projects/shapes/export/?format=rankings")
    assert response.status_code == 200 and response["Content-Disposition"].endswith('.zip"')
    zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).testzip()


def test_the_openapi_schema_and_docs_are_served(world):
    client = client_for(world["bob"])
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/tasks/{task_id}/submit/" in paths and "/api/projects/{slug}/upcoming/" in paths
    skip = paths["/api/tasks/{task_id}/skip/"]["post"]
    assert {p["name"] for p in skip["parameters"]} >= {"next"} and {"200", "204"} <= set(skip["responses"])
    assert client.get("/api/docs/").status_code == 200


def test_blank_export_filters_mean_no_filter(world):
    response = client_for(world["alice"]).get("/api/projects/shapes/export/?format=records&since=&until=&source=")
    assert response.status_code == 200


SUBMIT_INPUTS = [
    {"ordering": [[1], [2]], "client_uuid": str(uuid.uuid4())},
    {"ordering": [[1], [2]], "client_uuid": str(uuid.uuid4()), "flags": ["unsafe", "all_bad"], "rationale": "  why  ",
     "time_spent_ms": 1200},
    {"ordering": [[1], [2]], "client_uuid": str(uuid.uuid4()), "time_spent_ms": None, "flags": []},
    {"ordering": [[1], [2]], "client_uuid": str(uuid.uuid4()), "time_spent_ms": "15"},
    {"ordering": [[1], [2]]},
    {"client_uuid": str(uuid.uuid4())},
    {"ordering": [[1]], "client_uuid": "not-a-uuid"},
    {"ordering": [[1]], "client_uuid": str(uuid.uuid4()), "flags": ["boring"]},
    {"ordering": [[1]], "client_uuid": str(uuid.uuid4()), "flags": "unsafe"},
    {"ordering": [[1]], "client_uuid": str(uuid.uuid4()), "rationale": "x" * 10_001},
    {"ordering": [[1]], "client_uuid": str(uuid.uuid4()), "rationale": 5},
    {"ordering": [[1]], "client_uuid": str(uuid.uuid4()), "time_spent_ms": -1},
    {"ordering": [[1]], "client_uuid": str(uuid.uuid4()), "time_spent_ms": "soon"},
    {"ordering": [[1]], "client_uuid": str(uuid.uuid4()), "time_spent_ms": True},
]


@pytest.mark.parametrize("data", SUBMIT_INPUTS)
def test_parse_submit_accepts_and_refuses_what_the_submit_serializer_does(data):
    """The submit endpoints validate with parse_submit (cheaper); the schema shows SubmitSerializer."""
    from rest_framework.exceptions import ValidationError

    from annotation.api.serializers import SubmitSerializer, parse_submit

    serializer = SubmitSerializer(data=data)
    if serializer.is_valid():
        assert parse_submit(data) == serializer.validated_data
    else:
        with pytest.raises(ValidationError) as refused:
            parse_submit(data)
        assert set(refused.value.detail) == set(serializer.errors)


def test_the_submit_answer_is_what_the_ranking_serializer_gives(world):
    from annotation.api.serializers import RankingSerializer, ranking_payload

    bob = client_for(world["bob"])
    task = bob.post("/api/projects/shapes/next/").json()
    ids = [c["id"] for c in task["candidates"]]
    body = {"ordering": [ids], "client_uuid": str(uuid.uuid4()), "flags": ["unsafe"], "rationale": "tie"}
    answer = bob.post(f"/api/tasks/{task['task_id']}/submit/", body, format="json").json()
    stored = Ranking.objects.get(pk=answer["id"])
    assert answer == ranking_payload(stored) == json.loads(json.dumps(RankingSerializer(stored).data))


def test_the_openapi_schema_generates_without_warnings_and_validates(tmp_path):
    """`manage.py spectacular --validate --fail-on-warn`: a warning (e.g. an enum naming collision) fails."""
    from django.core.management import call_command
    from drf_spectacular.drainage import reset_generator_stats

    reset_generator_stats()  # judge this generation only, not warnings of an earlier test's
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
    schema = (tmp_path / "schema.yml").read_text()
    assert "RunKindEnum" in schema and "VersionKindEnum" in schema
