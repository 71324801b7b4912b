"""The queue's contract: both implementations (``OrmQueue``, ``PostgresQueue``) against the same tests.

Queue semantics of DESIGN.md: the annotator's own unexpired lease first; otherwise the highest-priority
open task they have not judged or skipped and that still needs annotations; leases expire; submit is
idempotent on ``client_uuid``; a ranking covers exactly the task's candidates; 409 once a lapsed lease's
slot went to someone else; exact counters. The PostgreSQL implementation runs where DATABASE_URL points
at PostgreSQL (the ORM one runs there too, and on SQLite).
"""

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.db.models import Count
from django.utils import timezone

from annotation.exceptions import AlreadyRanked, AnnotationError, InvalidRanking, LeaseLost, NotFound
from annotation.models import Assignment, PreferencePair, Ranking, RankingTask
from annotation.selectors import task_payload
from annotation.services import queue
from annotation.services.queue import OrmQueue
from tests import factories as f


@pytest.fixture
def alice(db):
    return f.user("alice")


@pytest.fixture
def bob(db):
    return f.user("bob")


@pytest.fixture
def carol(db):
    return f.user("carol")


def test_the_implementation_is_chosen_once_by_the_database():
    chosen = queue.implementation()
    assert chosen is queue.implementation()
    assert chosen.name == ("postgres" if connection.vendor == "postgresql" else "orm")


@pytest.mark.django_db
def test_the_module_functions_hand_each_call_to_the_chosen_implementation(monkeypatch, alice):
    calls = []

    class Spy(OrmQueue):
        def _lease(self, **kw):
            calls.append("gold lease" if kw.get("gold") else "lease")
            return super()._lease(**kw)

    monkeypatch.setattr(queue, "_chosen", Spy())
    proj = f.project()
    t = f.task(proj)
    assert queue.next_task(annotator=alice, project=proj).task_id == t.pk
    assert [c for c in calls if c == "lease"] == ["lease"]


def _rank(q, assignment, **kw):
    ids = assignment.task.candidate_ids
    kw.setdefault("ordering", [[i] for i in ids])
    kw.setdefault("client_uuid", uuid.uuid4())
    return q.submit_ranking(annotator=assignment.annotator, task_id=assignment.task_id, **kw)


@pytest.mark.django_db
def test_it_hands_out_the_highest_priority_task_first(q, alice):
    proj = f.project()
    low, high = f.task(proj, priority=0), f.task(proj, priority=5)
    assert q.next_task(annotator=alice, project=proj).task_id == high.pk
    assert low.pk != high.pk


@pytest.mark.django_db
def test_it_returns_the_annotators_own_lease_until_it_is_done(q, alice):
    proj = f.project()
    f.tasks(proj, 3)
    first = q.next_task(annotator=alice, project=proj)
    again = q.next_task(annotator=alice, project=proj)
    assert again.pk == first.pk
    _rank(q, first)
    assert q.next_task(annotator=alice, project=proj).task_id != first.task_id


@pytest.mark.django_db
def test_overlap_one_never_gives_a_task_to_two_annotators(q, alice, bob):
    proj = f.project(overlap=1)
    f.task(proj)
    assert q.next_task(annotator=alice, project=proj) is not None
    assert q.next_task(annotator=bob, project=proj) is None


@pytest.mark.django_db
def test_overlap_three_gives_each_task_to_three_different_annotators(q, alice, bob, carol):
    proj = f.project(overlap=3)
    t = f.task(proj)
    dave = f.user("dave")
    for person in (alice, bob, carol):
        a = q.next_task(annotator=person, project=proj)
        assert a.task_id == t.pk
        _rank(q, a)
    assert q.next_task(annotator=dave, project=proj) is None
    t.refresh_from_db()
    assert (t.completed_count, t.leased_count, t.state) == (3, 0, "done")


@pytest.mark.django_db
def test_an_annotator_never_gets_a_task_they_ranked_or_skipped_again(q, alice, bob):
    proj = f.project(overlap=2)
    t1, t2 = f.tasks(proj, 2)
    a = q.next_task(annotator=alice, project=proj)
    _rank(q, a)
    b = q.next_task(annotator=alice, project=proj)
    q.skip_task(annotator=alice, task_id=b.task_id, reason="unclear")
    assert q.next_task(annotator=alice, project=proj) is None
    assert {t1.pk, t2.pk} == {a.task_id, b.task_id}


@pytest.mark.django_db
def test_an_expired_lease_returns_the_task_to_the_queue(q, alice, bob):
    proj = f.project(lease_minutes=5)
    t = f.task(proj)
    q.next_task(annotator=alice, project=proj)
    later = timezone.now() + timedelta(minutes=6)
    given = q.next_task(annotator=bob, project=proj, now=later)
    assert given.task_id == t.pk
    assert Assignment.objects.get(task=t, annotator=alice).state == "expired"
    t.refresh_from_db()
    assert t.leased_count == 1


@pytest.mark.django_db
def test_a_late_submit_is_accepted_while_nobody_else_took_the_task(q, alice):
    proj = f.project(lease_minutes=5)
    f.task(proj)
    a = q.next_task(annotator=alice, project=proj)
    q.expire_leases(now=timezone.now() + timedelta(minutes=6))
    result = _rank(q, a)
    assert result.created
    a.task.refresh_from_db()
    assert (a.task.completed_count, a.task.leased_count, a.task.state) == (1, 0, "done")


@pytest.mark.django_db
def test_a_submit_after_the_task_was_reassigned_is_a_409_and_saves_nothing(q, alice, bob):
    proj = f.project(lease_minutes=5)
    f.task(proj)
    a = q.next_task(annotator=alice, project=proj)
    q.next_task(annotator=bob, project=proj, now=timezone.now() + timedelta(minutes=6))
    with pytest.raises(LeaseLost) as err:
        _rank(q, a)
    assert err.value.status == 409
    assert "went to another annotator" in str(err.value)
    assert Ranking.objects.count() == 0


@pytest.mark.django_db
def test_submit_is_idempotent_on_the_client_uuid(q, alice):
    proj = f.project()
    f.task(proj)
    a = q.next_task(annotator=alice, project=proj)
    key = uuid.uuid4()
    first = _rank(q, a, client_uuid=key)
    second = _rank(q, a, client_uuid=key)
    assert first.created and not second.created
    assert second.ranking.pk == first.ranking.pk
    assert Ranking.objects.count() == 1
    assert PreferencePair.objects.count() == 6
    a.task.refresh_from_db()
    assert a.task.completed_count == 1


@pytest.mark.django_db
def test_a_client_uuid_reused_for_another_task_is_refused_and_that_task_stays_leased(q, alice):
    proj = f.project()
    f.tasks(proj, 2)
    key = uuid.uuid4()
    _rank(q, q.next_task(annotator=alice, project=proj), client_uuid=key)
    second = q.next_task(annotator=alice, project=proj)
    with pytest.raises(AlreadyRanked, match="another ranking"):
        _rank(q, second, client_uuid=key)
    second.task.refresh_from_db()
    assert (second.task.leased_count, second.task.completed_count) == (1, 0)
    assert Ranking.objects.count() == 1 and PreferencePair.objects.count() == 6
    assert _rank(q, second).created  # a fresh uuid goes through


@pytest.mark.django_db
def test_a_second_ranking_of_the_same_task_with_a_new_uuid_is_refused(q, alice):
    proj = f.project()
    f.task(proj)
    a = q.next_task(annotator=alice, project=proj)
    _rank(q, a)
    with pytest.raises(AlreadyRanked):
        _rank(q, a)


@pytest.mark.django_db
def test_a_ranking_that_misses_a_candidate_is_a_400_naming_it(q, alice):
    proj = f.project()
    f.task(proj)
    a = q.next_task(annotator=alice, project=proj)
    ids = a.task.candidate_ids
    with pytest.raises(InvalidRanking) as err:
        _rank(q, a, ordering=[[ids[0]], [ids[1]], [ids[2]]])
    assert err.value.status == 400
    assert f"leaves out candidates [{ids[3]}]" in str(err.value)
    assert Assignment.objects.get(pk=a.pk).state == "active"  # the lease is kept; the annotator can fix it


@pytest.mark.django_db
def test_ranking_and_its_pairs_are_written_together_with_ties(q, alice):
    proj = f.project()
    f.task(proj)
    a = q.next_task(annotator=alice, project=proj)
    c1, c2, c3, c4 = a.task.candidate_ids
    result = _rank(q, a, ordering=[[c3], [c1, c2], [c4]], flags={"unsafe"}, rationale="c3 names the colour")
    pairs = set(PreferencePair.objects.filter(ranking=result.ranking).values_list("chosen", "rejected", "margin"))
    assert pairs == {(c3, c1, 1), (c3, c2, 1), (c3, c4, 2), (c1, c4, 1), (c2, c4, 1)}
    assert result.ranking.flag_unsafe and not result.ranking.flag_all_bad


@pytest.mark.django_db
def test_unknown_flags_are_refused(q, alice):
    proj = f.project()
    f.task(proj)
    a = q.next_task(annotator=alice, project=proj)
    with pytest.raises(InvalidRanking, match="unknown flags"):
        _rank(q, a, flags={"boring"})


@pytest.mark.django_db
def test_submitting_a_task_never_taken_is_a_409(q, alice):
    proj = f.project()
    t = f.task(proj)
    with pytest.raises(LeaseLost, match="not taken"):
        q.submit_ranking(annotator=alice, task_id=t.pk, ordering=[[i] for i in t.candidate_ids], client_uuid=uuid.uuid4())


@pytest.mark.django_db
def test_release_gives_the_task_back_and_it_may_return(q, alice, bob):
    proj = f.project()
    t = f.task(proj)
    a = q.next_task(annotator=alice, project=proj)
    q.release_task(annotator=alice, task_id=a.task_id)
    assert q.next_task(annotator=bob, project=proj).task_id == t.pk
    q.release_task(annotator=bob, task_id=t.pk)
    assert q.next_task(annotator=alice, project=proj).task_id == t.pk


@pytest.mark.django_db
def test_a_closed_task_refuses_rankings(q, alice):
    proj = f.project()
    f.task(proj)
    a = q.next_task(annotator=alice, project=proj)
    q.close_task(task_id=a.task_id)
    with pytest.raises(LeaseLost, match="closed"):
        _rank(q, a)
    assert RankingTask.objects.get(pk=a.task_id).state == "closed"


@pytest.mark.django_db
def test_open_task_checks_the_candidates_belong_to_the_prompt(q):
    proj = f.project(k=2)
    t1, t2 = f.tasks(proj, 2, texts=["a", "b"])
    with pytest.raises(InvalidRanking, match="not answers to prompt"):
        q.open_task(project=proj, prompt_id=t1.prompt_id, candidate_ids=[t1.candidate_ids[0], t2.candidate_ids[0]])
    with pytest.raises(InvalidRanking, match="needs 2 candidates"):
        q.open_task(project=proj, prompt_id=t1.prompt_id, candidate_ids=[t1.candidate_ids[0]])


@pytest.mark.django_db
def test_the_own_unexpired_lease_comes_before_a_better_task_opened_later(q, alice):
    proj = f.project()
    first = f.task(proj, priority=1)
    assert q.next_task(annotator=alice, project=proj).task_id == first.pk
    f.task(proj, priority=9)
    assert q.next_task(annotator=alice, project=proj).task_id == first.pk


@pytest.mark.django_db
def test_a_fully_leased_task_is_not_handed_out_but_an_open_slot_of_it_is(q, alice, bob, carol):
    proj = f.project(overlap=2)
    t = f.task(proj, priority=5)
    assert q.next_task(annotator=alice, project=proj).task_id == t.pk
    t.refresh_from_db()
    assert (t.leased_count, t.state) == (1, "open")
    assert q.next_task(annotator=bob, project=proj).task_id == t.pk
    t.refresh_from_db()
    assert (t.leased_count, t.state) == (2, "full")
    assert q.next_task(annotator=carol, project=proj) is None


@pytest.mark.django_db
def test_what_next_task_returns_carries_the_annotators_screen(q, alice):
    proj = f.project()
    t = f.task(proj, texts=["one", "two", "three", "four"])
    a = q.next_task(annotator=alice, project=proj)
    assert (a.task_id, a.annotator_id, a.state) == (t.pk, alice.pk, "active")
    payload = task_payload(a)
    assert payload["task_id"] == t.pk and payload["project"] == proj.slug
    assert payload["prompt"] == t.prompt.text
    assert (payload["image_width"], payload["image_height"]) == (t.prompt.image.width, t.prompt.image.height)
    assert sorted(c["text"] for c in payload["candidates"]) == ["four", "one", "three", "two"]
    assert {c["id"] for c in payload["candidates"]} == set(t.candidate_ids)
    assert 29 * 60 < payload["lease_seconds_left"] <= 30 * 60
    assert task_payload(q.next_task(annotator=alice, project=proj)) == payload  # the own lease, again


@pytest.mark.django_db
def test_leases_expire_per_project_and_counters_follow(q, alice):
    one, two = f.project(lease_minutes=5), f.project(lease_minutes=5)
    t1, t2 = f.task(one), f.task(two)
    q.next_task(annotator=alice, project=one)
    q.next_task(annotator=alice, project=two)
    later = timezone.now() + timedelta(minutes=6)
    assert q.expire_leases(project=one, now=later) == 1
    t1.refresh_from_db(), t2.refresh_from_db()
    assert (t1.leased_count, t1.state, t2.leased_count, t2.state) == (0, "open", 1, "full")
    assert q.expire_leases(now=later) == 1  # every project
    assert q.expire_leases(now=later) == 0
    t2.refresh_from_db()
    assert (t2.leased_count, t2.state) == (0, "open")


@pytest.mark.django_db
def test_an_annotator_whose_lease_expired_gets_the_task_again(q, alice):
    proj = f.project(lease_minutes=5)
    t = f.task(proj)
    first = q.next_task(annotator=alice, project=proj)
    again = q.next_task(annotator=alice, project=proj, now=timezone.now() + timedelta(minutes=6))
    assert again.task_id == t.pk and again.pk == first.pk  # the same assignment row, leased again
    t.refresh_from_db()
    assert (t.leased_count, t.state) == (1, "full")


@pytest.mark.django_db
@pytest.mark.parametrize("bad", ["duplicate", "foreign", "empty"])
def test_a_ranking_must_cover_exactly_the_tasks_candidates(q, alice, bad):
    proj = f.project()
    other = f.task(proj)
    f.task(proj, priority=1)
    a = q.next_task(annotator=alice, project=proj)
    ids = a.task.candidate_ids
    ordering = {
        "duplicate": [[ids[0]], [ids[1]], [ids[2]], [ids[3]], [ids[0]]],
        "foreign": [[ids[0]], [ids[1]], [ids[2]], [ids[3]], [other.candidate_ids[0]]],
        "empty": [],
    }[bad]
    with pytest.raises(InvalidRanking):
        _rank(q, a, ordering=ordering)
    assert Ranking.objects.count() == 0 and PreferencePair.objects.count() == 0
    task = RankingTask.objects.get(pk=a.task_id)
    assert (task.leased_count, task.completed_count, task.state) == (1, 0, "full")


@pytest.mark.django_db
def test_a_submit_for_a_task_that_does_not_exist_is_a_404(q, alice):
    with pytest.raises(NotFound) as err:
        q.submit_ranking(annotator=alice, task_id=987654, ordering=[[1], [2]], client_uuid=uuid.uuid4())
    assert err.value.status == 404


@pytest.mark.django_db
def test_skip_and_release_move_the_counters_and_refuse_a_task_not_held(q, alice, bob):
    proj = f.project(overlap=2)
    t = f.task(proj)
    q.next_task(annotator=alice, project=proj)
    q.next_task(annotator=bob, project=proj)
    q.skip_task(annotator=alice, task_id=t.pk, reason="x" * 600)
    assert len(Assignment.objects.get(task=t, annotator=alice).skip_reason) == 500
    q.release_task(annotator=bob, task_id=t.pk)
    t.refresh_from_db()
    assert (t.leased_count, t.completed_count, t.state) == (0, 0, "open")
    with pytest.raises(LeaseLost):
        q.release_task(annotator=bob, task_id=t.pk)
    with pytest.raises(LeaseLost, match="you skipped"):
        _rank(q, _held(t, alice))


def _held(task, annotator):
    return Assignment.objects.select_related("task").get(task=task, annotator=annotator)


@pytest.mark.django_db
def test_a_late_submit_after_a_release_is_refused_once_someone_else_took_the_slot(q, alice, bob):
    proj = f.project()
    t = f.task(proj)
    a = q.next_task(annotator=alice, project=proj)
    q.release_task(annotator=alice, task_id=t.pk)
    q.next_task(annotator=bob, project=proj)
    with pytest.raises(LeaseLost, match="went to another annotator"):
        _rank(q, a)
    t.refresh_from_db()
    assert (t.leased_count, t.completed_count) == (1, 0)


@pytest.mark.django_db
def test_a_repeat_submit_after_the_task_is_done_answers_with_the_stored_ranking(q, alice):
    proj = f.project()
    f.task(proj)
    a = q.next_task(annotator=alice, project=proj)
    key = uuid.uuid4()
    first = _rank(q, a, client_uuid=key, ordering=[[i] for i in reversed(a.task.candidate_ids)])
    again = _rank(q, a, client_uuid=key)  # a retry may even carry a different body: the first one counts
    assert not again.created and again.ranking.pk == first.ranking.pk
    assert again.ranking.ordering == first.ranking.ordering


def _annotate_until_empty(q, annotator, project, results, errors, barrier):
    try:
        barrier.wait()
        while True:
            a = q.next_task(annotator=annotator, project=project)
            if a is None:
                return
            try:
                r = q.submit_ranking(
                    annotator=annotator,
                    task_id=a.task_id,
                    ordering=[[i] for i in a.task.candidate_ids],
                    client_uuid=uuid.uuid4(),
                )
                results.append(r.ranking.pk)
            except AnnotationError as exc:  # pragma: no cover - would be a bug, reported below
                errors.append(repr(exc))
                return
    except Exception as exc:  # pragma: no cover
        errors.append(repr(exc))
    finally:
        connections.close_all()


THREADS = 16


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("overlap", [1, 3])
def test_sixteen_annotators_at_once_never_exceed_the_overlap(q, overlap):
    """16 annotator threads, each with its own database connection, loop "next task → submit" until the
    queue is empty. On PostgreSQL this exercises SKIP LOCKED, on SQLite the serialised IMMEDIATE
    transactions. No task may end up with more rankings than its overlap."""
    people = [f.user(f"annotator{i}") for i in range(THREADS)]
    proj = f.project(overlap=overlap, k=3, annotators=people)
    f.tasks(proj, 40)
    results, errors = [], []
    barrier = threading.Barrier(THREADS)
    threads = [
        threading.Thread(target=_annotate_until_empty, args=(q, p, proj, results, errors, barrier)) for p in people
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) == 40 * overlap == Ranking.objects.count()
    per_task = RankingTask.objects.annotate(n=Count("rankings")).values_list("n", flat=True)
    assert set(per_task) == {overlap}
    per_pair = Ranking.objects.values("task", "annotator").annotate(n=Count("id")).filter(n__gt=1)
    assert not per_pair.exists()
    assert set(RankingTask.objects.values_list("state", flat=True)) == {"done"}
    assert set(RankingTask.objects.values_list("completed_count", "leased_count")) == {(overlap, 0)}
    assert not Assignment.objects.filter(state="active").exists()
    assert PreferencePair.objects.count() == 3 * Ranking.objects.count()  # K=3 strict orders: 3 pairs each
