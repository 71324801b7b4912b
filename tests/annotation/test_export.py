"""Export formats: preference records, TRL conversational, rankings, and Parquet for `datasets`."""

import io
import json
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from annotation.models import Candidate, PreferencePair, Prompt, RankingTask
from annotation.services import queue
from annotation.services.exports import ExportFilter, pseudonym, stream_export, write_export, write_prompt_set
from tests import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def ranked():
    """Project with 3 tasks (K=3) ranked by alice, one with a tie."""
    alice = f.user("alice")
    proj = f.project(k=3, annotators=[alice])
    f.tasks(proj, 2, source="v1")
    f.task(proj, source="import")
    for i in range(3):
        a = queue.next_task(annotator=alice, project=proj)
        c = a.task.candidate_ids
        ordering = [[c[0]], [c[1], c[2]]] if i == 0 else [[c[2]], [c[0]], [c[1]]]
        queue.submit_ranking(annotator=alice, task_id=a.task_id, ordering=ordering, client_uuid=uuid.uuid4())
    return proj, alice


def test_records_follow_the_design_format_with_images_beside(ranked, tmp_path):
    proj, alice = ranked
    summary = write_export(ExportFilter(project=proj), "records", tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "preferences.jsonl").read_text().splitlines()]
    assert summary["rows"] == len(lines) == PreferencePair.objects.count() == 2 + 3 + 3
    first = lines[0]
    assert set(first) == {"id", "project", "images", "prompt", "chosen", "rejected", "margin", "annotator", "ranking_id",
                          "created", "split", "confidence", "agreement"}
    # the quality job has not run: the figures are there, null (tests/annotation/test_export_quality.py)
    assert {(x["confidence"], x["agreement"]) for x in lines} == {(None, None)}
    assert first["annotator"] == pseudonym(alice.pk) != str(alice.pk)
    for line in lines:
        assert (tmp_path / line["images"][0]).is_file()
    assert sorted({x["margin"] for x in lines}) == [1, 2]


def test_the_source_filter_keeps_pairs_whose_both_sides_match(ranked, tmp_path):
    proj, _ = ranked
    summary = write_export(ExportFilter(project=proj, sources=("v1",)), "records", tmp_path)
    assert summary["rows"] == 2 + 3


def test_the_date_filter_is_half_open(ranked, tmp_path):
    proj, _ = ranked
    now = timezone.now()
    assert write_export(ExportFilter(project=proj, since=now + timedelta(minutes=1)), "records", tmp_path / "a")["rows"] == 0
    assert write_export(ExportFilter(project=proj, until=now + timedelta(minutes=1)), "records", tmp_path / "b")["rows"] == 8


def test_rankings_export_keeps_ties_and_flags(ranked, tmp_path):
    proj, _ = ranked
    write_export(ExportFilter(project=proj), "rankings", tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "rankings.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert [len(g) for g in rows[0]["ordering"]] == [1, 2]
    assert {c["source"] for c in rows[0]["candidates"]} <= {"v1", "import"}


def test_trl_export_is_conversational(ranked, tmp_path):
    proj, _ = ranked
    write_export(ExportFilter(project=proj), "trl", tmp_path)
    row = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])
    assert row["prompt"][0]["role"] == "user"
    assert row["prompt"][0]["content"][0]["type"] == "image"
    assert row["chosen"][0]["role"] == "assistant"


def test_the_streamed_zip_holds_the_jsonl_and_the_images(ranked):
    proj, _ = ranked
    chunks, filename, content_type = stream_export(ExportFilter(project=proj), "records")
    data = b"".join(chunks)
    assert filename.endswith(".zip") and content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        lines = zf.read("preferences.jsonl").decode().splitlines()
        assert len(lines) == 8
        for line in lines:
            assert json.loads(line)["images"][0] in names


def test_parquet_loads_with_datasets_as_pil_images(ranked, tmp_path):
    datasets = pytest.importorskip("datasets")
    proj, _ = ranked
    write_export(ExportFilter(project=proj), "parquet", tmp_path)
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "data" / "*.parquet"), split="train")
    assert len(ds) == 8
    row = ds[0]
    assert row["images"][0].size == (32, 24)
    assert row["chosen"][0]["content"][0]["text"]


@pytest.fixture
def one_prompt_two_sources():
    """One prompt with two tasks: one of `import` candidates, one of `policy-v1` candidates, both ranked."""
    alice = f.user("alice")
    proj = f.project(k=3, annotators=[alice])
    first = f.task(proj, source="import")
    prompt = first.prompt
    cands = Candidate.objects.bulk_create(
        Candidate(prompt=prompt, text=f"policy answer {i}", source="policy-v1") for i in range(3)
    )
    second = RankingTask.objects.create(
        project=proj, prompt=prompt, candidate_ids=[c.pk for c in cands], required_annotations=1
    )
    for _ in range(2):
        a = queue.next_task(annotator=alice, project=proj)
        ordering = [[cid] for cid in a.task.candidate_ids]
        queue.submit_ranking(annotator=alice, task_id=a.task_id, ordering=ordering, client_uuid=uuid.uuid4())
    return proj, first, second


@pytest.mark.parametrize("source", ["import", "policy-v1"])
def test_the_rankings_source_filter_selects_by_task_not_by_prompt(one_prompt_two_sources, tmp_path, source):
    """A ranking matches a source when its own task holds a candidate from it, not a sibling task."""
    proj, first, second = one_prompt_two_sources
    write_export(ExportFilter(project=proj, sources=(source,)), "rankings", tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "rankings.jsonl").read_text().splitlines()]
    wanted = first if source == "import" else second
    assert [row["task_id"] for row in rows] == [wanted.pk]
    assert {c["source"] for c in rows[0]["candidates"]} == {source}


def test_the_rankings_source_filter_keeps_a_task_with_one_candidate_from_the_source(tmp_path):
    """A task mixing sources matches each of them: one candidate from the source is enough."""
    alice = f.user("alice")
    proj = f.project(k=2, annotators=[alice])
    task = f.task(proj, source="import")
    Candidate.objects.filter(pk=task.candidate_ids[1]).update(source="policy-v1")
    a = queue.next_task(annotator=alice, project=proj)
    queue.submit_ranking(annotator=alice, task_id=a.task_id, ordering=[[c] for c in a.task.candidate_ids], client_uuid=uuid.uuid4())
    for source, expected in (("import", 1), ("policy-v1", 1), ("human", 0)):
        out = tmp_path / source
        assert write_export(ExportFilter(project=proj, sources=(source,)), "rankings", out)["rows"] == expected
    # and pairs need both sides from the sources
    assert write_export(ExportFilter(project=proj, sources=("import",)), "records", tmp_path / "r1")["rows"] == 0
    assert write_export(ExportFilter(project=proj, sources=("import", "policy-v1")), "records", tmp_path / "r2")["rows"] == 1


def test_every_line_of_every_format_says_its_split_and_the_split_filter_keeps_one(ranked, tmp_path):
    """Held-out prompts' pairs are marked, so no one trains on them by mistake; a filter exports one split only."""
    proj, _ = ranked
    held = Prompt.objects.filter(project=proj).order_by("id").first()
    Prompt.objects.filter(pk=held.pk).update(split="eval")
    write_export(ExportFilter(project=proj), "records", tmp_path / "records")
    records = [json.loads(x) for x in (tmp_path / "records" / "preferences.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "eval"}
    assert {r["split"] for r in records if r["prompt"] == held.text} == {"eval"}
    for fmt, name in (("trl", "train.jsonl"), ("rankings", "rankings.jsonl")):
        write_export(ExportFilter(project=proj), fmt, tmp_path / fmt)
        rows = [json.loads(x) for x in (tmp_path / fmt / name).read_text().splitlines()]
        assert rows and all(row["split"] in ("train", "eval") for row in rows), fmt
    evals = write_export(ExportFilter(project=proj, split="eval"), "records", tmp_path / "eval")
    trains = write_export(ExportFilter(project=proj, split="train"), "records", tmp_path / "train")
    assert evals["rows"] == sum(r["split"] == "eval" for r in records) > 0
    assert evals["rows"] + trains["rows"] == len(records)
    assert write_export(ExportFilter(project=proj, split="eval"), "rankings", tmp_path / "r")["rows"] == 1


def test_the_parquet_export_has_a_split_column(ranked, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    proj, _ = ranked
    write_export(ExportFilter(project=proj), "parquet", tmp_path)
    table = pq.read_table(next((tmp_path / "data").glob("*.parquet")))
    assert set(table.column("split").to_pylist()) == {"train"}


def test_the_prompt_set_says_each_prompts_split_and_a_limit_takes_the_first_by_id(ranked, tmp_path):
    proj, _ = ranked
    first, *rest = Prompt.objects.filter(project=proj).order_by("id")
    Prompt.objects.filter(pk__in=[p.pk for p in rest]).update(split="eval")
    out = write_prompt_set(proj, tmp_path, name="all.jsonl")
    rows = [json.loads(x) for x in Path(out["file"]).read_text().splitlines()]
    assert [(r["prompt_id"], r["split"]) for r in rows] == [(first.pk, "train")] + [(p.pk, "eval") for p in rest]
    out = write_prompt_set(proj, tmp_path, split="eval", limit=1, name="eval.jsonl")
    assert [json.loads(x)["prompt_id"] for x in Path(out["file"]).read_text().splitlines()] == [rest[0].pk]
