"""Quality in the exports: every pair carries its confidence and agreement, every ranking its consensus and
whether it is of a gold task; the min_confidence and min_annotator_reliability filters (ExportFilter, API, page
form, CLI); pairs of gold tasks never leave in a pair format.

Personas (as tests/annotation/test_quality_report.py): alice is an admin of "shapes"; carol, cleo and cora
rank carefully (candidates in id order), adam reverses it, rita shuffles. Overlap 3 on 10 tasks, so every
pair has votes to weigh; the confidences are the quality job's real ones (``quality_report_compute``).
"""

import io
import json
import random
import uuid
import zipfile
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.test import APIClient

from annotation.forms import ExportForm
from annotation.models import PreferencePair, Ranking, RankingTask
from annotation.services import gold, queue
from annotation.services.exports import ExportFilter, quality_note, stream_export, write_export
from annotation.services.quality import quality_report_compute
from tests import factories as f

pytestmark = pytest.mark.django_db

PAIR_FORMATS = {"records": "preferences.jsonl", "trl": "train.jsonl"}


@pytest.fixture(autouse=True)
def _few_resamples(settings):
    settings.QUALITY_BOOTSTRAP = 50


@pytest.fixture
def world():
    alice = f.user("alice")
    users = {name: f.user(name) for name in f.STYLES}
    proj = f.project("shapes", k=4, overlap=3, admins=[alice], annotators=list(users.values()))
    f.tasks(proj, 10)
    f.rank_round_robin(proj, users, random.Random(7))
    assert Ranking.objects.filter(project=proj).count() == 30
    return {"alice": alice, "project": proj, **users}


@pytest.fixture
def bare():
    """The same project and admin with nothing ranked: for the refusals, which must write nothing."""
    alice = f.user("alice")
    proj = f.project("shapes", k=4, overlap=3, admins=[alice])
    f.tasks(proj, 2)
    return {"alice": alice, "project": proj}


@pytest.fixture
def computed(world):
    world["report"] = quality_report_compute(project=world["project"])
    return world


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _pair_rows(flt, fmt, out):
    write_export(flt, fmt, out)
    return _lines(out / PAIR_FORMATS[fmt])


def _parquet_rows(flt, out):
    pq = pytest.importorskip("pyarrow.parquet")
    write_export(flt, "parquet", out)
    return pq.read_table(out / "data" / "train-00000-of-00001.parquet").to_pylist()


def _reliability(world, name):
    return world["report"].data["annotators"][str(world[name].pk)]["reliability"]


# ------------------------------------------------------------------------------------------- the fields


def test_every_pair_format_carries_the_pairs_confidence_and_agreement(computed, tmp_path):
    proj = computed["project"]
    stored = {p.pk: (p.confidence, p.agreement) for p in PreferencePair.objects.filter(project=proj)}
    assert len(stored) == 30 * 6
    assert all(c is not None and 0 <= c <= 1 for c, _ in stored.values())
    assert any(a is not None for _, a in stored.values())
    flt = ExportFilter(project=proj)
    for fmt in PAIR_FORMATS:
        rows = _pair_rows(flt, fmt, tmp_path / fmt)
        assert {r["id"]: (r["confidence"], r["agreement"]) for r in rows} == stored, fmt
    table = _parquet_rows(flt, tmp_path / "parquet")
    assert {r["id"]: (r["confidence"], r["agreement"]) for r in table} == stored
    # careful annotators' pairs are believed, the adversarial one's are not
    careful = [c for c, _ in PreferencePair.objects.filter(ranking__annotator=computed["carol"])
               .values_list("confidence", "agreement")]
    reversed_ = [c for c, _ in PreferencePair.objects.filter(ranking__annotator=computed["adam"])
                 .values_list("confidence", "agreement")]
    assert min(careful) > 0.5 > max(reversed_)


def test_the_parquet_schema_declares_the_figures_as_nullable_floats(world, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    write_export(ExportFilter(project=world["project"]), "parquet", tmp_path)
    table = pq.read_table(tmp_path / "data" / "train-00000-of-00001.parquet")
    assert table.schema.field("confidence").type == pa.float64()
    assert table.schema.field("agreement").type == pa.float64()
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["confidence"]["dtype"] == features["agreement"]["dtype"] == "float64"
    # not computed yet: null, not 0
    assert set(table.column("confidence").to_pylist()) == {None}


def test_before_the_quality_job_runs_the_figures_are_null(world, tmp_path):
    flt = ExportFilter(project=world["project"])
    for fmt in PAIR_FORMATS:
        rows = _pair_rows(flt, fmt, tmp_path / fmt)
        assert len(rows) == 180 and {(r["confidence"], r["agreement"]) for r in rows} == {(None, None)}
    write_export(flt, "rankings", tmp_path / "rankings")
    rankings = _lines(tmp_path / "rankings" / "rankings.jsonl")
    assert {r["consensus"] for r in rankings} == {None} and {r["gold"] for r in rankings} == {False}
    note = quality_note(flt)
    assert note.state == "missing" and note.computed_at is None and "null" in note.message


def test_the_rankings_export_carries_consensus_and_gold(computed, tmp_path):
    proj = computed["project"]
    task = RankingTask.objects.filter(project=proj).order_by("id").first()
    gold.task_mark_gold(project=proj, task_id=task.pk, user=computed["alice"], ordering=[[c] for c in task.candidate_ids])
    write_export(ExportFilter(project=proj), "rankings", tmp_path)
    rows = _lines(tmp_path / "rankings.jsonl")
    assert len(rows) == 30
    consensus = dict(Ranking.objects.filter(project=proj).values_list("pk", "consensus"))
    assert {r["ranking_id"]: r["consensus"] for r in rows} == consensus
    assert all(c is not None for c in consensus.values())
    assert {r["ranking_id"] for r in rows if r["gold"]} == set(task.rankings.values_list("pk", flat=True))
    assert sum(r["gold"] for r in rows) == 3


# ------------------------------------------------------------------------------------------- the filters


def test_min_confidence_keeps_exactly_the_pairs_at_or_above_it(computed, tmp_path):
    proj = computed["project"]
    everything = PreferencePair.objects.filter(project=proj)
    wanted = set(everything.filter(confidence__gte=0.5).values_list("pk", flat=True))
    assert 0 < len(wanted) < everything.count()
    flt = ExportFilter(project=proj, min_confidence=0.5)
    for fmt in PAIR_FORMATS:
        rows = _pair_rows(flt, fmt, tmp_path / fmt)
        assert {r["id"] for r in rows} == wanted, fmt
        assert all(r["confidence"] >= 0.5 for r in rows)
    assert {r["id"] for r in _parquet_rows(flt, tmp_path / "parquet")} == wanted
    # adam reversed every pair: none of his passes; carol's all do
    kept = everything.filter(pk__in=wanted)
    assert not kept.filter(ranking__annotator=computed["adam"]).exists()
    assert kept.filter(ranking__annotator=computed["carol"]).count() == 6 * computed["carol"].rankings.count()
    # 0 keeps every pair that has a confidence; 1 (a certainty nobody reaches here) none
    assert write_export(ExportFilter(project=proj, min_confidence=0), "records", tmp_path / "zero")["rows"] == 180
    # rankings: by consensus
    write_export(flt, "rankings", tmp_path / "rankings")
    ranked = {r["ranking_id"] for r in _lines(tmp_path / "rankings" / "rankings.jsonl")}
    assert ranked == set(Ranking.objects.filter(project=proj, consensus__gte=0.5).values_list("pk", flat=True))


def test_pairs_without_a_confidence_yet_are_left_out_by_the_filters_and_the_note_says_why(computed, tmp_path):
    proj = computed["project"]
    f.task(proj)  # a new task, ranked after the quality job ran
    f.rank_round_robin(proj, {n: computed[n] for n in ("carol", "cleo", "cora")}, random.Random(1))
    fresh = PreferencePair.objects.filter(project=proj, confidence__isnull=True)
    assert fresh.count() == 3 * 6
    unfiltered = _pair_rows(ExportFilter(project=proj), "records", tmp_path / "all")
    assert len(unfiltered) == 180 + 18 and sum(r["confidence"] is None for r in unfiltered) == 18
    flt = ExportFilter(project=proj, min_confidence=0.0)
    rows = _pair_rows(flt, "records", tmp_path / "filtered")
    assert len(rows) == 180 and not {r["id"] for r in rows} & set(fresh.values_list("pk", flat=True))
    note = quality_note(flt)
    assert note.state == "stale" and note.computed_at == computed["report"].computed_at
    assert "left out" in note.message and "stale" in note.message
    assert "left out" not in quality_note(ExportFilter(project=proj)).message
    quality_report_compute(project=proj)
    assert quality_note(flt).state == "fresh" and quality_note(flt).message is None
    assert write_export(flt, "records", tmp_path / "again")["rows"] == 198


def test_min_annotator_reliability_keeps_the_pairs_of_reliable_annotators(computed, tmp_path):
    proj = computed["project"]
    reliability = {name: _reliability(computed, name) for name in f.STYLES}
    assert reliability["adam"] < 0.5 < min(reliability[n] for n in ("carol", "cleo", "cora"))
    flt = ExportFilter(project=proj, min_annotator_reliability=0.5)
    reliable = {computed[n].pk for n, r in reliability.items() if r >= 0.5}
    wanted = set(PreferencePair.objects.filter(project=proj, ranking__annotator_id__in=reliable)
                 .values_list("pk", flat=True))
    for fmt in PAIR_FORMATS:
        assert {r["id"] for r in _pair_rows(flt, fmt, tmp_path / fmt)} == wanted, fmt
    assert {r["id"] for r in _parquet_rows(flt, tmp_path / "parquet")} == wanted
    write_export(flt, "rankings", tmp_path / "rankings")
    ranked = {r["ranking_id"] for r in _lines(tmp_path / "rankings" / "rankings.jsonl")}
    assert ranked == set(Ranking.objects.filter(project=proj, annotator_id__in=reliable).values_list("pk", flat=True))
    # the threshold is inclusive: the least reliable annotator's own figure keeps everyone
    lowest = min(reliability.values())
    assert write_export(ExportFilter(project=proj, min_annotator_reliability=lowest), "records",
                        tmp_path / "lowest")["rows"] == 180


def test_an_annotator_without_a_reliability_figure_is_left_out(computed, tmp_path):
    proj = computed["project"]
    newcomer = f.user("nina")
    from annotation.services.projects import member_set

    member_set(project=proj, user=newcomer, role="annotator")
    f.task(proj)
    assignment = queue.next_task(annotator=newcomer, project=proj)
    queue.submit_ranking(annotator=newcomer, task_id=assignment.task_id,
                         ordering=[[c] for c in assignment.task.candidate_ids], client_uuid=uuid.uuid4())
    rows = _pair_rows(ExportFilter(project=proj, min_annotator_reliability=0), "records", tmp_path)
    assert len(rows) == 180  # everyone with a figure, not nina's 6 pairs
    assert write_export(ExportFilter(project=proj), "records", tmp_path / "all")["rows"] == 186


def test_the_reliability_filter_without_any_report_keeps_nothing(world, tmp_path):
    assert write_export(ExportFilter(project=world["project"], min_annotator_reliability=0), "records", tmp_path)[
        "rows"] == 0


@pytest.mark.parametrize("field", ["min_confidence", "min_annotator_reliability"])
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "0.5", True])
def test_the_filter_refuses_values_out_of_range(bare, field, value):
    with pytest.raises(ValueError, match=field):
        ExportFilter(project=bare["project"], **{field: value})


# ------------------------------------------------------------------------------------------- gold tasks


def test_pairs_of_gold_tasks_leave_every_pair_format_but_the_rankings_stay(computed, tmp_path):
    proj = computed["project"]
    task = RankingTask.objects.filter(project=proj).order_by("id").first()
    gold.task_mark_gold(project=proj, task_id=task.pk, user=computed["alice"], ordering=[[c] for c in task.candidate_ids])
    gold_pairs = set(PreferencePair.objects.filter(ranking__task=task).values_list("pk", flat=True))
    assert len(gold_pairs) == 3 * 6
    flt = ExportFilter(project=proj)
    for fmt in PAIR_FORMATS:
        ids = {r["id"] for r in _pair_rows(flt, fmt, tmp_path / fmt)}
        assert len(ids) == 180 - 18 and not ids & gold_pairs, fmt
    assert not {r["id"] for r in _parquet_rows(flt, tmp_path / "parquet")} & gold_pairs
    chunks, _, _ = stream_export(flt, "records")
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as zf:
        streamed = {json.loads(x)["id"] for x in zf.read("preferences.jsonl").decode().splitlines()}
    assert len(streamed) == 162 and not streamed & gold_pairs
    # also with the filters and rejected rankings kept, and however the quality figures stand
    for kw in ({"include_rejected": True}, {"min_confidence": 0}, {"min_annotator_reliability": 0}):
        ids = {r["id"] for r in _pair_rows(ExportFilter(project=proj, **kw), "records", tmp_path / str(kw))}
        assert ids and not ids & gold_pairs, kw
    # the rankings export keeps them, marked
    write_export(flt, "rankings", tmp_path / "rankings")
    rows = _lines(tmp_path / "rankings" / "rankings.jsonl")
    assert len(rows) == 30 and {r["task_id"] for r in rows if r["gold"]} == {task.pk}
    # no longer gold: its pairs are training pairs again
    gold.task_unmark_gold(project=proj, task_id=task.pk, user=computed["alice"])
    assert write_export(flt, "records", tmp_path / "unmarked")["rows"] == 180


def test_the_rounds_snapshot_leaves_gold_pairs_out(computed, tmp_path):
    """The export step of a training round writes its records through write_export: no gold pair in them,
    and each record carries the confidence the reward model weighs it by."""
    from rlhf import steps
    from rlhf.services import start_round

    proj = computed["project"]
    task = RankingTask.objects.filter(project=proj).order_by("id").first()
    gold.task_mark_gold(project=proj, task_id=task.pk, user=computed["alice"], ordering=[[c] for c in task.candidate_ids])
    gold_pairs = set(PreferencePair.objects.filter(ranking__task=task).values_list("pk", flat=True))
    round_run = start_round(project=proj, params={"algorithm": "dpo"}, enqueue=False)
    step = round_run.steps.get(kind="export")
    steps.step_export(step)
    step.refresh_from_db()
    records = _lines(Path(step.snapshot["records"]))
    assert records and not {r["id"] for r in records} & gold_pairs
    assert step.snapshot["pairs"] == len(records) == 162
    assert all(r["confidence"] is not None and 0 <= r["confidence"] <= 1 for r in records)


# ------------------------------------------------------------------------------------------- the API


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


EXPORT = "/api/projects/shapes/export/"


def test_the_api_filters_and_says_how_current_the_figures_are(computed):
    proj = computed["project"]
    alice = _api(computed["alice"])
    response = alice.get(EXPORT, {"format": "records", "min_confidence": "0.5", "min_annotator_reliability": "0.5"})
    assert response.status_code == 200
    assert response["X-Lensloop-Quality"] == "fresh" and "X-Lensloop-Quality-Note" not in response
    assert response["X-Lensloop-Quality-Computed-At"] == computed["report"].computed_at.isoformat()
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as zf:
        rows = [json.loads(x) for x in zf.read("preferences.jsonl").decode().splitlines()]
    reliable = [computed[n].pk for n in f.STYLES if _reliability(computed, n) >= 0.5]
    wanted = set(PreferencePair.objects.filter(project=proj, confidence__gte=0.5, ranking__annotator_id__in=reliable)
                 .values_list("pk", flat=True))
    assert wanted and {r["id"] for r in rows} == wanted
    # a ranking since: stale, and the header says what the filters do about it
    f.task(proj)
    f.rank_round_robin(proj, {"carol": computed["carol"]}, random.Random(2))
    stale = alice.get(EXPORT, {"format": "records", "min_confidence": "0.5"})
    assert stale.status_code == 200 and stale["X-Lensloop-Quality"] == "stale"
    assert "left out" in stale["X-Lensloop-Quality-Note"]


def test_the_api_says_when_there_is_no_report(world):
    response = _api(world["alice"]).get(EXPORT, {"format": "trl", "min_confidence": ""})  # blank: no filter
    assert response.status_code == 200 and response["X-Lensloop-Quality"] == "missing"
    assert "X-Lensloop-Quality-Computed-At" not in response
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as zf:
        assert len(zf.read("train.jsonl").decode().splitlines()) == 180


@pytest.mark.parametrize("field", ["min_confidence", "min_annotator_reliability"])
@pytest.mark.parametrize("value", ["-0.1", "1.01", "abc", "nan", "inf"])
@pytest.mark.parametrize("fmt", ["records", "parquet"])
def test_the_api_answers_400_naming_the_field_and_writes_nothing(bare, settings, field, value, fmt):
    response = _api(bare["alice"]).get(EXPORT, {"format": fmt, field: value})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid" and field in body["fields"] and body["detail"].startswith(field)
    export_root = settings.EXPORT_ROOT
    assert not export_root.exists() or not any(export_root.iterdir())


# ------------------------------------------------------------------------------------------- the page and the CLI


def test_the_page_form_offers_the_filters_and_refuses_bad_values(bare):
    client = Client()
    client.force_login(bare["alice"])
    page = client.get("/projects/shapes/export/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="min_confidence"' in html and 'name="min_annotator_reliability"' in html
    assert 'max="1"' in html
    for field in ("min_confidence", "min_annotator_reliability"):
        for bad in ("-1", "2", "x", "nan"):
            form = ExportForm(data={"format": "records", field: bad})
            assert not form.is_valid() and field in form.errors, (field, bad)
    form = ExportForm(data={"format": "records", "min_confidence": "0.7", "min_annotator_reliability": ""})
    assert form.is_valid() and form.cleaned_data["min_confidence"] == 0.7
    assert form.cleaned_data["min_annotator_reliability"] is None


def test_the_cli_filters_warns_when_stale_and_can_refresh(world, tmp_path):
    proj = world["project"]
    out, err = io.StringIO(), io.StringIO()
    call_command("export", "shapes", str(tmp_path / "a"), "--min-confidence", "0.5", stdout=out, stderr=err)
    assert "wrote 0 rows" in out.getvalue()
    assert "not been computed" in err.getvalue() and "--refresh-quality" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    call_command("export", "shapes", str(tmp_path / "b"), "--min-confidence", "0.5", "--refresh-quality",
                 stdout=out, stderr=err)
    wanted = set(PreferencePair.objects.filter(project=proj, confidence__gte=0.5).values_list("pk", flat=True))
    assert wanted and f"wrote {len(wanted)} rows" in out.getvalue() and "warning" not in err.getvalue()
    assert {r["id"] for r in _lines(tmp_path / "b" / "preferences.jsonl")} == wanted
    call_command("export", "shapes", str(tmp_path / "c"), "--min-annotator-reliability", "0.5", stdout=out, stderr=err)
    adam = set(PreferencePair.objects.filter(ranking__annotator=world["adam"]).values_list("pk", flat=True))
    assert not {r["id"] for r in _lines(tmp_path / "c" / "preferences.jsonl")} & adam


@pytest.mark.parametrize("option", ["--min-confidence", "--min-annotator-reliability"])
@pytest.mark.parametrize("value", ["-0.5", "1.5", "high", "nan"])
def test_the_cli_refuses_bad_values_with_a_clear_error(bare, tmp_path, option, value):
    with pytest.raises(CommandError, match=f"{option} must be a number from 0 to 1"):
        call_command("export", "shapes", str(tmp_path / "out"), option, value)
    assert not (tmp_path / "out").exists()
