"""Gold tasks and quality control in the admin pages: the settings page (gold settings, checked like the API),
the dashboard's gold table and re-admission, and the review page's "Make gold" and order by disagreement.

Personas: alice is an admin of "shapes", bob and carl its annotators, charlie an outsider.
"""

import uuid

import pytest
from django.urls import reverse

from annotation.models import Membership, Project, Ranking, RankingTask
from annotation.services import gold
from annotation.services.queue import OrmQueue
from tests import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(client):
    alice, bob, carl, charlie = (f.user(n) for n in ("alice", "bob", "carl", "charlie"))
    proj = f.project("shapes", k=3, overlap=1, admins=[alice], annotators=[bob, carl])
    tasks = f.tasks(proj, 6)
    return {"alice": alice, "bob": bob, "carl": carl, "charlie": charlie, "project": proj, "tasks": tasks}


def _login(client, user):
    client.force_login(user)
    return client


def _ranking(user, proj, *, ordering=None, review=None) -> Ranking:
    q = OrmQueue()
    a = q.next_task(annotator=user, project=proj)
    task = RankingTask.objects.get(pk=a.task_id)
    order = ordering(task) if ordering else [[c] for c in task.candidate_ids]
    r = q.submit_ranking(annotator=user, task_id=task.pk, ordering=order, client_uuid=uuid.uuid4()).ranking
    if review:
        Ranking.objects.filter(pk=r.pk).update(review=review)
        r.refresh_from_db()
    return r


# --- settings ------------------------------------------------------------------------------------------


def test_the_settings_page_changes_gold_settings(client, world):
    url = reverse("project-settings", args=["shapes"])
    html = _login(client, world["alice"]).get(url).content.decode()
    for name in ("gold_rate", "gold_min_count", "gold_threshold", "gold_pause"):
        assert f'name="{name}"' in html
    proj = world["project"]
    data = {"name": proj.name, "slug": proj.slug, "task_type": proj.task_type, "candidates_per_task": 3,
            "overlap": 1, "lease_minutes": proj.lease_minutes, "instructions": "", "base_model": "",
            "heldout_fraction": proj.heldout_fraction, "gold_rate": "0.2", "gold_min_count": "5",
            "gold_threshold": "0.8", "gold_pause": "on"}
    r = client.post(url, data)
    assert r.status_code == 302
    proj.refresh_from_db()
    assert (proj.gold_rate, proj.gold_min_count, proj.gold_threshold, proj.gold_pause) == (0.2, 5, 0.8, True)


@pytest.mark.parametrize("field,value", [("gold_threshold", "1.5"), ("gold_rate", "-0.1"), ("gold_threshold", "x")])
def test_a_setting_out_of_range_is_an_error_on_the_page_and_changes_nothing(client, world, field, value):
    proj = world["project"]
    data = {"name": proj.name, "slug": proj.slug, "task_type": proj.task_type, "candidates_per_task": 3,
            "overlap": 1, "lease_minutes": proj.lease_minutes, "instructions": "", "base_model": "",
            "heldout_fraction": proj.heldout_fraction, "gold_rate": "0.3", "gold_min_count": "10",
            "gold_threshold": "0.7", field: value}
    r = _login(client, world["alice"]).post(reverse("project-settings", args=["shapes"]), data)
    assert r.status_code == 200 and "errorlist" in r.content.decode()
    fresh = Project.objects.get(pk=proj.pk)
    assert (fresh.gold_rate, fresh.gold_threshold) == (proj.gold_rate, proj.gold_threshold)


def test_only_admins_open_the_settings(client, world):
    url = reverse("project-settings", args=["shapes"])
    assert _login(client, world["bob"]).get(url).status_code == 403
    assert _login(client, world["charlie"]).get(url).status_code in (403, 404)


# --- dashboard -----------------------------------------------------------------------------------------


def test_the_dashboard_shows_gold_accuracy_and_readmits_a_paused_annotator(client, world):
    proj, alice, bob = world["project"], world["alice"], world["bob"]
    Project.objects.filter(pk=proj.pk).update(gold_rate=1.0, gold_min_count=2, gold_threshold=0.7, gold_pause=True)
    proj.refresh_from_db()
    for t in world["tasks"][:3]:
        c = t.candidate_ids
        gold.task_mark_gold(project=proj, task_id=t.pk, user=alice, ordering=[[c[0]], [c[1]], [c[2]]])
    for _ in range(2):  # bob reverses every gold ordering
        _ranking(bob, proj, ordering=lambda task: list(reversed(task.gold_ordering)))
    assert Membership.objects.get(project=proj, user=bob).paused_at is not None

    html = _login(client, alice).get(reverse("project-dashboard", args=["shapes"])).content.decode()
    assert 'id="gold-table"' in html and 'data-annotator="bob"' in html
    row = html[html.index('data-annotator="bob"'):]
    row = row[:row.index("</tr>")]
    assert "paused" in row and "0.00" in row and "n=6" in row and 'data-action="readmit"' in html

    r = client.post(reverse("annotator-readmit", args=["shapes", bob.pk]))
    assert r.status_code == 302
    m = Membership.objects.get(project=proj, user=bob)
    assert m.paused_at is None and m.gold_since is not None
    # an annotator may not re-admit anyone, themselves included; an unknown member is a 404
    Membership.objects.filter(pk=m.pk).update(paused_at=m.gold_since)
    assert _login(client, bob).post(reverse("annotator-readmit", args=["shapes", bob.pk])).status_code == 403
    assert Membership.objects.get(pk=m.pk).paused_at is not None
    assert _login(client, alice).post(reverse("annotator-readmit", args=["shapes", 999999])).status_code == 404


# --- review page ---------------------------------------------------------------------------------------


def test_make_gold_from_an_accepted_ranking_and_not_from_another(client, world):
    proj, alice = world["project"], world["alice"]
    accepted = _ranking(world["bob"], proj, review=Ranking.Review.ACCEPTED)
    pending = _ranking(world["carl"], proj)
    url = reverse("project-review", args=["shapes"])
    html = _login(client, alice).get(url).content.decode()
    item = html[html.index(f'id="ranking-{accepted.pk}"'):]
    assert 'data-action="make-gold"' in item[:item.index("</section>")]
    item = html[html.index(f'id="ranking-{pending.pk}"'):]
    assert 'data-action="make-gold"' not in item[:item.index("</section>")]

    r = client.post(url, {"ranking": pending.pk, "decision": "gold"}, follow=True)
    assert "accept it in review" in r.content.decode()
    assert RankingTask.objects.get(pk=pending.task_id).gold_ordering is None

    r = client.post(url, {"ranking": accepted.pk, "decision": "gold"}, follow=True)
    assert "is a gold task now" in r.content.decode()
    task = RankingTask.objects.get(pk=accepted.task_id)
    assert task.gold_ordering == accepted.ordering and task.state == RankingTask.State.GOLD
    assert 'data-field="gold"' in r.content.decode()


def test_a_ranking_of_another_project_cannot_be_made_gold_here(client, world):
    dora = f.user("dora")
    other = f.project("other", k=3, admins=[dora], annotators=[world["bob"]])
    f.tasks(other, 1)
    theirs = _ranking(world["bob"], other, review=Ranking.Review.ACCEPTED)
    r = _login(client, world["alice"]).post(reverse("project-review", args=["shapes"]),
                                            {"ranking": theirs.pk, "decision": "gold"})
    assert r.status_code == 404
    assert RankingTask.objects.get(pk=theirs.task_id).gold_ordering is None


def test_the_review_page_sorts_by_disagreement_with_the_consensus(client, world):
    proj = world["project"]
    rankings = [_ranking(u, proj) for u in (world["bob"], world["carl"], world["bob"])]
    for r, consensus in zip(rankings, (0.9, 0.1, None), strict=True):
        Ranking.objects.filter(pk=r.pk).update(consensus=consensus)
    url = reverse("project-review", args=["shapes"])
    html = _login(client, world["alice"]).get(url + "?order=disagreement").content.decode()
    positions = [html.index(f'id="ranking-{r.pk}"') for r in rankings]
    assert positions[1] < positions[0] < positions[2]  # 0.1, then 0.9, then not scored yet
    assert "0.10" in html and 'data-order="disagreement" aria-current="true"' in html
    newest = _login(client, world["alice"]).get(url).content.decode()
    assert newest.index(f'id="ranking-{rankings[2].pk}"') < newest.index(f'id="ranking-{rankings[0].pk}"')


def test_the_dashboard_plots_agreement_over_time(client, world):
    from django.utils import timezone

    from annotation.models import QualityReport

    proj = world["project"]
    _ranking(world["bob"], proj)
    timeline = [{"start": "2026-11-02", "pairwise": 0.61, "n": 40, "rankings": 20},
                {"start": "2026-11-09", "pairwise": None, "n": 0, "rankings": 3},
                {"start": "2026-11-16", "pairwise": 0.83, "n": 52, "rankings": 26}]
    last = Ranking.objects.filter(project=proj).order_by("-id").first()
    QualityReport.objects.create(project=proj, computed_at=timezone.now(), rankings=1, last_ranking_id=last.pk,
                                 data={"project": {}, "annotators": {}, "timeline_step": "week", "timeline": timeline})
    html = _login(client, world["alice"]).get(reverse("project-dashboard", args=["shapes"])).content.decode()
    chart = html[html.index('id="agreement-timeline"'):]
    chart = chart[:chart.index("</svg>")]
    assert "per week, from 2026-11-02" in chart
    assert chart.count("<circle") == 2  # the week without a comparison is left out
    assert "first 0.61" in chart and "last 0.83" in chart


def test_the_export_page_says_whether_the_quality_figures_are_up_to_date(client, world):
    from annotation.services.quality import quality_report_compute

    proj = world["project"]
    url = reverse("project-export", args=["shapes"])
    page = lambda: _login(client, world["alice"]).get(url).content.decode()  # noqa: E731
    assert "No figures yet" in page()
    _ranking(world["bob"], proj)
    quality_report_compute(project=proj)
    assert "The figures are up to date" in page()
    _ranking(world["carl"], proj)
    assert "older than the latest rankings" in page()
