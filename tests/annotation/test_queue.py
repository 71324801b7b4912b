"""Queue semantics of DESIGN.md: leases, overlap, expiry, idempotent submit, 409 on lost leases."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from annotation.exceptions import AlreadyRanked, InvalidRanking, LeaseLost
from annotation.models import Assignment, PreferencePair, Ranking, RankingTask
from annotation.services import queue
from tests import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    return f.user("alice")


@pytest.fixture
def bob():
    return f.user("bob")


@pytest.fixture
def carol():
    return f.user("carol")


def _rank(assignment, **kw):
    ids = assignment.task.candidate_ids
    kw.setdefault("ordering", [[i] for i in ids])
    kw.setdefault("client_uuid", uuid.uuid4())
    return queue.submit_ranking(annotator=assignment.annotator, task_id=assignment.task_id, **kw)


def test_it_hands_out_the_highest_priority_task_first(alice):
    proj = f.project()
    low, high = f.task(proj, priority=0), f.task(proj, priority=5)
    assert queue.next_task(annotator=alice, project=proj).task_id == high.pk
    assert low.pk != high.pk


def test_it_returns_the_annotators_own_lease_until_it_is_done(alice):
    proj = f.project()
    f.tasks(proj, 3)
    first = queue.next_task(annotator=alice, project=proj)
    again = queue.next_task(annotator=alice, project=proj)
    assert again.pk == first.pk
    _rank(first)
    assert queue.next_task(annotator=alice, project=proj).task_id != first.task_id


def test_overlap_one_never_gives_a_task_to_two_annotators(alice, bob):
    proj = f.project(overlap=1)
    f.task(proj)
    assert queue.next_task(annotator=alice, project=proj) is not None
    assert queue.next_task(annotator=bob, project=proj) is None


def test_overlap_three_gives_each_task_to_three_different_annotators(alice, bob, carol):
    proj = f.project(overlap=3)
    t = f.task(proj)
    dave = f.user("dave")
    for person in (alice, bob, carol):
        a = queue.next_task(annotator=person, project=proj)
        assert a.task_id == t.pk
        _rank(a)
    assert queue.next_task(annotator=dave, project=proj) is None
    t.refresh_from_db()
    assert (t.completed_count, t.leased_count, t.state) == (3, 0, "done")


def test_an_annotator_never_gets_a_task_they_ranked_or_skipped_again(alice, bob):
    proj = f.project(overlap=2)
    t1, t2 = f.tasks(proj, 2)
    a = queue.next_task(annotator=alice, project=proj)
    _rank(a)
    b = queue.next_task(annotator=alice, project=proj)
    queue.skip_task(annotator=alice, task_id=b.task_id, reason="unclear")
    assert queue.next_task(annotator=alice, project=proj) is None
    assert {t1.pk, t2.pk} == {a.task_id, b.task_id}


def test_an_expired_lease_returns_the_task_to_the_queue(alice, bob):
    proj = f.project(lease_minutes=5)
    t = f.task(proj)
    queue.next_task(annotator=alice, project=proj)
    later = timezone.now() + timedelta(minutes=6)
    given = queue.next_task(annotator=bob, project=proj, now=later)
    assert given.task_id == t.pk
    assert Assignment.objects.get(task=t, annotator=alice).state == "expired"
    t.refresh_from_db()
    assert t.leased_count == 1


def test_a_late_submit_is_accepted_while_nobody_else_took_the_task(alice):
    proj = f.project(lease_minutes=5)
    f.task(proj)
    a = queue.next_task(annotator=alice, project=proj)
    queue.expire_leases(now=timezone.now() + timedelta(minutes=6))
    result = _rank(a)
    assert result.created
    a.task.refresh_from_db()
    assert (a.task.completed_count, a.task.leased_count, a.task.state) == (1, 0, "done")


def test_a_submit_after_the_task_was_reassigned_is_a_409_and_saves_nothing(alice, bob):
    proj = f.project(lease_minutes=5)
    f.task(proj)
    a = queue.next_task(annotator=alice, project=proj)
    queue.next_task(annotator=bob, project=proj, now=timezone.now() + timedelta(minutes=6))
    with pytest.raises(LeaseLost) as err:
        _rank(a)
    assert err.value.status == 409
    assert "went to another annotator" in str(err.value)
    assert Ranking.objects.count() == 0


def test_submit_is_idempotent_on_the_client_uuid(alice):
    proj = f.project()
    f.task(proj)
    a = queue.next_task(annotator=alice, project=proj)
    key = uuid.uuid4()
    first = _rank(a, client_uuid=key)
    second = _rank(a, client_uuid=key)
    assert first.created and not second.created
    assert second.ranking.pk == first.ranking.pk
    assert Ranking.objects.count() == 1
    assert PreferencePair.objects.count() == 6
    a.task.refresh_from_db()
    assert a.task.completed_count == 1


def test_a_client_uuid_reused_for_another_task_is_refused_and_that_task_stays_leased(alice):
    proj = f.project()
    f.tasks(proj, 2)
    key = uuid.uuid4()
    _rank(queue.next_task(annotator=alice, project=proj), client_uuid=key)
    second = queue.next_task(annotator=alice, project=proj)
    with pytest.raises(AlreadyRanked, match="another ranking"):
        _rank(second, client_uuid=key)
    second.task.refresh_from_db()
    assert (second.task.leased_count, second.task.completed_count) == (1, 0)
    assert Ranking.objects.count() == 1 and PreferencePair.objects.count() == 6
    assert _rank(second).created  # a fresh uuid goes through


def test_a_second_ranking_of_the_same_task_with_a_new_uuid_is_refused(alice):
    proj = f.project()
    f.task(proj)
    a = queue.next_task(annotator=alice, project=proj)
    _rank(a)
    with pytest.raises(AlreadyRanked):
        _rank(a)


def test_a_ranking_that_misses_a_candidate_is_a_400_naming_it(alice):
    proj = f.project()
    f.task(proj)
    a = queue.next_task(annotator=alice, project=proj)
    ids = a.task.candidate_ids
    with pytest.raises(InvalidRanking) as err:
        _rank(a, ordering=[[ids[0]], [ids[1]], [ids[2]]])
    assert err.value.status == 400
    assert f"leaves out candidates [{ids[3]}]" in str(err.value)
    assert Assignment.objects.get(pk=a.pk).state == "active"  # the lease is kept; the annotator can fix it


def test_ranking_and_its_pairs_are_written_together_with_ties(alice):
    proj = f.project()
    f.task(proj)
    a = queue.next_task(annotator=alice, project=proj)
    c1, c2, c3, c4 = a.task.candidate_ids
    result = _rank(a, ordering=[[c3], [c1, c2], [c4]], flags={"unsafe"}, rationale="c3 names the colour")
    pairs = set(PreferencePair.objects.filter(ranking=result.ranking).values_list("chosen", "rejected", "margin"))
    assert pairs == {(c3, c1, 1), (c3, c2, 1), (c3, c4, 2), (c1, c4, 1), (c2, c4, 1)}
    assert result.ranking.flag_unsafe and not result.ranking.flag_all_bad


def test_unknown_flags_are_refused(alice):
    proj = f.project()
    f.task(proj)
    a = queue.next_task(annotator=alice, project=proj)
    with pytest.raises(InvalidRanking, match="unknown flags"):
        _rank(a, flags={"boring"})


def test_submitting_a_task_never_taken_is_a_409(alice):
    proj = f.project()
    t = f.task(proj)
    with pytest.raises(LeaseLost, match="not taken"):
        queue.submit_ranking(annotator=alice, task_id=t.pk, ordering=[[i] for i in t.candidate_ids], client_uuid=uuid.uuid4())


def test_release_gives_the_task_back_and_it_may_return(alice, bob):
    proj = f.project()
    t = f.task(proj)
    a = queue.next_task(annotator=alice, project=proj)
    queue.release_task(annotator=alice, task_id=a.task_id)
    assert queue.next_task(annotator=bob, project=proj).task_id == t.pk
    queue.release_task(annotator=bob, task_id=t.pk)
    assert queue.next_task(annotator=alice, project=proj).task_id == t.pk


def test_a_closed_task_refuses_rankings(alice):
    proj = f.project()
    f.task(proj)
    a = queue.next_task(annotator=alice, project=proj)
    queue.close_task(task_id=a.task_id)
    with pytest.raises(LeaseLost, match="closed"):
        _rank(a)
    assert RankingTask.objects.get(pk=a.task_id).state == "closed"


def test_open_task_checks_the_candidates_belong_to_the_prompt():
    proj = f.project(k=2)
    t1, t2 = f.tasks(proj, 2, texts=["a", "b"])
    with pytest.raises(InvalidRanking, match="not answers to prompt"):
        queue.open_task(project=proj, prompt_id=t1.prompt_id, candidate_ids=[t1.candidate_ids[0], t2.candidate_ids[0]])
    with pytest.raises(InvalidRanking, match="needs 2 candidates"):
        queue.open_task(project=proj, prompt_id=t1.prompt_id, candidate_ids=[t1.candidate_ids[0]])
