"""Exports that training code reads directly (issue 17, part 4): the ``hf`` format (a ``save_to_disk`` folder,
DatasetDict ``train`` / ``test``), sharded Parquet, and the dataset card (README.md) in every export."""

import io
import json
import uuid
import zipfile

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.test import APIClient

from annotation.forms import ExportForm
from annotation.models import PreferencePair, Prompt, Ranking
from annotation.services import queue
from annotation.services.exports import FORMATS, ExportFilter, features, stream_export, write_export, yaml_features
from annotation.services.quality import quality_report_compute
from tests import factories as f

pytestmark = pytest.mark.django_db

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")

INSTRUCTIONS = "Prefer the answer that names **every** shape.\n\nIgnore the background."


@pytest.fixture
def ranked():
    """3 tasks (K=3) ranked by alice and bob (8 + 8 pairs); the first prompt is held out."""
    alice, bob = f.user("alice"), f.user("bob")
    proj = f.project("shapes", k=3, overlap=2, admins=[alice], annotators=[bob])
    proj.instructions = INSTRUCTIONS
    proj.save(update_fields=["instructions"])
    f.tasks(proj, 2, source="v1")
    f.task(proj, source="import")
    for user in (alice, bob):
        for i in range(3):
            a = queue.next_task(annotator=user, project=proj)
            c = a.task.candidate_ids
            ordering = [[c[0]], [c[1], c[2]]] if i == 0 else [[c[2]], [c[0]], [c[1]]]
            queue.submit_ranking(annotator=user, task_id=a.task_id, ordering=ordering, client_uuid=uuid.uuid4())
    held = Prompt.objects.filter(project=proj).order_by("id").first()
    Prompt.objects.filter(pk=held.pk).update(split="eval")
    return proj


def _ids(proj, split):
    return sorted(PreferencePair.objects.filter(project=proj, prompt__split=split).values_list("pk", flat=True))


def _card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    front, prose = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), prose


# ------------------------------------------------------------------------------------------- hf


def test_the_hf_export_loads_from_disk_as_train_and_test_with_images(ranked, tmp_path):
    summary = write_export(ExportFilter(project=ranked), "hf", tmp_path)
    dd = datasets.load_from_disk(str(tmp_path))
    assert isinstance(dd, datasets.DatasetDict) and list(dd) == ["train", "test"]
    train, test = _ids(ranked, "train"), _ids(ranked, "eval")
    assert len(train) > 0 and len(test) > 0
    assert sorted(dd["train"]["id"]) == train and sorted(dd["test"]["id"]) == test
    assert summary["rows"] == len(train) + len(test) and summary["splits"] == {"train": len(train), "test": len(test)}
    assert set(dd["train"]["split"]) == {"train"} and set(dd["test"]["split"]) == {"eval"}
    # DPOTrainer's columns, images decoded to PIL, and the figures
    assert {"prompt", "chosen", "rejected", "images", "confidence", "agreement", "margin", "split"} <= set(
        dd["train"].column_names)
    row = dd["train"][0]
    assert row["images"][0].size == (32, 24)
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"][0]["type"] == "image"
    assert row["chosen"][0]["role"] == "assistant" and row["chosen"][0]["content"][0]["text"]
    assert row["margin"] in (1, 2) and row["confidence"] is None
    assert isinstance(dd["train"].features["images"], datasets.List)
    assert isinstance(dd["train"].features["images"].feature, datasets.Image)
    # the same rows as the parquet export
    write_export(ExportFilter(project=ranked), "parquet", tmp_path / "pq")
    pq = datasets.load_dataset("parquet", data_files=str(tmp_path / "pq/data/train-*.parquet"), split="train")
    by_id = {r["id"]: r for r in pq}
    for r in dd["test"]:
        assert r["chosen"] == by_id[r["id"]]["chosen"] and r["prompt"] == by_id[r["id"]]["prompt"]


def test_a_split_filter_leaves_the_other_split_empty(ranked, tmp_path):
    write_export(ExportFilter(project=ranked, split="eval"), "hf", tmp_path)
    dd = datasets.load_from_disk(str(tmp_path))
    assert len(dd["train"]) == 0 and sorted(dd["test"]["id"]) == _ids(ranked, "eval")
    assert dd["train"].features == dd["test"].features


def test_the_hf_download_is_a_zip_of_the_folder_and_leaves_nothing_behind(ranked, tmp_path, settings):
    chunks, filename, content_type = stream_export(ExportFilter(project=ranked), "hf")
    assert filename == "shapes-hf.zip" and content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as zf:
        assert {"dataset_dict.json", "README.md", "train/state.json", "test/dataset_info.json"} <= set(zf.namelist())
        zf.extractall(tmp_path / "x")
    assert not any(settings.EXPORT_ROOT.iterdir())
    dd = datasets.load_from_disk(str(tmp_path / "x"))
    assert len(dd["train"]) + len(dd["test"]) == PreferencePair.objects.count()


# ------------------------------------------------------------------------------------------- shards


def test_parquet_shards_follow_the_hubs_naming_and_load_together(ranked, tmp_path, settings):
    settings.EXPORT_SHARD_ROWS = 5
    total = PreferencePair.objects.count()
    assert total == 16
    summary = write_export(ExportFilter(project=ranked), "parquet", tmp_path)
    names = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert names == [f"train-{i:05d}-of-00004.parquet" for i in range(4)]
    assert summary["files"] == [f"data/{n}" for n in names] + ["README.md"] and summary["rows"] == total
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "data/train-*.parquet"), split="train")
    assert ds["id"] == sorted(PreferencePair.objects.values_list("pk", flat=True))
    assert ds[total - 1]["images"][0].size == (32, 24)
    front, _ = _card((tmp_path / "README.md").read_text())
    assert front["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*.parquet"}]
    assert front["dataset_info"]["splits"] == [{"name": "train", "num_examples": total}]


def test_a_small_parquet_export_is_one_file_and_the_hf_export_shards_too(ranked, tmp_path, settings):
    write_export(ExportFilter(project=ranked), "parquet", tmp_path / "one")
    assert [p.name for p in (tmp_path / "one/data").iterdir()] == ["train-00000-of-00001.parquet"]
    settings.EXPORT_SHARD_ROWS = 4
    write_export(ExportFilter(project=ranked), "hf", tmp_path / "hf")
    shards = sorted(p.name for p in (tmp_path / "hf/train").glob("*.arrow"))
    assert len(shards) == -(-len(_ids(ranked, "train")) // 4) > 1 and shards[-1].endswith(f"-of-{len(shards):05d}.arrow")
    dd = datasets.load_from_disk(str(tmp_path / "hf"))
    assert sorted(dd["train"]["id"]) == _ids(ranked, "train")


def test_an_empty_export_still_loads(tmp_path):
    proj = f.project("empty", k=2)
    write_export(ExportFilter(project=proj), "parquet", tmp_path / "pq")
    # (datasets' load_dataset refuses a split with no rows at all; the file and its schema are there)
    table = pq.read_table(tmp_path / "pq/data/train-00000-of-00001.parquet")
    assert table.num_rows == 0 and b"huggingface" in table.schema.metadata
    write_export(ExportFilter(project=proj), "hf", tmp_path / "hf")
    dd = datasets.load_from_disk(str(tmp_path / "hf"))
    assert len(dd["train"]) == len(dd["test"]) == 0


# ------------------------------------------------------------------------------------------- the card


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_card_features_are_the_hubs_yaml(fmt):
    assert yaml_features(features(fmt)) == datasets.Features.from_dict(features(fmt))._to_yaml_list()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_carries_a_card_in_its_folder_and_its_zip(ranked, tmp_path, fmt):
    summary = write_export(ExportFilter(project=ranked), fmt, tmp_path)
    assert "README.md" in summary["files"]
    front, _ = _card((tmp_path / "README.md").read_text())
    assert front["dataset_info"]["features"] == yaml_features(features(fmt))
    splits = {s["name"]: s["num_examples"] for s in front["dataset_info"]["splits"]}
    assert sum(splits.values()) == summary["rows"]
    for entry in front["configs"][0]["data_files"]:
        assert list(tmp_path.glob(entry["path"])), entry
    chunks, _, _ = stream_export(ExportFilter(project=ranked), fmt)
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as zf:
        zipped = zf.read("README.md").decode()
    assert _card(zipped)[0] == front


def test_the_card_says_counts_annotators_instructions_and_filters(ranked, tmp_path):
    write_export(ExportFilter(project=ranked, min_confidence=None, sources=("v1", "import")), "hf", tmp_path)
    front, prose = _card((tmp_path / "README.md").read_text())
    train, test = _ids(ranked, "train"), _ids(ranked, "eval")
    assert front["dataset_info"]["splits"] == [{"name": "train", "num_examples": len(train)},
                                              {"name": "test", "num_examples": len(test)}]
    assert front["configs"][0]["data_files"] == [{"split": "train", "path": "train/data-*.arrow"},
                                                 {"split": "test", "path": "test/data-*.arrow"}]
    # per split: pairs | rankings | prompts | images | annotators
    assert f"| train | {len(train)} | 4 | 2 | 2 | 2 |" in prose
    assert f"| eval | {len(test)} | 2 | 1 | 1 | 2 |" in prose
    assert f"| all | {len(train) + len(test)} | 6 | 3 | 3 | 2 |" in prose
    assert "2 annotators, as stable pseudonyms" in prose
    assert "> Prefer the answer that names **every** shape." in prose and "> Ignore the background." in prose
    assert "- sources: v1, import" in prose and "- split: both" in prose and "- min_confidence: none" in prose
    assert "gold tasks: left out" in prose and "include_rejected: no" in prose
    first = Ranking.objects.order_by("created_at").first().created_at
    assert "Date range: " + first.isoformat().replace("+00:00", "Z") in prose
    assert "has not been computed yet" in prose


def test_the_card_gives_the_stored_agreement_and_whether_it_is_stale(ranked, tmp_path, settings):
    settings.QUALITY_BOOTSTRAP = 20
    report = quality_report_compute(project=ranked)
    flt = ExportFilter(project=ranked, split="train", min_confidence=0.1)
    write_export(flt, "records", tmp_path / "a")
    _, prose = _card((tmp_path / "a/README.md").read_text())
    figures = report.data["project"]
    assert f"pairwise agreement: {figures['pairwise']:.3f}" in prose
    lo, hi = figures["pairwise_ci"]
    assert f"(95 % interval {lo:.3f}–{hi:.3f})" in prose and "Krippendorff's alpha" in prose
    assert "The report is current" in prose and "- split: train" in prose and "- min_confidence: 0.1" in prose
    Ranking.objects.filter(project=ranked).order_by("id").first().delete()
    write_export(ExportFilter(project=ranked), "rankings", tmp_path / "b")
    _, prose = _card((tmp_path / "b/README.md").read_text())
    assert "**stale**" in prose and 'gold tasks: kept, marked `"gold": true`' in prose
    assert "| split | rankings | prompts |" in prose


# ------------------------------------------------------------------------------------------- API, page, CLI


def test_the_api_the_page_form_and_the_cli_offer_hf(ranked, tmp_path):
    client = APIClient()
    client.force_authenticate(get_user_model().objects.get(username="alice"))
    response = client.get("/api/projects/shapes/export/", {"format": "hf"})
    assert response.status_code == 200 and response["Content-Disposition"].endswith('shapes-hf.zip"')
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as zf:
        assert json.loads(zf.read("dataset_dict.json")) == {"splits": ["train", "test"]}
    response = client.get("/api/projects/shapes/export/", {"format": "parquet"})
    assert response["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as zf:
        assert {"data/train-00000-of-00001.parquet", "README.md"} == set(zf.namelist())
    assert ExportForm(data={"format": "hf"}).is_valid()
    out = io.StringIO()
    call_command("export", "shapes", str(tmp_path / "cli"), "--format", "hf", stdout=out)
    assert "wrote 16 rows (hf)" in out.getvalue()
    assert len(datasets.load_from_disk(str(tmp_path / "cli"))["test"]) == len(_ids(ranked, "eval"))
