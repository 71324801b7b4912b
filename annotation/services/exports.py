"""Export preference data in the formats the training side reads.

Formats (see docs/import-export.md):

* ``records``  — preference records (docs/engine.md, "Files"): ``preferences.jsonl`` + ``images/``.
* ``trl``      — TRL's conversational preference format: ``train.jsonl`` + ``images/``.
* ``parquet``  — a ``datasets`` dataset: ``data/train-00000-of-00001.parquet`` with image bytes inline and
  the Hugging Face feature metadata, so ``load_dataset("parquet", ...)`` yields PIL images and TRL's
  ``DPOTrainer`` takes it unchanged.
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

Every format is produced by iterating the database in chunks, so memory stays flat however large the
export; only the set of image ids seen is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import NotSupportedError
from django.db.models import BooleanField, Exists, F, Func, OuterRef

from annotation.images import media_path
from annotation.models import Candidate, Image, PreferencePair, Project, Prompt, QualityReport, Ranking
from lensloop import formats

FORMATS = ("records", "trl", "parquet", "rankings")
SPLITS = tuple(Prompt.Split.values)
CHUNK = 1000
PARQUET_ROW_GROUP = 256


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
        return (
            qs.select_related("prompt__image", "chosen", "rejected")
            .annotate(annotator_id=F("ranking__annotator_id"))
            .order_by("id")
        )

    def rankings(self):
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
        return qs.select_related("task__prompt__image").order_by("id")

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


# ---------------------------------------------------------------------------------------------- parquet


def _parquet_schema():
    import pyarrow as pa

    content = pa.list_(pa.struct([("type", pa.string()), ("text", pa.string())]))
    turns = pa.list_(pa.struct([("role", pa.string()), ("content", content)]))
    value = {"_type": "Value"}
    turn_feature = {
        "feature": {
            "role": {"dtype": "string", **value},
            "content": {
                "feature": {"type": {"dtype": "string", **value}, "text": {"dtype": "string", **value}},
                "_type": "List",
            },
        },
        "_type": "List",
    }
    features = {
        "id": {"dtype": "int64", **value},
        "images": {"feature": {"_type": "Image"}, "_type": "List"},
        "prompt": turn_feature,
        "chosen": turn_feature,
        "rejected": turn_feature,
        "margin": {"dtype": "int32", **value},
        "split": {"dtype": "string", **value},
        "confidence": {"dtype": "float64", **value},
        "agreement": {"dtype": "float64", **value},
    }
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
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})


def write_parquet(flt: ExportFilter, path: Path) -> int:
    """Write the TRL rows with image bytes inline; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _parquet_schema()
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    batch: list[dict] = []
    with pq.ParquetWriter(path, schema) as writer:
        for record, image in preference_records(flt):
            row = trl_row(record)
            row["images"] = [{"bytes": media_path(image.file).read_bytes(), "path": image_name(image)}]
            batch.append(row)
            if len(batch) >= PARQUET_ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                rows += len(batch)
                batch.clear()
        if batch or rows == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            rows += len(batch)
    return rows


# ------------------------------------------------------------------------------------ to a directory


def write_export(flt: ExportFilter, fmt: str, out_dir: Path) -> dict:
    """Write an export into ``out_dir`` (created); returns a summary with the row count and files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        path = out_dir / "data" / "train-00000-of-00001.parquet"
        rows = write_parquet(flt, path)
        return {"format": fmt, "rows": rows, "files": [str(path.relative_to(out_dir))]}
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
            target.write_bytes(media_path(image.file).read_bytes())
    return {"format": fmt, "rows": rows, "files": [name, "images/"], "images": len(images)}


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
    """Yield a zip (JSONL + images/) chunk by chunk, never holding the export in memory."""
    name, rows_iter = _jsonl_rows(flt, fmt)
    pipe = _Pipe()
    image_ids: dict[int, str] = {}
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open(name, "w", force_zip64=True) as fh:
            for row, image in rows_iter:
                fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
                image_ids.setdefault(image.pk, image.file)
                if len(pipe._chunks) > 16:
                    yield pipe.drain()
        yield pipe.drain()
        for relpath in image_ids.values():
            info = zipfile.ZipInfo("images/" + Path(relpath).name)
            info.compress_type = zipfile.ZIP_STORED  # images are compressed already
            with zf.open(info, "w", force_zip64=True) as fh, media_path(relpath).open("rb") as src:
                while chunk := src.read(1 << 16):
                    fh.write(chunk)
            yield pipe.drain()
    yield pipe.drain()


def stream_file_then_delete(path: Path, chunk_size: int = 1 << 16) -> Iterator[bytes]:
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(chunk_size):
                yield chunk
    finally:
        path.unlink(missing_ok=True)


def stream_export(flt: ExportFilter, fmt: str) -> tuple[Iterable[bytes], str, str]:
    """(chunks, filename, content type) for a download."""
    stem = f"{flt.project.slug}-{fmt}"
    if fmt == "parquet":
        Path(settings.EXPORT_ROOT).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=settings.EXPORT_ROOT, suffix=".parquet")
        os.close(fd)
        write_parquet(flt, Path(tmp))
        return stream_file_then_delete(Path(tmp)), stem + ".parquet", "application/vnd.apache.parquet"
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    return stream_zip(flt, fmt), stem + ".zip", "application/zip"


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
                    _link_or_copy(media_path(prompt.image.file), target)
                copied.add(prompt.image_id)
            rows += 1
    return {"rows": rows, "images": len(copied), "file": str(out_dir / name)}


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # same filesystem: no copy at all
    except OSError:
        target.write_bytes(source.read_bytes())
