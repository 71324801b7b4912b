"""Simulated annotators rank through the queue services by the demo world's verifiable reward."""

import random
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from annotation.models import Candidate, PreferencePair, Project, Ranking
from lensloop.formats import pairs_from_groups
from rlhf.engine.demo import world
from rlhf.engine.demo.annotators import noisy_ordering, ranking_to_pairs, simulated_ordering
from rlhf.engine.demo.rewards import demo_reward


def test_without_noise_the_ordering_follows_the_scores_with_ties():
    assert noisy_ordering({1: 0.2, 2: 1.0, 3: 0.2, 4: 0.5}, random.Random(0), 0.0) == [[2], [4], [1, 3]]


def test_with_full_noise_every_neighbouring_pair_is_swapped_in_turn():
    assert noisy_ordering({1: 3.0, 2: 2.0, 3: 1.0}, random.Random(0), 1.0) == [[2], [3], [1]]


def test_the_demos_pairs_follow_the_apps_rule_in_the_order_of_the_candidates():
    """The engine demo's preference records come from lensloop.formats.pairs_from_groups, the rule the queue's
    submits use (annotation.pairs), in the
    order the demo wrote them before: by the chosen candidate's position, then the rejected one's."""
    ranks = [1, 0, 2, 0]  # b and d tie for best
    assert ranking_to_pairs(["a", "b", "c", "d"], ranks) == [
        ("a", "c", 1), ("b", "a", 1), ("b", "c", 2), ("d", "a", 1), ("d", "c", 2),
    ]
    groups = [[1, 3], [0], [2]]
    assert sorted(pairs_from_groups(groups)) == [(i, j, m) for i, j, m in
                                                 [(0, 2, 1), (1, 0, 1), (1, 2, 2), (3, 0, 1), (3, 2, 2)]]


def test_the_simulated_annotator_judges_by_the_demo_reward():
    _, gt = world.make_scene(random.Random(3))
    texts = {7: world.reference_caption(gt), 8: "A blue square.", 9: "Nothing at all."}
    scores = dict(zip(texts, demo_reward([world.CAPTION_PROMPT] * 3, list(texts.values()), ground_truth=[gt] * 3), strict=True))
    assert simulated_ordering(world.CAPTION_PROMPT, texts, gt, random.Random(0), 0.0) == noisy_ordering(scores, random.Random(0), 0.0)
    assert simulated_ordering(world.CAPTION_PROMPT, texts, gt, random.Random(0), 0.0)[0] == [7]


def test_the_demo_annotators_import_no_django():
    code = "import sys, rlhf.engine.demo.annotators; print(any(m.split('.')[0] == 'django' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.django_db
def test_the_command_ranks_the_demo_queue_so_every_pair_agrees_with_the_ground_truth():
    call_command("demo", images=12, candidates="world")
    # Named as the demo names it (a loop over the demo's accounts once renamed it after the last one).
    assert Project.objects.get(slug="demo-shapes").name == "Demo: shapes captions"
    call_command("simulate_annotators", project="demo-shapes", annotators=3, noise=0.0)
    assert Ranking.objects.count() == 12
    for pair in PreferencePair.objects.select_related("prompt__image", "chosen", "rejected"):
        gt = pair.prompt.ground_truth
        good, bad = demo_reward([pair.prompt.text] * 2, [pair.chosen.text, pair.rejected.text], ground_truth=[gt, gt])
        assert good > bad
    assert Candidate.objects.filter(source="import").count() == 48


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_demos_first_tasks_are_the_demo_bases_own_captions():
    """A round learns from rankings of the policy's own samples; the demo's first round too. The demo command
    samples them from the shipped base (the real engine, in a generate run like a round's last step)."""
    from annotation.models import RankingTask
    from rlhf.models import ModelVersion, TrainingRun

    call_command("demo", images=12)
    run = TrainingRun.objects.get(kind="generate")
    assert run.state == "succeeded", run.error
    base = ModelVersion.objects.get(kind="policy", active=True)
    tasks = RankingTask.objects.filter(project__slug="demo-shapes")
    assert tasks.count() == 12 and {t.origin for t in tasks} == {f"run-{run.pk}"}
    candidates = Candidate.objects.filter(prompt__project__slug="demo-shapes")
    assert candidates.count() == 48 and set(candidates.values_list("source", flat=True)) == {base.label}
    assert tasks.filter(prompt__split="eval").exists()  # the first reward model is measured on held-out rankings
    call_command("demo", images=12)  # a second start samples nothing more
    assert TrainingRun.objects.filter(kind="generate").count() == 1 and tasks.count() == 12


@pytest.mark.django_db
def test_two_projects_ranked_with_the_same_seed_keep_every_ranking(tmp_path):
    """Seeds make the orderings repeatable; the rankings' client UUIDs must still be fresh each time."""
    from annotation.services.imports import import_bundle
    from rlhf.engine.demo import world
    from rlhf.simulate import simulate
    from tests import factories as f

    world.write_demo_manifest(tmp_path / "bundle", n=6, seed=5, k=4)
    for slug in ("first", "second"):
        project = f.project(slug, k=4)
        import_bundle(project=project, path=tmp_path / "bundle")
        assert simulate(project, annotators=2, noise=0.1, seed=1)["rankings"] == 6
    assert Ranking.objects.count() == 12


def test_generated_tasks_come_first_and_the_least_separated_prompt_leads():
    from rlhf.steps import uncertainty_priorities

    p = uncertainty_priorities(
        [
            {"prompt_id": 1, "reward": 0.0}, {"prompt_id": 1, "reward": 2.0},  # clearly separated
            {"prompt_id": 2, "reward": 0.5}, {"prompt_id": 2, "reward": 0.6},  # unsure
            {"prompt_id": 3},  # no reward model
        ]
    )
    assert p[2] > p[1] > 1.0 and p[3] == 1.0


# --- kinds of simulated annotators -------------------------------------------------------------------------

SCORES = {11: 0.9, 12: 0.1, 13: 0.5, 14: 0.3}  # shown in this order; best to worst: 11, 13, 14, 12


def test_each_kind_of_annotator_ranks_as_it_says():
    from rlhf.engine.demo.annotators import KINDS, ordering_of_kind

    truth = [[11], [13], [14], [12]]
    assert ordering_of_kind("careful", SCORES, random.Random(0), 0.0) == truth
    assert ordering_of_kind("adversarial", SCORES, random.Random(0), 0.0) == truth[::-1]
    assert ordering_of_kind("lazy", SCORES, random.Random(0), 0.5) == [[11], [12], [13], [14]]
    orders = {tuple(map(tuple, ordering_of_kind("random", SCORES, random.Random(seed), 0.0))) for seed in range(60)}
    assert len(orders) > 12 and all(sorted(o) == [(11,), (12,), (13,), (14,)] for o in orders)
    # noisy swaps more often than careful at the same noise
    def wrong(kind):
        rng = random.Random(1)
        return sum(ordering_of_kind(kind, SCORES, rng, 0.05) != truth for _ in range(400))
    assert wrong("careful") < wrong("noisy")
    assert set(KINDS) == {"careful", "noisy", "adversarial", "random", "lazy"}
    with pytest.raises(ValueError, match="unknown annotator kind"):
        ordering_of_kind("sloppy", SCORES, random.Random(0), 0.0)


def test_the_default_kind_is_the_careful_annotator_the_loop_always_had():
    _, gt = world.make_scene(random.Random(3))
    texts = {7: world.reference_caption(gt), 8: "A blue square.", 9: "Nothing at all."}
    for seed in range(5):
        assert (simulated_ordering(world.CAPTION_PROMPT, texts, gt, random.Random(seed), 0.3)
                == simulated_ordering(world.CAPTION_PROMPT, texts, gt, random.Random(seed), 0.3, "careful"))
    assert simulated_ordering(world.CAPTION_PROMPT, texts, gt, random.Random(0), 0.0, "adversarial")[-1] == [7]


def test_a_mix_of_kinds_is_one_kind_per_annotator():
    from rlhf.engine.demo.annotators import kinds_list, simulated_rankings

    assert kinds_list({"careful": 2, "random": 1}) == ["careful", "careful", "random"]
    assert kinds_list(["lazy", "careful"]) == ["lazy", "careful"]
    for bad in ({"careful": -1}, {"sloppy": 1}, ["careful", "sloppy"]):
        with pytest.raises(ValueError):
            kinds_list(bad)
    rankings, truth = simulated_rankings(30, {"careful": 2, "adversarial": 1}, overlap=2, k=3, seed=2, noise=0.0)
    assert len(rankings) == 60 and len(truth) == 30
    for task, who, ordering in rankings:
        best_first = sorted(range(3), key=lambda c: -truth[task][c])
        flat = [c for group in ordering for c in group]
        assert flat == (best_first if who < 2 else best_first[::-1])


@pytest.mark.django_db
def test_the_command_ranks_with_a_mix_of_kinds_each_as_it_says():
    """Careful people's pairs agree with the ground truth, adversarial people's never do, lazy people keep the
    order in which the page showed them the candidates."""
    from annotation.models import Project
    from annotation.selectors import candidates_for_annotator

    call_command("demo", images=12, candidates="world")
    from annotation.models import RankingTask

    project = Project.objects.get(slug="demo-shapes")
    assert RankingTask.objects.filter(project=project).update(required_annotations=3) == 12  # overlap 3
    call_command("simulate_annotators", project="demo-shapes", kinds="careful=1,adversarial=1,lazy=1", noise=0.0)
    assert Ranking.objects.count() == 36
    for ranking in Ranking.objects.select_related("annotator", "task__prompt__image"):
        kind = ranking.annotator.username.split("-")[-2]
        prompt = ranking.task.prompt
        texts = dict(Candidate.objects.filter(pk__in=ranking.task.candidate_ids).values_list("pk", "text"))
        gt = prompt.ground_truth or prompt.image.ground_truth
        truth = simulated_ordering(prompt.text, texts, gt, random.Random(0), 0.0)
        mine = [sorted(group) for group in ranking.ordering]
        if kind == "careful":
            assert mine == [sorted(group) for group in truth]
        elif kind == "adversarial":
            assert mine == [sorted(group) for group in truth[::-1]]
        else:
            assert kind == "lazy"
            shown = [c.pk for c in candidates_for_annotator(ranking.task, ranking.annotator_id)]
            assert ranking.ordering == [[pk] for pk in shown]


def test_the_command_refuses_unknown_kinds():
    from django.core.management.base import CommandError

    from rlhf.management.commands.simulate_annotators import parse_kinds

    assert parse_kinds("careful=4, adversarial=2,random") == {"careful": 4, "adversarial": 2, "random": 1}
    for bad in ("sloppy=2", "careful=two", "careful=0"):
        with pytest.raises(CommandError):
            parse_kinds(bad)
