"""Gold tasks: marking them (service and API), the queue mixing them in on both implementations, gold accuracy,
warnings, pausing and re-admission.

Personas: alice is an admin of "shapes", bob and carl its annotators, charlie an outsider; dora the admin of
another project.
"""

import uuid

import pytest
from rest_framework.test import APIClient

from annotation.exceptions import InvalidRanking, NotFound
from annotation.models import Assignment, Membership, PreferencePair, Project, Ranking, RankingTask
from annotation.services import gold, queue
from tests import factories as f

pytestmark = pytest.mark.django_db
T = RankingTask.State


@pytest.fixture
def world():
    alice, bob, carl, charlie, dora = (f.user(n) for n in ("alice", "bob", "carl", "charlie", "dora"))
    proj = f.project("shapes", k=3, overlap=1, admins=[alice], annotators=[bob, carl])
    other = f.project("other", k=3, admins=[dora])
    plain = f.tasks(proj, 4)
    golds = f.tasks(proj, 3, priority=-1.0)
    for t in golds:
        c = t.candidate_ids
        gold.task_mark_gold(project=proj, task_id=t.pk, user=alice, ordering=[[c[0]], [c[1]], [c[2]]])
    return {"alice": alice, "bob": bob, "carl": carl, "charlie": charlie, "dora": dora, "project": proj,
            "other": other, "plain": plain, "golds": golds, "foreign": f.task(other)}


def _rate(proj: Project, rate: float, **more) -> Project:
    Project.objects.filter(pk=proj.pk).update(gold_rate=rate, **more)
    proj.refresh_from_db()
    return proj


def _rank(q, user, proj, *, right: bool = True):
    """Take the next task and rank it; on a gold task, as its gold ordering says (or reversed)."""
    a = q.next_task(annotator=user, project=proj)
    assert a is not None
    task = RankingTask.objects.get(pk=a.task_id)
    order = task.gold_ordering or [[c] for c in task.candidate_ids]
    if not right:
        order = list(reversed(order))
    return q.submit_ranking(annotator=user, task_id=task.pk, ordering=order, client_uuid=uuid.uuid4())


# --- marking ---------------------------------------------------------------------------------------


def test_a_marked_task_is_gold_with_its_ordering(world):
    t = RankingTask.objects.get(pk=world["golds"][0].pk)
    c = t.candidate_ids
    assert t.state == T.GOLD and t.gold_ordering == [[c[0]], [c[1]], [c[2]]]


def test_bad_gold_orderings_are_refused_and_change_nothing(world):
    t, alice = world["plain"][0], world["alice"]
    c = t.candidate_ids
    with pytest.raises(InvalidRanking, match="leaves out candidates"):
        gold.task_mark_gold(project=world["project"], task_id=t.pk, user=alice, ordering=[[c[0]], [c[1]]])
    with pytest.raises(InvalidRanking, match="not in this task"):
        gold.task_mark_gold(project=world["project"], task_id=t.pk, user=alice, ordering=[[c[0]], [c[1]], [c[2]], [999999]])
    with pytest.raises(gold.InvalidGold, match="at least two"):
        gold.task_mark_gold(project=world["project"], task_id=t.pk, user=alice, ordering=[c])
    with pytest.raises(gold.GoldForbidden):
        gold.task_mark_gold(project=world["project"], task_id=t.pk, user=world["bob"], ordering=[[x] for x in c])
    with pytest.raises(NotFound):
        gold.task_mark_gold(project=world["project"], task_id=world["foreign"].pk, user=alice, ordering=[[x] for x in c])
    t.refresh_from_db()
    assert t.state == T.OPEN and t.gold_ordering is None


def test_the_api_marks_and_unmarks_with_clear_errors(world):
    api = APIClient()
    t = world["plain"][0]
    c = t.candidate_ids
    url = f"/api/tasks/{t.pk}/gold/"
    api.force_authenticate(world["bob"])
    assert api.post(url, {"ordering": [[x] for x in c]}, format="json").status_code == 403
    api.force_authenticate(world["charlie"])
    assert api.post(url, {"ordering": [[x] for x in c]}, format="json").status_code in (403, 404)
    api.force_authenticate(world["alice"])
    bad = api.post(url, {"ordering": [[c[0]], [c[1]], [12345678]]}, format="json")
    assert bad.status_code == 400 and "12345678" in bad.json()["detail"] and str(c[2]) in bad.json()["detail"]
    assert RankingTask.objects.get(pk=t.pk).state == T.OPEN
    ok = api.post(url, {"ordering": [[c[2]], [c[0], c[1]]]}, format="json")
    assert ok.status_code == 200 and ok.json()["state"] == "gold"
    assert ok.json()["gold_ordering"] == [[c[2]], [c[0], c[1]]]
    back = api.delete(url)
    assert back.status_code == 200 and back.json()["state"] == "open" and back.json()["gold_ordering"] is None
    api.force_authenticate(world["dora"])
    assert api.post(f"/api/tasks/{world['foreign'].pk}/gold/", {"ordering": [[x] for x in world["foreign"].candidate_ids]},
                    format="json").status_code == 200


def test_gold_settings_outside_their_range_are_a_400(world):
    api = APIClient()
    api.force_authenticate(world["alice"])
    for field, value in (("gold_threshold", 1.5), ("gold_threshold", -0.1), ("gold_rate", 2), ("gold_min_count", 0)):
        r = api.patch("/api/projects/shapes/", {field: value}, format="json")
        assert r.status_code == 400 and field in r.json()["fields"], (field, r.json())
    ok = api.patch("/api/projects/shapes/", {"gold_threshold": 0.8, "gold_pause": True}, format="json")
    assert ok.status_code == 200 and ok.json()["gold_threshold"] == 0.8 and ok.json()["gold_pause"] is True


def test_an_accepted_ranking_becomes_gold(world, q):
    from annotation.services import reviews

    proj = _rate(world["project"], 0)
    ranking = _rank(q, world["bob"], proj).ranking
    with pytest.raises(gold.InvalidGold, match="accept it"):
        gold.task_gold_from_ranking(project=proj, ranking_id=ranking.pk, user=world["alice"])
    reviews.ranking_review(ranking_id=ranking.pk, project=proj, reviewer=world["alice"], decision="accept")
    task = gold.task_gold_from_ranking(project=proj, ranking_id=ranking.pk, user=world["alice"])
    assert task.state == T.GOLD and task.gold_ordering == Ranking.objects.get(pk=ranking.pk).ordering


# --- the queue -------------------------------------------------------------------------------------


def test_at_rate_one_every_annotator_gets_every_gold_task_once_then_the_open_ones(world, q):
    proj = _rate(world["project"], 1.0)
    golds = {t.pk for t in world["golds"]}
    for person in (world["bob"], world["carl"]):
        seen = []
        for _ in range(3):
            result = _rank(q, person, proj)
            assert result.gold
            seen.append(result.ranking.task_id)
        assert set(seen) == golds  # all three, none twice
        assert not _rank(q, person, proj).gold  # then an open task
    for t in RankingTask.objects.filter(pk__in=golds):
        assert t.state == T.GOLD and t.leased_count == 0 and t.completed_count == 0
        assert t.rankings.count() == 2


def test_at_rate_zero_no_gold_task_is_handed_out(world, q):
    proj = _rate(world["project"], 0.0)
    for _ in range(4):
        assert not _rank(q, world["bob"], proj).gold
    assert q.next_task(annotator=world["bob"], project=proj) is None


def test_gold_tasks_are_never_in_the_open_scan_or_the_look_ahead(world):
    proj = world["project"]
    open_ids = set(queue.open_tasks_for(proj, world["bob"]).values_list("pk", flat=True))
    assert open_ids == {t.pk for t in world["plain"]}


def test_a_gold_lease_can_expire_skip_and_release_without_touching_counters(world, q):
    from datetime import timedelta

    from django.utils import timezone

    proj = _rate(world["project"], 1.0)
    a = q.next_task(annotator=world["bob"], project=proj)
    q.release_task(annotator=world["bob"], task_id=a.task_id)
    a = q.next_task(annotator=world["bob"], project=proj)
    q.skip_task(annotator=world["bob"], task_id=a.task_id)
    a = q.next_task(annotator=world["bob"], project=proj)
    q.expire_leases(project=proj, now=timezone.now() + timedelta(days=1))
    assert Assignment.objects.get(pk=a.pk).state == Assignment.State.EXPIRED
    # A late submit of a lapsed gold lease is taken: a gold task has no slots to lose.
    task = RankingTask.objects.get(pk=a.task_id)
    assert q.submit_ranking(annotator=world["bob"], task_id=task.pk, ordering=task.gold_ordering,
                            client_uuid=uuid.uuid4()).created
    for t in RankingTask.objects.filter(state=T.GOLD):
        assert (t.leased_count, t.completed_count) == (0, 0)


# --- accuracy, warning, pause ----------------------------------------------------------------------


def test_score_against_gold_counts_gold_pairs_ordered_the_same_way():
    gold_order = [[1], [2, 3], [4]]  # strict pairs: 1>2 1>3 1>4 2>4 3>4
    assert gold.score_against_gold([[1], [2], [3], [4]], gold_order) == (5, 5)
    assert gold.score_against_gold([[4], [3], [2], [1]], gold_order) == (0, 5)
    assert gold.score_against_gold([[1, 2, 3, 4]], gold_order) == (0, 5)  # ties are not the gold order
    assert gold.score_against_gold([[2], [1], [3], [4]], gold_order) == (4, 5)


def test_a_careless_annotator_is_warned_and_paused_and_an_admin_readmits_them(world, q):
    proj = _rate(world["project"], 1.0, gold_min_count=2, gold_threshold=0.6, gold_pause=True)
    bob, carl = world["bob"], world["carl"]
    _rank(q, carl, proj, right=True)
    _rank(q, carl, proj, right=True)
    _rank(q, bob, proj, right=False)
    assert Membership.objects.get(project=proj, user=bob).paused_at is None  # one gold task: not judged yet
    # bob takes his next (gold) task, then his second wrong gold ranking pauses him.
    held = q.next_task(annotator=bob, project=proj)
    t = RankingTask.objects.get(pk=held.task_id)
    q.submit_ranking(annotator=bob, task_id=t.pk, ordering=list(reversed(t.gold_ordering)), client_uuid=uuid.uuid4())
    m = Membership.objects.get(project=proj, user=bob)
    assert m.paused_at is not None and m.gold_warned_at is not None and "0.00 on 2 gold tasks" in m.paused_reason
    assert q.next_task(annotator=bob, project=proj) is None
    assert "below" in gold.paused_reason(bob, proj)
    report = {a["username"]: a for a in _report(world)}
    assert report["bob"]["accuracy"] == 0.0 and report["bob"]["paused"] and report["bob"]["verdict"] == "below"
    assert report["carl"]["accuracy"] == 1.0 and not report["carl"]["paused"] and report["carl"]["verdict"] == "ok"
    assert report["carl"]["ci"][0] > 0.3 and report["bob"]["ci"][1] < 0.7
    # re-admitted: he works again, and his gold accuracy counts from now.
    gold.annotator_readmit(project=proj, user=world["alice"], annotator_id=bob.pk)
    assert q.next_task(annotator=bob, project=proj) is not None
    assert {a["username"]: a for a in _report(world)}["bob"]["tasks"] == 0
    with pytest.raises(gold.GoldForbidden):
        gold.annotator_readmit(project=proj, user=bob, annotator_id=bob.pk)


def test_a_paused_annotator_keeps_the_task_they_hold(world, q):
    proj = _rate(world["project"], 0.0)
    bob = world["bob"]
    held = q.next_task(annotator=bob, project=proj)
    Membership.objects.filter(project=proj, user=bob).update(paused_at="2026-01-01T00:00:00Z", paused_reason="test")
    assert q.next_task(annotator=bob, project=proj).pk == held.pk  # their own lease still comes back
    t = RankingTask.objects.get(pk=held.task_id)
    assert q.submit_ranking(annotator=bob, task_id=t.pk, ordering=[[c] for c in t.candidate_ids],
                            client_uuid=uuid.uuid4()).created
    assert q.next_task(annotator=bob, project=proj) is None


def test_the_api_says_paused_on_next_and_after_a_submit(world):
    proj = _rate(world["project"], 0.0)
    bob = world["bob"]
    api = APIClient()
    api.force_authenticate(bob)
    task = api.post("/api/projects/shapes/next/").json()
    Membership.objects.filter(project=proj, user=bob).update(paused_at="2026-01-01T00:00:00Z",
                                                              paused_reason="gold accuracy 0.40 on 10 gold tasks")
    r = api.post(f"/api/tasks/{task['task_id']}/submit/?next=1",
                 {"ordering": [[c["id"]] for c in task["candidates"]], "client_uuid": str(uuid.uuid4())}, format="json")
    assert r.status_code == 201 and r.json()["next_task"] is None and "0.40" in r.json()["paused"]
    r = api.post("/api/projects/shapes/next/")
    assert r.status_code == 403 and r.json()["error"] == "paused" and "re-admit" in r.json()["detail"]
    api.force_authenticate(world["alice"])
    assert api.post(f"/api/projects/shapes/annotators/{bob.pk}/readmit/").status_code == 200
    api.force_authenticate(bob)
    assert api.post("/api/projects/shapes/next/").status_code == 200


def test_the_gold_report_is_for_project_admins(world):
    api = APIClient()
    api.force_authenticate(world["bob"])
    assert api.get("/api/projects/shapes/gold/").status_code == 403
    api.force_authenticate(world["alice"])
    body = api.get("/api/projects/shapes/gold/").json()
    assert body["gold_tasks"] == 3 and body["settings"]["gold_rate"] == 0.05
    assert {a["username"] for a in body["annotators"]} == {"alice", "bob", "carl"}


def test_gold_rankings_keep_their_pairs_in_the_database(world, q):
    """The pairs are stored like any ranking's (the exports leave them out, see test_exports)."""
    proj = _rate(world["project"], 1.0)
    result = _rank(q, world["bob"], proj)
    assert result.gold and PreferencePair.objects.filter(ranking=result.ranking).count() == 3


def _report(world) -> list[dict]:
    from annotation.services.gold import gold_report

    return gold_report(world["project"])["annotators"]
