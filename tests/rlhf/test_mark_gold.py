"""Gold tasks from the ground truth (``rlhf.gold``, ``manage.py mark_gold``): a stable hashed fraction of a
demo-like project's open tasks becomes gold, ordered by the verifiable reward; ties, tasks without ground truth
and ranked tasks are skipped and counted; bad requests change nothing; the queue then hands the tasks out as gold.

Personas: alice is an admin of "shapes", bob its annotator; carl is an admin of another project only.
"""

import io
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from annotation.models import Prompt, RankingTask
from annotation.services import queue
from annotation.services.imports import import_bundle
from annotation.services.projects import member_set
from annotation.services.queue import OrmQueue
from rlhf import gold as gt_gold
from rlhf.engine.demo import world
from rlhf.engine.demo.annotators import demo_scores
from rlhf.services import loop_settings_set
from tests import factories as f

pytestmark = pytest.mark.django_db
T = RankingTask.State


@pytest.fixture
def shapes(tmp_path):
    """A demo-like project: 80 demo-world images with ground truth, four hand-made captions each (the demo's
    ``--candidates world``), imported as the demo imports them."""
    alice, bob, carl = f.user("alice"), f.user("bob"), f.user("carl")
    proj = f.project("shapes", k=4, admins=[alice], annotators=[bob])
    f.project("elsewhere", admins=[carl])
    world.write_demo_manifest(tmp_path / "bundle", n=80, seed=3, k=4)
    import_bundle(project=proj, path=tmp_path / "bundle")
    return proj


def _run(*args) -> str:
    out = io.StringIO()
    call_command("mark_gold", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def _snapshot(proj) -> list[tuple]:
    return list(RankingTask.objects.filter(project=proj).order_by("pk").values_list("pk", "state", "gold_ordering"))


def _gold_ids(proj) -> set[int]:
    return set(RankingTask.objects.filter(project=proj, state=T.GOLD).values_list("pk", flat=True))


def _tie_task(proj) -> RankingTask:
    """A task with ground truth whose candidates all say the same: no strict pair."""
    task = f.task(proj, texts=["one shape: a small red circle."] * 4)
    scene = Prompt.objects.filter(project=proj, ground_truth__isnull=False).exclude(pk=task.prompt_id).first()
    Prompt.objects.filter(pk=task.prompt_id).update(ground_truth=scene.ground_truth, text=scene.text)
    return task


def test_marks_the_hashed_fraction_ordered_by_the_reward(shapes):
    open_ids = list(RankingTask.objects.filter(project=shapes, state=T.OPEN).values_list("pk", flat=True))
    expected = {pk for pk in open_ids if gt_gold.in_fraction(shapes, pk, 0.25)}
    result = gt_gold.mark_gold_from_ground_truth(shapes, fraction=0.25)
    assert result.reward == "demo_reward" and result.open_tasks == len(open_ids) == 80
    assert result.considered == len(expected)
    assert 8 <= result.considered <= 35  # about a quarter of 80
    assert result.marked + result.skipped_ties == result.considered and result.marked > 0
    assert result.skipped_ranked == result.skipped_no_ground_truth == result.skipped_unscorable == 0
    assert _gold_ids(shapes) == set(result.task_ids) <= expected

    for task in RankingTask.objects.filter(pk__in=result.task_ids).select_related("prompt"):
        texts = dict(task.prompt.candidates.values_list("pk", "text"))
        scores = dict(zip(task.candidate_ids, demo_scores(task.prompt.text, [texts[c] for c in task.candidate_ids],
                                                          task.prompt.ground_truth), strict=True))
        groups = task.gold_ordering
        assert len(groups) >= 2 and sorted(c for g in groups for c in g) == sorted(task.candidate_ids)
        levels = [{scores[c] for c in g} for g in groups]
        assert all(len(level) == 1 for level in levels)  # a group is one score: ties
        flat = [level.pop() for level in levels]
        assert flat == sorted(flat, reverse=True) and len(set(flat)) == len(flat)  # best first, strictly
    for task in RankingTask.objects.filter(pk__in=expected - set(result.task_ids)):
        assert task.state == T.OPEN and task.gold_ordering is None  # the skipped ties stay in the queue


def test_stable_on_a_rerun_and_a_larger_fraction_extends_the_set(shapes):
    first = gt_gold.mark_gold_from_ground_truth(shapes, fraction=0.2)
    before = _snapshot(shapes)
    again = gt_gold.mark_gold_from_ground_truth(shapes, fraction=0.2)
    assert again.marked == 0 and again.considered == first.skipped_ties == again.skipped_ties
    assert _snapshot(shapes) == before

    more = gt_gold.mark_gold_from_ground_truth(shapes, fraction=0.5)
    assert more.marked > 0 and not set(more.task_ids) & set(first.task_ids)
    assert _gold_ids(shapes) == set(first.task_ids) | set(more.task_ids)
    assert all(gt_gold.in_fraction(shapes, pk, 0.5) for pk in _gold_ids(shapes))


def test_ties_no_ground_truth_and_ranked_tasks_are_skipped_and_counted(shapes):
    tie = _tie_task(shapes)
    bare = f.task(shapes)  # f.task's prompts carry no ground truth
    assert not (bare.prompt.ground_truth or bare.prompt.image.ground_truth)
    bob = f.user("bob")
    a = queue.next_task(annotator=bob, project=shapes)
    c = a.task.candidate_ids
    queue.submit_ranking(annotator=bob, task_id=a.task_id, ordering=[[x] for x in c], client_uuid=uuid.uuid4())
    ranked = RankingTask.objects.get(pk=a.task_id)
    assert ranked.state == T.DONE  # overlap 1: ranked once is done, so not among the open tasks

    with_overlap = f.task(shapes)
    RankingTask.objects.filter(pk=with_overlap.pk).update(required_annotations=2)
    Prompt.objects.filter(pk=with_overlap.prompt_id).update(ground_truth=tie.prompt.ground_truth)
    carl = f.user("carl")
    member_set(project=shapes, user=carl, role="annotator")
    RankingTask.objects.filter(project=shapes).exclude(pk=with_overlap.pk).update(priority=-1)
    a = queue.next_task(annotator=carl, project=shapes)
    assert a.task_id == with_overlap.pk
    c = a.task.candidate_ids
    queue.submit_ranking(annotator=carl, task_id=a.task_id, ordering=[[x] for x in c], client_uuid=uuid.uuid4())
    assert RankingTask.objects.get(pk=with_overlap.pk).state == T.OPEN  # one of two rankings: still open

    result = gt_gold.mark_gold_from_ground_truth(shapes, fraction=1)
    assert result.considered == result.open_tasks == 80 - 1 + 3
    assert result.skipped_no_ground_truth == 1 and result.skipped_ranked == 1
    assert result.skipped_ties == 1
    assert result.marked + result.skipped == result.considered
    for pk in (tie.pk, bare.pk, with_overlap.pk):
        assert RankingTask.objects.get(pk=pk).gold_ordering is None
    assert RankingTask.objects.get(pk=tie.pk).state == T.OPEN


def test_a_ground_truth_the_reward_cannot_read_is_skipped_and_named(shapes):
    odd = f.task(shapes)
    scene = Prompt.objects.filter(project=shapes, ground_truth__isnull=False).first()
    Prompt.objects.filter(pk=odd.prompt_id).update(ground_truth={"label": "cat"}, text=scene.text)
    result = gt_gold.mark_gold_from_ground_truth(shapes, fraction=1)
    assert result.skipped_unscorable == 1 and result.errors == [f"task {odd.pk}: KeyError: 'objects'"]
    assert result.marked == 80 and RankingTask.objects.get(pk=odd.pk).state == T.OPEN


def test_the_command_reports_counts_and_a_dry_run_changes_nothing(shapes):
    before = _snapshot(shapes)
    dry = _run("shapes", "--fraction", "0.3", "--dry-run")
    assert "would mark" in dry and "dry run" in dry and "demo_reward" in dry
    assert _snapshot(shapes) == before
    preview = gt_gold.mark_gold_from_ground_truth(shapes, fraction=0.3, dry_run=True)

    out = _run("shapes", "--fraction", "0.3")
    assert f"marked {preview.marked} gold" in out and f"{preview.considered} considered" in out
    assert "ties" in out and "without ground truth" in out and "already ranked" in out
    assert _gold_ids(shapes) == set(preview.task_ids)


def test_the_reward_comes_from_the_loop_settings_or_the_option(shapes):
    alice = f.user("alice")
    loop_settings_set(project=shapes, round_params={"verifiable_reward": "count_reward"})
    assert gt_gold.default_reward(shapes) == "count_reward"
    loop_settings_set(project=shapes, gate_reward="caption_reward")
    assert gt_gold.default_reward(shapes) == "caption_reward"  # the gate's reward first, as rlhf.gate.plan
    result = gt_gold.mark_gold_from_ground_truth(shapes, fraction=0.2, by=alice, dry_run=True)
    assert result.reward == "caption_reward"
    out = _run("shapes", "--fraction", "0.2", "--reward", "shape_reward", "--as", "alice")
    assert "reward shape_reward" in out
    assert _gold_ids(shapes)


@pytest.mark.parametrize("args, message", [
    (["nowhere", "--fraction", "0.1"], "no project 'nowhere'"),
    (["shapes", "--fraction", "0.1", "--reward", "nope_reward"], "known rewards: "),
    (["shapes", "--fraction", "0"], "(0, 1]"),
    (["shapes", "--fraction", "1.5"], "(0, 1]"),
    (["shapes", "--fraction", "-0.1"], "(0, 1]"),
    (["shapes", "--fraction", "nan"], "(0, 1]"),
    (["shapes", "--fraction", "a lot"], "(0, 1]"),
    (["shapes", "--fraction", "0.5", "--as", "nobody"], "no user 'nobody'"),
    (["shapes", "--fraction", "0.5", "--as", "bob"], "not an admin of project shapes"),
    (["shapes", "--fraction", "0.5", "--as", "carl"], "not an admin of project shapes"),
])
def test_bad_requests_are_errors_and_change_nothing(shapes, args, message):
    before = _snapshot(shapes)
    with pytest.raises(CommandError) as err:
        _run(*args)
    assert message in str(err.value)
    if "known rewards" in message:
        assert "demo_reward" in str(err.value) and "caption_reward" in str(err.value)
    assert _snapshot(shapes) == before


def test_the_service_checks_its_arguments_before_changing_anything(shapes):
    before = _snapshot(shapes)
    for fraction in (0, 1.01, float("nan"), True, "0.5"):
        with pytest.raises(gt_gold.MarkGoldError):
            gt_gold.mark_gold_from_ground_truth(shapes, fraction=fraction)
    with pytest.raises(gt_gold.MarkGoldError, match="known rewards"):
        gt_gold.mark_gold_from_ground_truth(shapes, fraction=0.5, reward="nope")
    with pytest.raises(gt_gold.MarkGoldError, match="not an admin"):
        gt_gold.mark_gold_from_ground_truth(shapes, fraction=0.5, by=f.user("bob"))
    assert _snapshot(shapes) == before


def _postgres_queue():
    if connection.vendor != "postgresql":
        pytest.skip("PostgresQueue needs DATABASE_URL pointing at PostgreSQL")
    from annotation.services.queue.postgres import PostgresQueue

    return PostgresQueue()


@pytest.fixture(params=["orm", pytest.param("postgres", marks=pytest.mark.postgres)])
def q(request):
    return OrmQueue() if request.param == "orm" else _postgres_queue()


def test_the_queue_hands_the_marked_tasks_out_as_gold(shapes, q):
    result = gt_gold.mark_gold_from_ground_truth(shapes, fraction=0.25)
    golds = set(result.task_ids)
    shapes.gold_rate = 1.0
    shapes.save(update_fields=["gold_rate"])
    bob = f.user("bob")
    seen = []
    for _ in range(len(golds)):
        a = q.next_task(annotator=bob, project=shapes)
        assert a is not None and a.task.state == T.GOLD and a.task_id in golds
        seen.append(a.task_id)
        q.submit_ranking(annotator=bob, task_id=a.task_id, ordering=a.task.gold_ordering, client_uuid=uuid.uuid4())
    assert set(seen) == golds  # each gold task once
    a = q.next_task(annotator=bob, project=shapes)  # none left: back to the open tasks
    assert a is not None and a.task.state != T.GOLD and a.task_id not in golds
    assert set(RankingTask.objects.filter(pk__in=golds).values_list("state", flat=True)) == {T.GOLD}
