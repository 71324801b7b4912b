"""Export preference data in the formats the training side reads.

Formats (see docs/import-export.md):

* ``records``  — preference records (docs/engine.md, "Files"): ``preferences.jsonl`` + ``images/``.
* ``trl``      — TRL's conversational preference format: ``train.jsonl`` + ``images/``.
* ``parquet``  — a ``datasets`` dataset: ``data/train-00000-of-0000N.parquet`` (the Hub's shard naming; a new
  shard every ``EXPORT_SHARD_ROWS`` rows or ``EXPORT_SHARD_BYTES`` bytes) with image bytes inline and the
  Hugging Face feature metadata, so ``load_dataset("parquet", data_files="data/*.parquet")`` yields PIL images
  and TRL's ``DPOTrainer`` takes it unchanged.
* ``hf``       — the same rows as a ``save_to_disk`` folder: ``datasets.load_from_disk`` opens a DatasetDict
  with ``train`` (training prompts) and ``test`` (the project's held-out prompts) splits.
* ``rankings`` — raw rankings JSONL: full orderings with ties, flags, pseudonymous annotators.

Every pair (``records``, ``trl``, ``parquet``) carries its ``confidence`` (Crowd-BT's posterior that chosen
truly beats rejected) and ``agreement`` (the share of the task's annotators who ordered the two the same way),
and every ranking its ``consensus`` (the mean confidence of its pairs) and ``gold`` (a ranking of a gold task):
the project's quality job writes them (``annotation.services.quality``), so they are null for what came since
it last ran, and ``agreement`` is null for a pair only one annotator ordered. Filters ``min_confidence`` and
``min_annotator_reliability`` keep what is known to be good enough: a null figure never passes them.

Pairs of rankings of gold tasks never leave in a pair format (``annotation.services.gold``): a gold task is a
test, and every annotator's ranking of it would repeat the same pairs. The rankings export keeps them, marked.

Every line (and every Parquet row) says which split its prompt belongs to: ``"split": "train"`` or
``"eval"`` (the project's held-out prompts, which no round trains on; ``annotation.splits``). A filter can
keep one split only.

Every export (zip or folder) holds a dataset card, ``README.md``: YAML front matter as the Hub reads it
(features, splits, data files) and prose (schema, counts, annotators, agreement, instructions, filters).

Every format is produced by iterating the database in chunks, so memory stays flat however large the
export; only the set of image ids seen is kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import NotSupportedError
from django.db.models import BooleanField, Count, Exists, F, Func, Max, Min, OuterRef

from annotation.images import media_path, open_media, pack_name, read_media
from annotation.models import Candidate, Image, PreferencePair, Project, Prompt, QualityReport, Ranking
from lensloop import formats

FORMATS = ("records", "trl", "parquet", "hf", "rankings")
PAIR_FORMATS = ("records", "trl", "parquet", "hf")
SPLITS = tuple(Prompt.Split.values)
CHUNK = 1000
PARQUET_ROW_GROUP = 256
# The ``hf`` format's DatasetDict: the Hub's (and TRL scripts') names; the rows' ``split`` says train or eval.
HF_SPLITS = {"train": "train", "test": "eval"}
# A Parquet (hf: Arrow) file holds at most this many rows and about this many bytes; settings override them.
SHARD_ROWS = 50_000
SHARD_BYTES = 500 * 1024 * 1024


class JsonArrayHolds(Func):
    """``JsonArrayHolds(array, value)``: whether a JSON array column (``RankingTask.candidate_ids``)
    holds an integer. Django's ``contains`` lookup on a JSONField does not exist on SQLite."""

    arity = 2
    output_field = BooleanField()

    def as_sql(self, compiler, connection, **extra_context):
        array, value = self.get_source_expressions()
        array_sql, array_params = compiler.compile(array)
        value_sql, value_params = compiler.compile(value)
        if connection.vendor == "postgresql":
            # jsonb containment: an array contains a scalar that is one of its elements.
            sql = f"({array_sql} @> to_jsonb({value_sql}))"
        elif connection.vendor == "sqlite":
            sql = f"EXISTS (SELECT 1 FROM json_each({array_sql}) AS held WHERE held.value = {value_sql})"
        else:
            raise NotSupportedError(f"JsonArrayHolds has no SQL for {connection.vendor}")
        return sql, (*array_params, *value_params)


@dataclass(frozen=True)
class ExportFilter:
    project: Project
    since: datetime | None = None
    until: datetime | None = None
    sources: tuple[str, ...] = field(default_factory=tuple)
    split: str | None = None  # "train" or "eval": only pairs / rankings of prompts of that split
    # Rankings a reviewer rejected (annotation.services.reviews) and their pairs are left out of every
    # export, and so of every later round's data; True keeps them (an audit of what was rejected).
    include_rejected: bool = False
    # Quality filters (None: no filter). ``min_confidence`` (0–1): pairs whose confidence is at least this
    # (rankings: whose consensus is); ``min_annotator_reliability`` (0–1, Crowd-BT's η: the probability that
    # the annotator orders a pair the true way): the pairs / rankings of annotators whose reliability in the
    # stored quality report is at least this. A null confidence (consensus), or an annotator without a
    # figure, fails the filter: what came since the quality job last ran is left out until it runs again.
    min_confidence: float | None = None
    min_annotator_reliability: float | None = None

    def __post_init__(self):
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {self.split!r}")
        for name in ("min_confidence", "min_annotator_reliability"):
            value = getattr(self, name)
            # ``not 0 <= value <= 1`` is also true for nan
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1):
                raise ValueError(f"{name} must be a number from 0 to 1, not {value!r}")

    @property
    def quality_filtered(self) -> bool:
        return self.min_confidence is not None or self.min_annotator_reliability is not None

    def reliable_annotators(self) -> list[int]:
        """Ids of the annotators whose reliability in the stored quality report is at least
        ``min_annotator_reliability``; no report, or no figure for an annotator, leaves them out."""
        data = QualityReport.objects.filter(project=self.project).values_list("data", flat=True).first() or {}
        threshold = self.min_annotator_reliability
        return sorted(
            int(user_id) for user_id, figures in (data.get("annotators") or {}).items()
            if isinstance(figures, dict) and figures.get("reliability") is not None
            and figures["reliability"] >= threshold
        )

    def pairs(self):
        return (
            self.pairs_filtered().select_related("prompt__image", "chosen", "rejected")
            .annotate(annotator_id=F("ranking__annotator_id"))
            .order_by("id")
        )

    def pairs_filtered(self):
        """The pairs the filter keeps, unordered (what ``pairs`` iterates and the card counts)."""
        qs = PreferencePair.objects.filter(project=self.project)
        # Gold tasks' rankings never become training pairs (annotation.services.gold).
        qs = qs.filter(ranking__task__gold_ordering__isnull=True)
        if not self.include_rejected:
            qs = qs.exclude(ranking__review=Ranking.Review.REJECTED)
        if self.min_confidence is not None:
            qs = qs.filter(confidence__gte=self.min_confidence)  # null never passes
        if self.min_annotator_reliability is not None:
            qs = qs.filter(ranking__annotator_id__in=self.reliable_annotators())
        if self.split:
            qs = qs.filter(prompt__split=self.split)
        if self.since:
            qs = qs.filter(created_at__gte=self.since)
        if self.until:
            qs = qs.filter(created_at__lt=self.until)
        if self.sources:
            # Both sides of the pair must come from the chosen sources (e.g. one model version).
            wanted = self.candidates()
            qs = qs.filter(chosen__in=wanted, rejected__in=wanted)
        return qs

    def rankings(self):
        return self.rankings_filtered().select_related("task__prompt__image").order_by("id")

    def rankings_filtered(self):
        """The rankings the filter keeps, unordered."""
        qs = Ranking.objects.filter(project=self.project)
        if not self.include_rejected:
            qs = qs.exclude(review=Ranking.Review.REJECTED)
        if self.min_confidence is not None:
            qs = qs.filter(consensus__gte=self.min_confidence)  # null never passes
        if self.min_annotator_reliability is not None:
            qs = qs.filter(annotator_id__in=self.reliable_annotators())
        if self.split:
            qs = qs.filter(task__prompt__split=self.split)
        if self.since:
            qs = qs.filter(created_at__gte=self.since)
        if self.until:
            qs = qs.filter(created_at__lt=self.until)
        if self.sources:
            # The ranking's own task must hold a candidate from the sources: a prompt can have tasks of
            # several sources (the import's answers, then each policy version's), so matching by prompt
            # would also take the rankings of its other tasks. Looking up the candidates of the task's
            # prompt first keeps it one index probe per ranking.
            holding = self.candidates().filter(
                JsonArrayHolds(OuterRef("task__candidate_ids"), F("pk")), prompt_id=OuterRef("task__prompt_id")
            )
            qs = qs.filter(Exists(holding))
        return qs

    def candidates(self):
        """The candidates that come from the chosen sources: the one rule both filters use."""
        return Candidate.objects.filter(source__in=self.sources)


@dataclass(frozen=True)
class QualityNote:
    """Whether the figures an export carries are current: ``state`` ``"fresh"``, ``"stale"`` (rankings came
    or left since the quality job last ran) or ``"missing"`` (it never ran); ``computed_at`` of the stored
    report; ``message``, a sentence for people, None when fresh."""

    state: str
    computed_at: datetime | None
    message: str | None


def quality_note(flt: ExportFilter) -> QualityNote:
    """What an export with ``flt`` should tell its reader about the quality figures (one aggregate query)."""
    from annotation.services.quality import quality_report_for

    current = quality_report_for(flt.project)
    if not current.stale:
        return QualityNote("fresh", current.report.computed_at, None)
    left_out = (
        "; with min_confidence or min_annotator_reliability set they (and annotators without a reliability "
        "figure) are left out until it is recomputed" if flt.quality_filtered else ""
    )
    if current.report is None:
        message = ("the project's quality report has not been computed yet: every pair's confidence and agreement "
                   "and every ranking's consensus are null" + left_out)
        return QualityNote("missing", None, message)
    message = (f"the project's quality report is stale (computed {_iso(current.report.computed_at)}; rankings "
               "came or left since): the pairs of newer rankings have a null confidence and agreement, the "
               "rankings a null consensus" + left_out)
    return QualityNote("stale", current.report.computed_at, message)


def pseudonym(user_id: int) -> str:
    """A stable pseudonymous annotator id: the same person gets the same id in every export of this
    installation, and the id reveals nothing without the server's secret."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"annotator:{user_id}".encode(), hashlib.sha256).hexdigest()
    return "a-" + digest[:12]


def image_name(image: Image) -> str:
    """Path of an image inside an export, relative to the export's root."""
    return "images/" + Path(image.file).name


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def preference_records(flt: ExportFilter) -> Iterator[tuple[dict, Image]]:
    for pair in flt.pairs().iterator(chunk_size=CHUNK):
        prompt = pair.prompt
        yield (
            {
                "id": pair.pk,
                "project": flt.project.slug,
                "images": [image_name(prompt.image)],
                "prompt": prompt.text,
                "chosen": pair.chosen.text,
                "rejected": pair.rejected.text,
                "margin": pair.margin,
                "annotator": pseudonym(pair.annotator_id),
                "ranking_id": pair.ranking_id,
                "created": _iso(pair.created_at),
                "split": prompt.split,
                "confidence": pair.confidence,
                "agreement": pair.agreement,
            },
            prompt.image,
        )


def trl_row(record: dict) -> dict:
    """One record in TRL's conversational preference format (with images), with its id, margin, split,
    confidence and agreement."""
    return {
        "id": record["id"], **formats.preference_row(record), "margin": record["margin"], "split": record["split"],
        "confidence": record["confidence"], "agreement": record["agreement"],
    }


def ranking_rows(flt: ExportFilter) -> Iterator[tuple[dict, Image]]:
    batch: list[Ranking] = []
    for ranking in flt.rankings().iterator(chunk_size=CHUNK):
        batch.append(ranking)
        if len(batch) == CHUNK:
            yield from _ranking_batch(flt, batch)
            batch = []
    yield from _ranking_batch(flt, batch)


def _ranking_batch(flt: ExportFilter, batch: list[Ranking]) -> Iterator[tuple[dict, Image]]:
    """One query for the candidates of a whole batch of rankings."""
    wanted = {cid for ranking in batch for cid in ranking.task.candidate_ids}
    candidates = {c.pk: c for c in Candidate.objects.filter(pk__in=wanted).only("id", "text", "source")}
    for ranking in batch:
        prompt = ranking.task.prompt
        yield (
            {
                "ranking_id": ranking.pk,
                "task_id": ranking.task_id,
                "project": flt.project.slug,
                "prompt_id": prompt.pk,
                "images": [image_name(prompt.image)],
                "prompt": prompt.text,
                "candidates": [
                    {"id": cid, "text": candidates[cid].text, "source": candidates[cid].source}
                    for cid in ranking.task.candidate_ids
                    if cid in candidates
                ],
                "ordering": ranking.ordering,
                "flags": ranking.flags,
                "rationale": ranking.rationale,
                "time_spent_ms": ranking.time_spent_ms,
                "annotator": pseudonym(ranking.annotator_id),
                "created": _iso(ranking.created_at),
                "split": prompt.split,
                "consensus": ranking.consensus,
                "gold": ranking.task.gold_ordering is not None,
            },
            prompt.image,
        )


def _jsonl_rows(flt: ExportFilter, fmt: str) -> tuple[str, Iterator[tuple[dict, Image]]]:
    if fmt == "records":
        return "preferences.jsonl", preference_records(flt)
    if fmt == "trl":
        return "train.jsonl", ((trl_row(r), img) for r, img in preference_records(flt))
    if fmt == "rankings":
        return "rankings.jsonl", ranking_rows(flt)
    raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")


# ---------------------------------------------------------------------------------------------- features


def _value(dtype: str) -> dict:
    return {"dtype": dtype, "_type": "Value"}


def _list(feature) -> dict:
    return {"feature": feature, "_type": "List"}


def _turns() -> dict:
    return _list({"role": _value("string"), "content": _list({"type": _value("string"), "text": _value("string")})})


def trl_features(images_inline: bool) -> dict:
    """🤗 features of the TRL rows: images inline (parquet, hf) or as paths inside the export (trl JSONL)."""
    return {
        "id": _value("int64"),
        "images": _list({"_type": "Image"} if images_inline else _value("string")),
        "prompt": _turns(),
        "chosen": _turns(),
        "rejected": _turns(),
        "margin": _value("int32"),
        "split": _value("string"),
        "confidence": _value("float64"),
        "agreement": _value("float64"),
    }


def features(fmt: str) -> dict:
    """🤗 features of each format's rows (the dataset card declares them)."""
    if fmt in ("parquet", "hf", "trl"):
        return trl_features(images_inline=fmt != "trl")
    string, int64 = _value("string"), _value("int64")
    if fmt == "records":
        return {
            "id": int64, "project": string, "images": _list(string), "prompt": string, "chosen": string,
            "rejected": string, "margin": int64, "annotator": string, "ranking_id": int64, "created": string,
            "split": string, "confidence": _value("float64"), "agreement": _value("float64"),
        }
    if fmt == "rankings":
        return {
            "ranking_id": int64, "task_id": int64, "project": string, "prompt_id": int64, "images": _list(string),
            "prompt": string, "candidates": _list({"id": int64, "text": string, "source": string}),
            "ordering": _list(_list(int64)), "flags": _list(string), "rationale": string, "time_spent_ms": int64,
            "annotator": string, "created": string, "split": string, "consensus": _value("float64"),
            "gold": _value("bool"),
        }
    raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")


def _yaml_type(feature) -> dict:
    """One feature as the Hub's card YAML writes it (``datasets.Features._to_yaml_list``)."""
    if "_type" not in feature:
        return {"struct": yaml_features(feature)}
    if feature["_type"] == "Value":
        return {"dtype": feature["dtype"]}
    if feature["_type"] == "Image":
        return {"dtype": "image"}
    inner = feature["feature"]  # List
    if "_type" not in inner:
        return {"list": yaml_features(inner)}
    inner_yaml = _yaml_type(inner)
    return {"list": inner_yaml["dtype"] if set(inner_yaml) == {"dtype"} else inner_yaml}


def yaml_features(feats: dict) -> list[dict]:
    return [{"name": name, **_yaml_type(feature)} for name, feature in feats.items()]


# ---------------------------------------------------------------------------------------------- parquet and hf


def _parquet_schema():
    import pyarrow as pa

    content = pa.list_(pa.struct([("type", pa.string()), ("text", pa.string())]))
    turns = pa.list_(pa.struct([("role", pa.string()), ("content", content)]))
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
            ("prompt", turns),
            ("chosen", turns),
            ("rejected", turns),
            ("margin", pa.int32()),
            ("split", pa.string()),
            ("confidence", pa.float64()),
            ("agreement", pa.float64()),
        ]
    )
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": trl_features(images_inline=True)}})})


def _inline_tables(flt: ExportFilter):
    """The TRL rows with image bytes inline, ``PARQUET_ROW_GROUP`` rows a table: the parquet and hf formats."""
    import pyarrow as pa

    schema = _parquet_schema()
    batch: list[dict] = []
    last: tuple[int | None, bytes] = (None, b"")  # a ranking's pairs come one after another, on one image
    for record, image in preference_records(flt):
        if image.pk != last[0]:
            last = (image.pk, read_media(image.file))
        row = trl_row(record)
        row["images"] = [{"bytes": last[1], "path": image_name(image)}]
        batch.append(row)
        if len(batch) >= PARQUET_ROW_GROUP:
            yield pa.Table.from_pylist(batch, schema=schema)
            batch = []
    if batch:
        yield pa.Table.from_pylist(batch, schema=schema)


class _ArrowShard:
    """An Arrow IPC stream file, as ``Dataset.save_to_disk`` writes its shards."""

    def __init__(self, path: Path, schema):
        import pyarrow as pa

        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, schema)

    def write_table(self, table) -> None:
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()
        self._sink.close()


def _parquet_shard(path: Path, schema):
    import pyarrow.parquet as pq

    return pq.ParquetWriter(path, schema)


def shard_limits() -> tuple[int, int]:
    """(rows, bytes) a shard holds at most: settings ``EXPORT_SHARD_ROWS`` and ``EXPORT_SHARD_BYTES``."""
    return (max(1, int(getattr(settings, "EXPORT_SHARD_ROWS", SHARD_ROWS))),
            max(1, int(getattr(settings, "EXPORT_SHARD_BYTES", SHARD_BYTES))))


def _write_shards(tables, folder: Path, stem: str, suffix: str, open_shard) -> tuple[list[Path], int]:
    """Write the tables into shards named the Hub's way, ``{stem}-00000-of-0000N{suffix}``: a new shard once
    one holds the shard rows or bytes. There is always one shard (no row group for no rows: the schema is there)."""
    schema = _parquet_schema()
    max_rows, max_bytes = shard_limits()
    folder.mkdir(parents=True, exist_ok=True)
    partial: list[Path] = []

    def start():
        path = folder / f".{stem}-{len(partial):05d}{suffix}.partial"
        partial.append(path)
        return open_shard(path, schema)

    writer, in_shard, bytes_in_shard, total = start(), 0, 0, 0
    try:
        for table in tables:
            while table.num_rows:
                if in_shard >= max_rows or bytes_in_shard >= max_bytes:
                    writer.close()
                    writer, in_shard, bytes_in_shard = start(), 0, 0
                part = table.slice(0, max_rows - in_shard)
                writer.write_table(part)
                in_shard += part.num_rows
                bytes_in_shard += part.nbytes
                total += part.num_rows
                table = table.slice(part.num_rows)
    finally:
        writer.close()
    final = []
    for i, path in enumerate(partial):
        target = folder / f"{stem}-{i:05d}-of-{len(partial):05d}{suffix}"
        os.replace(path, target)
        final.append(target)
    return final, total


def write_parquet(flt: ExportFilter, out_dir: Path) -> tuple[list[str], int]:
    """``data/train-0000i-of-0000N.parquet`` with image bytes inline; returns the files and the row count."""
    paths, rows = _write_shards(_inline_tables(flt), out_dir / "data", "train", ".parquet", _parquet_shard)
    return [str(p.relative_to(out_dir)) for p in paths], rows


def write_hf(flt: ExportFilter, out_dir: Path) -> tuple[list[str], dict[str, int]]:
    """A ``DatasetDict.save_to_disk`` folder: ``train/`` (training prompts' pairs) and ``test/`` (held-out
    prompts' pairs), each with its Arrow shards, ``dataset_info.json`` and ``state.json``; returns the files
    and the rows per split. ``datasets.load_from_disk`` opens it."""
    files: list[str] = []
    counts: dict[str, int] = {}
    for name, split in HF_SPLITS.items():
        folder = out_dir / name
        tables = _inline_tables(dataclasses.replace(flt, split=split)) if flt.split in (None, split) else iter(())
        paths, counts[name] = _write_shards(tables, folder, "data", ".arrow", _ArrowShard)
        fingerprint = hashlib.sha256(f"{flt.project.pk}:{name}:{counts[name]}:{datetime.now().isoformat()}".encode())
        info = {"citation": "", "description": f"lensloop project {flt.project.slug}: human preferences ({name})",
                "features": trl_features(images_inline=True), "homepage": "", "license": ""}
        state = {"_data_files": [{"filename": p.name} for p in paths], "_fingerprint": fingerprint.hexdigest()[:16],
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
                 "_split": name}
        (folder / "dataset_info.json").write_text(json.dumps(info, indent=2))
        (folder / "state.json").write_text(json.dumps(state, indent=2))
        files += [str(p.relative_to(out_dir)) for p in paths] + [f"{name}/dataset_info.json", f"{name}/state.json"]
    (out_dir / "dataset_dict.json").write_text(json.dumps({"splits": list(HF_SPLITS)}))
    return ["dataset_dict.json", *files], counts


# ---------------------------------------------------------------------------------------------- dataset card

_FIELDS = {
    "id": "the pair's id in lensloop",
    "project": "the project's slug",
    "images": "the prompt's image, a path inside this export (`images/…`)",
    "prompt": "the prompt text",
    "chosen": "the preferred answer",
    "rejected": "the answer ranked below it",
    "margin": "rank distance between chosen and rejected in the ranking (1: neighbours)",
    "annotator": "pseudonymous annotator id (`a-` + 12 hex digits; stable across exports)",
    "ranking_id": "the ranking the row comes from",
    "task_id": "the ranking task",
    "prompt_id": "the prompt's id in lensloop",
    "created": "when the ranking was submitted (ISO 8601, UTC)",
    "split": "`train`, or `eval` for a held-out prompt (never train on it)",
    "confidence": "Crowd-BT's posterior that chosen truly beats rejected (0–1; null: not computed yet)",
    "agreement": "share of the task's annotators who ordered the two the same way (0–1; null: unknown)",
    "candidates": "the candidates shown: id, text, source",
    "ordering": "groups of tied candidate ids, best first",
    "flags": "flags the annotator raised",
    "rationale": "the annotator's note",
    "time_spent_ms": "time the annotator spent on the task",
    "consensus": "the mean confidence of the ranking's pairs (null: not computed yet)",
    "gold": "the ranking is of a gold task (a test of the annotator)",
}
_TRL_FIELDS = {
    "images": "the prompt's image (bytes inline; decoded to a PIL image by 🤗 datasets)",
    "prompt": "the user turn: the image, then the prompt text (TRL's conversational format)",
    "chosen": "the preferred answer, an assistant turn",
    "rejected": "the answer ranked below it, an assistant turn",
}
_DATA_FILES = {
    "records": {"train": "preferences.jsonl"},
    "trl": {"train": "train.jsonl"},
    "rankings": {"train": "rankings.jsonl"},
    "parquet": {"train": "data/train-*.parquet"},
    "hf": {name: f"{name}/data-*.arrow" for name in HF_SPLITS},
}
_LOADING = {
    "records": 'rows = [json.loads(line) for line in open("preferences.jsonl")]  # images/ beside it',
    "trl": 'ds = load_dataset("json", data_files="train.jsonl", split="train")  # image paths: images/',
    "rankings": 'rows = [json.loads(line) for line in open("rankings.jsonl")]  # images/ beside it',
    "parquet": 'ds = load_dataset("parquet", data_files="data/train-*.parquet", split="train")\n'
               'ds = ds.filter(lambda row: row["split"] == "train")  # leave the held-out prompts out',
    "hf": 'dd = load_from_disk(".")  # DatasetDict: dd["train"] to train on, dd["test"] the held-out prompts',
}


def card_counts(flt: ExportFilter, fmt: str) -> dict[str, dict]:
    """Pairs (pair formats), rankings, prompts, images, annotators and the first and last creation time of what
    ``flt`` keeps: per prompt split, and ``"all"``. Two aggregate queries."""
    if fmt in PAIR_FORMATS:
        qs, split_field = flt.pairs_filtered(), "prompt__split"
        measures = {"pairs": Count("id"), "rankings": Count("ranking_id", distinct=True),
                    "prompts": Count("prompt_id", distinct=True), "images": Count("prompt__image_id", distinct=True),
                    "annotators": Count("ranking__annotator_id", distinct=True)}
    else:
        qs, split_field = flt.rankings_filtered(), "task__prompt__split"
        measures = {"rankings": Count("id"), "prompts": Count("task__prompt_id", distinct=True),
                    "images": Count("task__prompt__image_id", distinct=True),
                    "annotators": Count("annotator_id", distinct=True)}
    measures |= {"first": Min("created_at"), "last": Max("created_at")}
    counts = {"all": qs.order_by().aggregate(**measures)}
    for row in qs.order_by().values(prompt_split=F(split_field)).annotate(**measures):
        counts[row.pop("prompt_split")] = row
    return counts


def _fig(value, places: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{places}f}"


def _agreement_lines(flt: ExportFilter) -> list[str]:
    from annotation.services.quality import quality_report_for

    state = quality_report_for(flt.project)
    if state.report is None:
        return ["Not known: the project's quality report has not been computed yet, so every `confidence`, "
                "`agreement` and `consensus` is null."]
    project = (state.report.data or {}).get("project") or {}
    ci = project.get("pairwise_ci") or [None, None]
    alpha_ci = project.get("alpha_ci") or [None, None]
    lines = [
        f"From the project's quality report computed {_iso(state.report.computed_at)} on "
        f"{project.get('rankings', state.report.rankings)} rankings of {project.get('tasks', 'n/a')} tasks:",
        "",
        f"- pairwise agreement: {_fig(project.get('pairwise'))} (95 % interval {_fig(ci[0])}–{_fig(ci[1])})",
        f"- Krippendorff's alpha: {_fig(project.get('alpha'))} (95 % interval {_fig(alpha_ci[0])}–{_fig(alpha_ci[1])})",
        "",
    ]
    if state.stale:
        lines.append("The report is **stale**: rankings came or left since it was computed; the rows of newer "
                     "rankings have null figures.")
    else:
        lines.append("The report is current: it covers every ranking of the project.")
    return lines


def _filter_lines(flt: ExportFilter, fmt: str) -> list[str]:
    lines = [
        f"- since: {_iso(flt.since) if flt.since else 'any'}; until (exclusive): {_iso(flt.until) if flt.until else 'any'}",
        f"- sources: {', '.join(flt.sources) if flt.sources else 'all'}",
        f"- split: {flt.split or 'both (train and eval)'}",
        f"- min_confidence: {flt.min_confidence if flt.min_confidence is not None else 'none'}",
        f"- min_annotator_reliability: "
        f"{flt.min_annotator_reliability if flt.min_annotator_reliability is not None else 'none'}",
        f"- include_rejected: {'yes' if flt.include_rejected else 'no (rankings a reviewer rejected are left out)'}",
    ]
    if fmt in PAIR_FORMATS:
        lines.append("- gold tasks: left out (a gold task's rankings are tests of the annotators, not data)")
    else:
        lines.append('- gold tasks: kept, marked `"gold": true`')
    return lines


def dataset_card(flt: ExportFilter, fmt: str, splits: dict[str, int], counts: dict[str, dict] | None = None) -> str:
    """The export's README.md: YAML front matter as the Hub reads it (configs with the data files, features,
    splits with their rows) and prose for people. ``splits``: rows written per split of the files."""
    import yaml

    counts = counts if counts is not None else card_counts(flt, fmt)
    feats = features(fmt)
    project = flt.project
    front = {
        "pretty_name": f"{project.name}: human preferences ({fmt})",
        "tags": ["lensloop", "human-feedback", "preference", "vision-language"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": name, "path": path} for name, path in _DATA_FILES[fmt].items()]}],
        "dataset_info": {"features": yaml_features(feats),
                         "splits": [{"name": name, "num_examples": rows} for name, rows in splits.items()]},
    }
    pairs = fmt in PAIR_FORMATS
    unit = "pairs" if pairs else "rankings"
    everything = counts.get("all") or {}
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {project.name}: human preferences ({fmt})", "",
        f"Exported from the lensloop project `{project.slug}` on {_iso(datetime.now().astimezone())}: "
        f"{sum(splits.values())} {'pairs (chosen, rejected) of human rankings' if pairs else 'rankings'} of "
        f"images and prompts, by {everything.get('annotators') or 0} annotators.", "",
        "## Rows", "",
        "| field | type | meaning |", "|---|---|---|",
    ]
    docs = {**_FIELDS, **(_TRL_FIELDS if fmt in ("trl", "parquet", "hf") else {})}
    if fmt == "trl":
        docs["images"] = _FIELDS["images"]
    for entry in yaml_features(feats):
        kind = entry.get("dtype") or ("list" if "list" in entry else "struct")
        lines.append(f"| `{entry['name']}` | {kind} | {docs.get(entry['name'], '')} |")
    lines += ["", "## Splits and counts", ""]
    if fmt == "hf":
        lines.append("`load_from_disk` opens a DatasetDict: `train` holds the pairs of training prompts, `test` "
                     "those of the project's held-out prompts (their rows say `split: eval`); train on `train` only.")
    else:
        lines.append("One file (set) holds both splits; every row's `split` says which: `train`, or `eval` for the "
                     "project's held-out prompts, which no one should train on.")
    lines += ["", f"| split | {unit} | " + ("rankings | " if pairs else "") + "prompts | images | annotators | from | to |",
              "|---|---|" + ("---|" if pairs else "") + "---|---|---|---|---|"]
    for name in ("train", "eval", "all"):
        row = counts.get(name) or {}
        cells = [name, row.get(unit) or 0] + ([row.get("rankings") or 0] if pairs else [])
        cells += [row.get("prompts") or 0, row.get("images") or 0, row.get("annotators") or 0,
                  _iso(row["first"]) if row.get("first") else "–", _iso(row["last"]) if row.get("last") else "–"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    first, last = everything.get("first"), everything.get("last")
    lines += ["", "Date range: " + (f"{_iso(first)} to {_iso(last)} (ranking submission times)." if first
                                    else "no data."), ""]
    lines += ["## Annotators", "",
              f"{everything.get('annotators') or 0} annotators, as stable pseudonyms (`a-` + 12 hex digits, an HMAC "
              "of the user id under the server's secret): the same person has the same id in every export of "
              "this installation, and the id reveals nothing else.", ""]
    lines += ["## Agreement", "", *_agreement_lines(flt), ""]
    lines += ["## Instructions", "", "The instructions the annotators saw beside each task:", ""]
    lines += ([f"> {line}" if line else ">" for line in project.instructions.strip().splitlines()]
              if project.instructions.strip() else ["(none)"])
    lines += ["", "## Filters", "", *_filter_lines(flt, fmt), ""]
    lines += ["## Loading", "", "```python", "import json", "from datasets import load_dataset, load_from_disk", "",
              _LOADING[fmt], "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ to a directory


def write_export(flt: ExportFilter, fmt: str, out_dir: Path, *, card: bool = True) -> dict:
    """Write an export into ``out_dir`` (created) with its dataset card (``README.md``; ``card=False`` leaves it
    out); returns a summary with the row count and files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        files, rows = write_parquet(flt, out_dir)
        summary, splits = {"format": fmt, "rows": rows, "files": files}, {"train": rows}
    elif fmt == "hf":
        files, splits = write_hf(flt, out_dir)
        summary = {"format": fmt, "rows": sum(splits.values()), "splits": splits, "files": files}
    else:
        name, rows_iter = _jsonl_rows(flt, fmt)
        images: dict[int, Image] = {}
        rows = 0
        tmp = out_dir / (name + ".partial")
        with tmp.open("w", encoding="utf-8") as fh:
            for row, image in rows_iter:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                images.setdefault(image.pk, image)
                rows += 1
        os.replace(tmp, out_dir / name)
        (out_dir / "images").mkdir(exist_ok=True)
        for image in images.values():
            target = out_dir / image_name(image)
            if not target.exists():
                target.write_bytes(read_media(image.file))
        summary = {"format": fmt, "rows": rows, "files": [name, "images/"], "images": len(images)}
        splits = {"train": rows}
    if card:
        (out_dir / "README.md").write_text(dataset_card(flt, fmt, splits), encoding="utf-8")
        summary["files"].append("README.md")
    return summary


# ------------------------------------------------------------------------------------ as a stream


class _Pipe(io.RawIOBase):
    """A write-only, unseekable sink that hands out what was written so far; zipfile streams into it."""

    def __init__(self):
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def stream_zip(flt: ExportFilter, fmt: str) -> Iterator[bytes]:
    """Yield a zip (JSONL + images/ + README.md) chunk by chunk, never holding the export in memory."""
    name, rows_iter = _jsonl_rows(flt, fmt)
    pipe = _Pipe()
    image_ids: dict[int, str] = {}
    rows = 0
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open(name, "w", force_zip64=True) as fh:
            for row, image in rows_iter:
                fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
                image_ids.setdefault(image.pk, image.file)
                rows += 1
                if len(pipe._chunks) > 16:
                    yield pipe.drain()
        yield pipe.drain()
        for relpath in image_ids.values():
            info = zipfile.ZipInfo("images/" + Path(relpath).name)
            info.compress_type = zipfile.ZIP_STORED  # images are compressed already
            with zf.open(info, "w", force_zip64=True) as fh, open_media(relpath) as src:
                while chunk := src.read(1 << 16):
                    fh.write(chunk)
            yield pipe.drain()
        zf.writestr("README.md", dataset_card(flt, fmt, {"train": rows}))
    yield pipe.drain()


def stream_folder_then_delete(folder: Path) -> Iterator[bytes]:
    """Yield a zip of a folder's files chunk by chunk (data files stored, the small JSON and Markdown
    deflated), then delete the folder."""
    try:
        pipe = _Pipe()
        with zipfile.ZipFile(pipe, "w") as zf:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                info = zipfile.ZipInfo(path.relative_to(folder).as_posix())
                small = path.suffix in (".md", ".json")
                info.compress_type = zipfile.ZIP_DEFLATED if small else zipfile.ZIP_STORED
                with zf.open(info, "w", force_zip64=True) as fh, path.open("rb") as src:
                    while chunk := src.read(1 << 16):
                        fh.write(chunk)
                        if len(pipe._chunks) > 16:
                            yield pipe.drain()
                yield pipe.drain()
        yield pipe.drain()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def stream_export(flt: ExportFilter, fmt: str) -> tuple[Iterable[bytes], str, str]:
    """(chunks, filename, content type) for a download: always a zip. The parquet and hf formats are written
    into a folder under ``EXPORT_ROOT`` first, streamed, and deleted."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    stem = f"{flt.project.slug}-{fmt}"
    if fmt in ("parquet", "hf"):
        Path(settings.EXPORT_ROOT).mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=settings.EXPORT_ROOT, prefix=stem + "-"))
        try:
            write_export(flt, fmt, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return stream_folder_then_delete(folder), stem + ".zip", "application/zip"
    return stream_zip(flt, fmt), stem + ".zip", "application/zip"


def store_export(store, chunks: Iterable[bytes], filename: str, project: Project) -> str:
    """With object storage: write a download's chunks to the bucket (``exports/<project>/<time>-<file>``,
    through a spool file under ``EXPORT_ROOT``, deleted after) and return a presigned URL for it, valid an
    hour, that downloads it under ``filename``."""
    from django.utils import timezone

    from lensloop.storage import presigned_url, upload_file

    Path(settings.EXPORT_ROOT).mkdir(parents=True, exist_ok=True)
    name = f"exports/{project.slug}/{timezone.now():%Y%m%dT%H%M%S%f}-{filename}"
    with tempfile.NamedTemporaryFile(dir=settings.EXPORT_ROOT, prefix="upload-", suffix=".zip") as spool:
        for chunk in chunks:
            spool.write(chunk)
        spool.flush()
        upload_file(store, spool.name, name)
    return presigned_url(store, name, filename=filename)


# ------------------------------------------------------------------------------------ prompt sets


def write_prompt_set(
    project: Project,
    out_dir: Path,
    *,
    split: str | None = None,
    prompt_ids: list[int] | None = None,
    name: str = "prompts.jsonl",
    limit: int | None = None,
) -> dict:
    """Write the prompt-set JSONL (generation input; docs/engine.md, "Files") with the images beside it.

    ``{"prompt_id", "images": ["images/…"], "prompt", "reference", "ground_truth", "split"}`` per prompt
    of the project (of one split if given), in id order; ``limit`` keeps the first that many, so the same
    prompts every time while the project's prompts stay (how rounds evaluate versions on one set).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "images").mkdir(exist_ok=True)
    prompts = project.prompts.select_related("image").order_by("id")
    if split:
        prompts = prompts.filter(split=split)
    if prompt_ids is not None:
        prompts = prompts.filter(pk__in=prompt_ids)
    if limit:
        prompts = prompts[:limit]
    rows = 0
    copied: set[int] = set()
    with (out_dir / name).open("w", encoding="utf-8") as fh:
        for prompt in prompts.iterator(chunk_size=CHUNK):
            record = {"prompt_id": prompt.pk, "images": [image_name(prompt.image)], "prompt": prompt.text}
            if prompt.reference:
                record["reference"] = prompt.reference[0] if len(prompt.reference) == 1 else prompt.reference
            ground_truth = prompt.ground_truth or prompt.image.ground_truth
            if ground_truth is not None:
                record["ground_truth"] = ground_truth
            record["split"] = prompt.split
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            if prompt.image_id not in copied:
                target = out_dir / image_name(prompt.image)
                if not target.exists():
                    _link_or_copy(prompt.image.file, target)
                copied.add(prompt.image_id)
            rows += 1
    return {"rows": rows, "images": len(copied), "file": str(out_dir / name)}


def _link_or_copy(relpath: str, target: Path) -> None:
    """A stored image's file linked (same filesystem: no copy at all), else its bytes written, at ``target``."""
    if pack_name(relpath) is None:
        try:
            os.link(media_path(relpath), target)
            return
        except OSError:
            pass
    target.write_bytes(read_media(relpath))
