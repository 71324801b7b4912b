"""Quality reports: agreement and reliability stored per project, computed in a background job, shown on the
dashboard and the API.

Personas: alice is an admin of "shapes"; carol, cleo and cora rank carefully (the true order: candidates in id
order), adam reverses it, rita shuffles; charlie is an outsider. Overlap 3: every task is ranked by three of
the five, so they share tasks. (With only two careful annotators against one adversarial and one random on
12 tasks, Crowd-BT can settle on the mirrored fit, the adversarial one reliable; the majority here is careful.)
"""

import random

import pytest
from django.test import Client
from rest_framework.test import APIClient

from annotation.jobs import quality_report_job
from annotation.models import QualityReport, Ranking
from annotation.services.quality import job_id, quality_report_compute, quality_report_for
from tests import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _few_resamples(settings):
    settings.QUALITY_BOOTSTRAP = 50


@pytest.fixture
def world():
    alice, charlie = f.user("alice"), f.user("charlie")
    users = {name: f.user(name) for name in f.STYLES}
    proj = f.project("shapes", k=4, overlap=3, admins=[alice], annotators=list(users.values()))
    f.tasks(proj, 10)
    f.rank_round_robin(proj, users, random.Random(7))
    return {"alice": alice, "charlie": charlie, "project": proj, **users}


def _figures(report, user):
    return report.data["annotators"][str(user.pk)]


def test_the_adversarial_annotator_is_less_reliable_and_agreement_is_per_annotator(world):
    proj = world["project"]
    assert Ranking.objects.filter(project=proj).count() == 30
    report = quality_report_compute(project=proj)
    assert report.rankings == 30
    assert report.last_ranking_id == Ranking.objects.filter(project=proj).latest("id").pk
    carol, cleo, adam = (_figures(report, world[n]) for n in ("carol", "cleo", "adam"))
    assert adam["reliability"] < 0.5 < carol["reliability"]
    assert adam["reliability"] < cleo["reliability"]
    for a in (carol, cleo, adam):
        assert a["tasks"] > 0 and a["agreement_n"] > 0
        low, high = a["agreement_ci"]
        assert low <= a["agreement"] <= high
    assert adam["agreement"] < carol["agreement"]
    project = report.data["project"]
    assert project["tasks"] == 10 and project["n_boot"] == 50
    assert project["pairwise"] is not None and project["alpha"] is not None
    assert quality_report_for(proj).stale is False


def test_rejected_rankings_are_left_out_and_make_the_report_stale(world):
    proj = world["project"]
    quality_report_compute(project=proj)
    Ranking.objects.filter(project=proj, annotator=world["adam"]).update(review=Ranking.Review.REJECTED)
    assert quality_report_for(proj).stale is True
    adams = Ranking.objects.filter(project=proj, annotator=world["adam"]).count()
    report = quality_report_compute(project=proj)
    assert adams > 0 and report.rankings == 30 - adams
    assert str(world["adam"].pk) not in report.data["annotators"]
    assert quality_report_for(proj).stale is False


def test_the_api_answers_202_then_the_job_stores_the_figures(world, django_capture_on_commit_callbacks):
    api = APIClient()
    api.force_authenticate(world["alice"])
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        r = api.get("/api/projects/shapes/quality/")
    assert r.status_code == 202 and r.json() == {"status": "computing"}
    assert len(callbacks) == 1  # the recompute is enqueued on commit, not computed here
    assert not QualityReport.objects.exists()

    quality_report_job(world["project"].pk)  # what the worker runs

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        r = api.get("/api/projects/shapes/quality/")
    body = r.json()
    assert r.status_code == 200 and body["stale"] is False and body["computed_at"] and body["rankings"] == 30
    assert callbacks == []  # fresh: nothing to enqueue
    assert body["annotators"][str(world["adam"].pk)]["reliability"] < 0.5
    assert body["project"]["alpha_ci"][0] is not None


def test_only_project_admins_see_the_report(world):
    api = APIClient()
    api.force_authenticate(world["carol"])
    assert api.get("/api/projects/shapes/quality/").status_code == 403
    api.force_authenticate(world["charlie"])
    assert api.get("/api/projects/shapes/quality/").status_code == 403  # outsiders: as every project endpoint
    assert APIClient().get("/api/projects/shapes/quality/").status_code == 401


def test_the_job_is_enqueued_once_at_a_time(world, django_capture_on_commit_callbacks):
    from lensloop.queue import get_queue

    q = get_queue("default")
    q.empty()
    api = APIClient()
    api.force_authenticate(world["alice"])
    with django_capture_on_commit_callbacks(execute=True):
        api.get("/api/projects/shapes/quality/")
        api.get("/api/projects/shapes/quality/")
    try:
        assert q.job_ids == [job_id(world["project"].pk)]
    finally:
        q.empty()


def test_the_dashboard_shows_agreement_and_reliability(world, django_capture_on_commit_callbacks):
    client = Client()
    client.force_login(world["alice"])
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        html = client.get("/projects/shapes/dashboard/").content.decode()
    assert len(callbacks) == 1  # no report yet: asked for in the background
    assert "Agreement (95 % interval, n)" in html and "Reliability" in html
    assert "being computed" in html

    report = quality_report_compute(project=world["project"])
    html = client.get("/projects/shapes/dashboard/").content.decode()
    adam = _figures(report, world["adam"])
    assert f"{adam['reliability']:.2f}" in html
    assert 'data-field="agreement"' in html and "n=" in html
    assert "computed" in html and "background" in html


# --- figures written back per pair and per ranking, and the agreement timeline


def _expected_agreement(pair):
    """From the task's rankings by hand: of the annotators who ordered the pair strictly, the share who
    ordered it this way (None when only this pair's annotator did)."""
    same = strict = 0
    for ordering in Ranking.objects.filter(task=pair.ranking.task).exclude(review=Ranking.Review.REJECTED).values_list(
        "ordering", flat=True
    ):
        place = {cid: i for i, group in enumerate(ordering) for cid in group}
        if place[pair.chosen_id] != place[pair.rejected_id]:
            strict += 1
            same += place[pair.chosen_id] < place[pair.rejected_id]
    return None if strict < 2 else round(same / strict, 4)


@pytest.mark.parametrize("chunk", [50_000, 7])  # one statement, and many chunks
def test_pairs_get_confidence_and_agreement_and_rankings_their_consensus(world, chunk, monkeypatch):
    from annotation.models import PreferencePair
    from annotation.services import quality

    monkeypatch.setattr(quality, "WRITE_CHUNK", chunk)
    proj = world["project"]
    assert not PreferencePair.objects.filter(project=proj, confidence__isnull=False).exists()
    quality_report_compute(project=proj)
    pairs = PreferencePair.objects.filter(project=proj).select_related("ranking__task")
    assert pairs.count() == 30 * 6 and not pairs.filter(confidence__isnull=True).exists()
    for name in ("carol", "cleo", "cora"):
        assert all(p.confidence > 0.5 for p in pairs.filter(ranking__annotator=world[name]))
    assert all(p.confidence < 0.5 for p in pairs.filter(ranking__annotator=world["adam"]))
    for p in pairs:
        assert p.agreement == _expected_agreement(p)
    for ranking in Ranking.objects.filter(project=proj).prefetch_related("pairs"):
        mean = sum(p.confidence for p in ranking.pairs.all()) / 6
        assert ranking.consensus == pytest.approx(mean, abs=1e-3)
    assert Ranking.objects.filter(annotator=world["adam"]).exclude(consensus__lt=0.5).count() == 0


def test_a_rejected_rankings_figures_are_cleared_and_a_tie_only_ranking_has_no_consensus(world):
    from annotation.models import PreferencePair

    proj = world["project"]
    quality_report_compute(project=proj)
    Ranking.objects.filter(project=proj, annotator=world["adam"]).update(review=Ranking.Review.REJECTED)
    tied = Ranking.objects.filter(project=proj, annotator=world["carol"]).first()
    Ranking.objects.filter(pk=tied.pk).update(ordering=[sorted(tied.task.candidate_ids)])
    PreferencePair.objects.filter(ranking=tied).delete()  # what a ranking of one tied group implies: no pair
    quality_report_compute(project=proj)
    adams = PreferencePair.objects.filter(ranking__annotator=world["adam"])
    assert adams.exists() and not adams.filter(confidence__isnull=False).exists()
    assert not adams.filter(agreement__isnull=False).exists()
    assert not Ranking.objects.filter(annotator=world["adam"], consensus__isnull=False).exists()
    tied.refresh_from_db()
    assert tied.consensus is None
    # without adam's reversals the careful annotators' pairs are all the more certain
    assert PreferencePair.objects.filter(ranking__annotator=world["carol"]).exclude(confidence__gt=0.5).count() == 0


def test_the_timeline_is_per_day_for_a_young_project_then_per_week(world):
    from datetime import timedelta

    from django.utils import timezone

    proj = world["project"]
    report = quality_report_compute(project=proj)
    assert report.data["timeline_step"] == "day"
    [today] = report.data["timeline"]
    assert today["start"] == timezone.now().date().isoformat() and today["rankings"] == 30
    totals = report.data["project"]
    assert today["pairwise"] == totals["pairwise"] and today["n"] == 2 * (totals["agree"] + totals["disagree"])

    # Adam's rankings five weeks ago, everyone else's today: per week, and his week agrees least.
    monday = timezone.now() - timedelta(days=35)
    monday = (monday - timedelta(days=monday.weekday())).replace(hour=12, minute=0)
    Ranking.objects.filter(project=proj, annotator=world["adam"]).update(created_at=monday)
    report = quality_report_compute(project=proj)
    assert report.data["timeline_step"] == "week"
    old, new = report.data["timeline"]
    assert old["start"] == monday.date().isoformat() and old["rankings"] == 6 and new["rankings"] == 24
    assert old["pairwise"] < new["pairwise"]
    assert report.data["timeline"] == sorted(report.data["timeline"], key=lambda p: p["start"])
