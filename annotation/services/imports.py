"""Import a bundle (folder or zip) of images plus a JSONL or CSV manifest into a project.

Two modes, chosen per import:

* ``all_or_nothing`` (the default): any problem — a bad row, a broken image, a refused zip entry —
  rejects the whole import; the database is untouched and the report lists every problem.
* ``partial``: good rows are imported, bad rows are skipped; the report lists each skipped row.

Either way a row is imported whole (image, prompt, candidates, task) or not at all, and all rows of
one import are written in one transaction. A row without a ``split`` is held out (``eval``) or not by
the hash of its id or content (``annotation.splits``), the same way on every import of the same data. Image files are stored content-addressed before that
transaction; a rejected import can leave unreferenced image files behind, never database rows.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from annotation import bulk
from annotation.bundles import Bundle, BundleError, open_bundle
from annotation.exceptions import ImportRejected
from annotation.images import BadImage, CheckedImage, check_image, store_image
from annotation.models import Candidate, Image, Project, Prompt, RankingTask
from annotation.splits import hashed_split, split_key

MODES = ("all_or_nothing", "partial")
MAX_MANIFEST_BYTES = 512 * 1024 * 1024
BATCH = 2000
COPY_BATCH = 25_000  # rows per staged batch (PostgreSQL): the server writes one batch while the next is formatted
FIELDS = {"image", "prompt", "reference", "ground_truth", "candidates", "split", "id", "priority", "gold_ordering"}


@dataclass
class Problem:
    file: str
    line: int | None
    message: str
    record: str = ""  # a converted dataset's record in ``file`` (annotation.importers), e.g. "annotation 3, id 38"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.record:
            where += f" [{self.record}]"
        return f"{where}: {self.message}"


@dataclass
class ImportReport:
    project: str
    mode: str
    manifest: str = ""
    format: str = "manifest"
    rows: int = 0
    rows_imported: int = 0
    rows_skipped: int = 0
    images_new: int = 0
    images_reused: int = 0
    prompts: int = 0
    candidates: int = 0
    tasks: int = 0
    prompts_heldout: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Row:
    line: int
    image: str
    prompt: str
    reference: list[str]
    ground_truth: dict | None
    candidates: list[str]
    split: str  # "" until _import chooses it by hash (a row without a split)
    external_id: str
    priority: float
    gold: list[list[int]] | None = None  # a gold task's ordering, as positions in ``candidates``


def _gold_ordering(value: object, k: int) -> list[list[int]]:
    """A row's ``gold_ordering``: groups of positions (0 to K − 1) in its ``candidates``, best first, each
    exactly once, at least two groups; e.g. ``[[2], [0, 1], [3]]``. A JSON string of that is read too (CSV)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"'gold_ordering' is not valid JSON: {exc.msg}") from None
    if not isinstance(value, list) or not value:
        raise ValueError("'gold_ordering' must be a list of groups of candidate positions, best first, e.g. [[2], [0, 1], [3]]")
    groups = []
    for group in value:
        members = group if isinstance(group, list) else [group]
        if not members or any(isinstance(i, bool) or not isinstance(i, int) for i in members):
            raise ValueError(f"'gold_ordering' holds {group!r}; each group is a list of candidate positions (0 to {k - 1})")
        groups.append(members)
    flat = [i for g in groups for i in g]
    if sorted(flat) != list(range(k)):
        raise ValueError(f"'gold_ordering' must place each candidate position 0 to {k - 1} exactly once, not {flat}")
    if len(groups) < 2:
        raise ValueError("'gold_ordering' ties every candidate; a gold ordering needs at least two groups")
    return groups


SPLITS = frozenset(Prompt.Split.values)


def _text_list(value: object, what: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{what} looks like a JSON list but does not parse: {exc.msg}") from None
        else:
            return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a string or a list of strings")
    return value


def _parse_row(raw: dict, line: int, k: int) -> Row:
    unknown = set(raw) - FIELDS
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}; known: {sorted(FIELDS)}")
    image = raw.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ValueError("'image' is missing; give the image's path inside the bundle")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' is missing or empty")
    ground_truth = raw.get("ground_truth")
    if isinstance(ground_truth, str):
        if ground_truth.strip() == "":
            ground_truth = None
        else:
            try:
                ground_truth = json.loads(ground_truth)
            except json.JSONDecodeError as exc:
                raise ValueError(f"'ground_truth' is not valid JSON: {exc.msg}") from None
    if ground_truth is not None and not isinstance(ground_truth, dict):
        raise ValueError("'ground_truth' must be a JSON object")
    candidates = [c.strip() for c in _text_list(raw.get("candidates"), "'candidates'")]
    if candidates:
        if len(candidates) != k:
            raise ValueError(f"row has {len(candidates)} candidates; this project ranks K={k} per task")
        if any(not c for c in candidates):
            raise ValueError("a candidate is empty")
        if len(set(candidates)) != len(candidates):
            raise ValueError("candidates repeat; annotators would rank identical answers")
    split = raw.get("split")
    if split in (None, ""):
        split = ""  # chosen by hash once the image is known (annotation.splits)
    elif not isinstance(split, str) or split.strip() not in SPLITS:
        raise ValueError(f"'split' must be one of {sorted(SPLITS)}, not {raw.get('split')!r}")
    else:
        split = split.strip()
    priority = raw.get("priority")
    if priority in (None, ""):
        priority = 0.0
    try:
        priority = float(priority)
        if not math.isfinite(priority):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"'priority' must be a number, not {raw.get('priority')!r}") from None
    gold = raw.get("gold_ordering")
    if gold in (None, ""):
        gold = None
    elif not candidates:
        raise ValueError("'gold_ordering' needs the row's 'candidates' to order")
    else:
        gold = _gold_ordering(gold, k)
    external_id = raw.get("id", "")
    return Row(
        line=line,
        image=image.strip(),
        prompt=prompt.strip(),
        reference=_text_list(raw.get("reference"), "'reference'"),
        ground_truth=ground_truth,
        candidates=candidates,
        split=split,
        external_id=str(external_id if external_id is not None else "")[:200],
        priority=priority,
        gold=gold,
    )


def _manifest_rows(bundle: Bundle, manifest: str, k: int) -> Iterator[tuple[int, Row | None, str | None]]:
    """Yield (line, row, problem) for each non-blank manifest line."""
    data = bundle.read(manifest, MAX_MANIFEST_BYTES)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield 0, None, f"manifest is not UTF-8 text ({exc.reason} at byte {exc.start})"
        return
    if manifest.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None:
            return
        for raw in reader:
            line = reader.line_num
            if None in raw:
                yield line, None, "row has more cells than the header"
                continue
            try:
                yield line, _parse_row({k_: v for k_, v in raw.items() if v not in (None, "")}, line, k), None
            except ValueError as exc:
                yield line, None, str(exc)
        return
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            raw = json.loads(content)
        except json.JSONDecodeError as exc:
            yield line, None, f"not valid JSON: {exc.msg} (column {exc.colno})"
            continue
        if not isinstance(raw, dict):
            yield line, None, "each line must be a JSON object"
            continue
        try:
            yield line, _parse_row(raw, line, k), None
        except ValueError as exc:
            yield line, None, str(exc)


def import_bundle(
    *, project: Project, path: Path, manifest: str | None = None, mode: str = "all_or_nothing", origin: str = "import",
    format: str = "manifest", split: str | None = None, limit: int | None = None, heldout: str = "source",
) -> ImportReport:
    """Import ``path`` (folder or zip) into ``project``. Raises ``ImportRejected`` (report in details) when
    mode is all_or_nothing and anything is wrong; otherwise returns the report.

    ``format`` other than ``manifest`` reads a standard dataset (COCO Captions, Karpathy, VQA v2, RefCOCO,
    Hugging Face; ``annotation.importers``), whose records become manifest rows checked and written here
    exactly like a manifest's; ``split`` picks the source's splits, ``heldout`` whether they decide the rows'
    ``split`` (``source``) or the project's held-out fraction does (``hash``). ``limit`` keeps the first
    ``limit`` rows (records) of any format."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    report = ImportReport(project=project.slug, mode=mode, format=format)
    try:
        bundle = open_bundle(path, max_total_bytes=settings.LENSLOOP_MAX_UPLOAD_BYTES * 4)
    except BundleError as exc:
        report.problems.append(Problem(path.name, None, str(exc)))
        raise ImportRejected(str(exc), report=report) from None
    try:
        if format != "manifest":
            from annotation import importers

            try:
                bundle = importers.convert(bundle, format, source=manifest, split=split, heldout=heldout)
            except BundleError as exc:
                report.problems.append(Problem(getattr(exc, "file", bundle.label), None, getattr(exc, "reason", str(exc))))
                raise ImportRejected(str(exc), report=report) from None
        elif split:
            raise ValueError("split picks the splits of a converted dataset; a manifest's rows carry their own")
        return _import(bundle, project, manifest, mode, origin, report, limit)
    finally:
        bundle.close()


def _import(bundle: Bundle, project: Project, manifest: str | None, mode: str, origin: str, report: ImportReport,
            limit: int | None = None):
    for name, why in bundle.refused:
        report.problems.append(Problem(name, None, why))
    converted = getattr(bundle, "manifest_rows", None)  # a standard dataset read by annotation.importers
    if converted is not None:
        report.manifest = bundle.label
        # (where, row, problem): where is (file, line, record) of the source record
        records = converted(project.candidates_per_task)
    else:
        try:
            manifest = bundle.find_manifest(manifest)
        except BundleError as exc:
            report.problems.append(Problem(bundle.label, None, str(exc)))
            raise ImportRejected(str(exc), report=report) from None
        report.manifest = manifest
        records = (((manifest, line or None, ""), row, problem)
                   for line, row, problem in _manifest_rows(bundle, manifest, project.candidates_per_task))
    if limit:
        records = itertools.islice(records, limit)

    # Pass 1: parse every row and check every image it names (each image once).
    images: dict[str, CheckedImage | str] = {}
    good: list[Row] = []
    for (file, line, record), row, problem in records:
        report.rows += 1
        if problem is not None:
            report.problems.append(Problem(file, line, problem, record))
            continue
        if row.image not in images:
            try:
                checked = check_image(bundle.read(row.image, settings.LENSLOOP_MAX_IMAGE_BYTES))
                store_image(checked)
                images[row.image] = dataclasses.replace(checked, data=b"")  # keep memory flat
            except (BundleError, BadImage) as exc:
                images[row.image] = str(exc)
        outcome = images[row.image]
        if isinstance(outcome, str):
            report.problems.append(Problem(file, line, f"image {row.image!r}: {outcome}", record))
            continue
        if not row.split:
            key = split_key(external_id=row.external_id, image_sha256=outcome.sha256, text=row.prompt)
            row.split = hashed_split(key, project.heldout_fraction)
        good.append(row)
    if report.rows == 0:
        report.problems.append(Problem(report.manifest, None, "no records to import" if converted else "manifest has no rows"))
    report.rows_skipped = report.rows - len(good)
    if report.problems and mode == "all_or_nothing":
        report.rows_skipped = report.rows
        raise ImportRejected(
            f"import refused: {len(report.problems)} problem(s); nothing was imported", report=report
        )

    # Pass 2: write every good row in one transaction.
    with transaction.atomic():
        image_ids = _upsert_images({name: c for name, c in images.items() if isinstance(c, CheckedImage)}, good, report)
        if bulk.fast_path():
            _copy_rows(project, good, image_ids, origin, report)
        else:
            for start in range(0, len(good), BATCH):
                _write_rows(project, good[start : start + BATCH], images, image_ids, origin, report)
    report.rows_imported = len(good)
    report.prompts_heldout = sum(row.split == Prompt.Split.EVAL for row in good)
    return report


def _upsert_images(checked: dict[str, CheckedImage], rows: list[Row], report: ImportReport) -> dict[str, int]:
    used = {row.image for row in rows}
    by_sha: dict[str, CheckedImage] = {c.sha256: c for name, c in checked.items() if name in used}
    gt_by_sha: dict[str, dict] = {}
    for row in rows:
        if row.ground_truth is not None:
            gt_by_sha.setdefault(checked[row.image].sha256, row.ground_truth)
    existing = dict(Image.objects.filter(sha256__in=list(by_sha)).values_list("sha256", "id"))
    new = [
        Image(
            sha256=sha,
            file=c.relpath,
            format=c.format,
            width=c.width,
            height=c.height,
            size_bytes=c.size_bytes,
            ground_truth=gt_by_sha.get(sha),
        )
        for sha, c in by_sha.items()
        if sha not in existing
    ]
    Image.objects.bulk_create(new, batch_size=BATCH, ignore_conflicts=True)
    ids = dict(Image.objects.filter(sha256__in=list(by_sha)).values_list("sha256", "id"))
    report.images_new += len(ids) - len(existing)
    report.images_reused += len(existing)
    return {name: ids[c.sha256] for name, c in checked.items() if name in used}


def _write_rows(project, rows, images, image_ids, origin, report) -> None:
    prompts = Prompt.objects.bulk_create(
        [
            Prompt(
                project=project,
                image_id=image_ids[row.image],
                text=row.prompt,
                reference=row.reference,
                split=row.split,
                ground_truth=row.ground_truth,
                external_id=row.external_id,
            )
            for row in rows
        ]
    )
    report.prompts += len(prompts)
    with_candidates = [(row, prompt) for row, prompt in zip(rows, prompts, strict=True) if row.candidates]
    candidates = Candidate.objects.bulk_create(
        [
            Candidate(prompt=prompt, text=text, source=Candidate.IMPORT)
            for row, prompt in with_candidates
            for text in row.candidates
        ]
    )
    report.candidates += len(candidates)
    k = project.candidates_per_task
    tasks = []
    for i, (row, prompt) in enumerate(with_candidates):
        ids = [c.pk for c in candidates[i * k : (i + 1) * k]]
        gold = [[ids[p] for p in group] for group in row.gold] if row.gold else None
        tasks.append(RankingTask(
            project=project,
            prompt=prompt,
            candidate_ids=ids,
            priority=row.priority,
            required_annotations=project.overlap,
            origin=origin,
            gold_ordering=gold,
            state=RankingTask.State.GOLD if gold else RankingTask.State.OPEN,
        ))
    RankingTask.objects.bulk_create(tasks)
    report.tasks += len(tasks)


# The PostgreSQL import: each batch of rows is COPYed into a temporary staging table, one line per row,
# then one statement writes the prompts, candidates and tasks from it. Ids come from the tables' own
# sequences inside the statement (no round trip of millions of ids through Python), and every foreign
# key keeps its constraint.
_STAGE = "lensloop_import_rows"
_STAGE_COLUMNS = [
    "n", "image_id", "text", "reference", "split", "ground_truth", "external_id", "priority", "candidates", "gold",
]
_CREATE_STAGE = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (
    n integer NOT NULL, image_id bigint NOT NULL, text text NOT NULL, reference jsonb NOT NULL,
    split varchar(8) NOT NULL, ground_truth jsonb, external_id text NOT NULL, priority double precision NOT NULL,
    candidates text[] NOT NULL, gold jsonb
) ON COMMIT DROP
"""
# rows: the batch in manifest order, each with its prompt id and its candidates' ids. Tasks are inserted in
# manifest order, so their ids (the queue's tie-break) follow the manifest as before.
_WRITE_STAGED = f"""
WITH rows AS MATERIALIZED (
    SELECT s.*, nextval(%(prompt_seq)s::regclass) AS prompt_id,
           ARRAY(SELECT nextval(%(candidate_seq)s::regclass) FROM generate_series(1, cardinality(s.candidates)))
               AS candidate_ids
    FROM {_STAGE} s
    ORDER BY s.n
), prompts AS (
    INSERT INTO annotation_prompt (id, project_id, image_id, text, reference, split, ground_truth, external_id, created_at)
    SELECT prompt_id, %(project)s, image_id, text, reference, split, ground_truth, external_id, %(now)s FROM rows
), candidates AS (
    INSERT INTO annotation_candidate (id, prompt_id, text, source, meta, created_at)
    SELECT c.id, r.prompt_id, c.text, %(source)s, '{{}}'::jsonb, %(now)s
    FROM rows r CROSS JOIN LATERAL unnest(r.candidate_ids, r.candidates) AS c(id, text)
)
INSERT INTO annotation_rankingtask (project_id, prompt_id, candidate_ids, priority, required_annotations,
                                    leased_count, completed_count, state, origin, created_at, gold_ordering)
SELECT %(project)s, prompt_id, to_jsonb(candidate_ids), priority, %(overlap)s, 0, 0,
       CASE WHEN gold IS NULL THEN %(state)s ELSE 'gold' END, %(origin)s, %(now)s,
       -- a gold row's positions (0-based) become its candidates' ids, group by group, in order
       CASE WHEN gold IS NULL THEN NULL ELSE (
           SELECT jsonb_agg((SELECT jsonb_agg(candidate_ids[p.value::int + 1] ORDER BY p.n)
                             FROM jsonb_array_elements_text(g.value) WITH ORDINALITY AS p(value, n))
                            ORDER BY g.n)
           FROM jsonb_array_elements(gold) WITH ORDINALITY AS g(value, n)) END
FROM rows
WHERE cardinality(candidate_ids) > 0
ORDER BY n
"""
_ARRAY_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def _text_array(values: list[str]) -> str:
    """A text[] literal (each element quoted, backslash and quote escaped), before COPY's escaping."""
    return "{" + ",".join(f'"{v.translate(_ARRAY_ESCAPES)}"' for v in values) + "}"


def _staged_lines(rows: list[Row], image_ids: dict[str, int]) -> bytes:
    """A batch of rows in COPY text format for the staging table (pure Python: runs in a helper thread
    while the database writes the batch before)."""
    dumps, esc, null, array = json.dumps, bulk.text, bulk.NULL, _text_array
    return "".join(
        f"{n}\t{image_ids[row.image]}\t{esc(row.prompt)}\t{esc(dumps(row.reference))}\t{row.split}\t"
        f"{null if row.ground_truth is None else esc(dumps(row.ground_truth))}\t{esc(row.external_id)}\t"
        f"{row.priority!r}\t{esc(array(row.candidates))}\t{null if row.gold is None else esc(dumps(row.gold))}\n"
        for n, row in enumerate(rows)
    ).encode()


def _copy_rows(project, rows, image_ids, origin, report) -> None:
    """The same writes as ``_write_rows`` on PostgreSQL, for imports of millions of tasks.

    Foreign-key checks (PostgreSQL checks each new row's prompt or project, one lookup per row) run at
    the end of each batch's statement rather than all at commit, while a helper thread formats the next
    batch: the database's checking and Python's formatting overlap."""
    from concurrent.futures import ThreadPoolExecutor

    params = {
        "project": project.pk, "overlap": project.overlap, "origin": origin, "now": timezone.now(),
        "source": Candidate.IMPORT, "state": RankingTask.State.OPEN.value,
        "prompt_seq": bulk.sequence(Prompt._meta.db_table), "candidate_seq": bulk.sequence(Candidate._meta.db_table),
    }
    batches = [rows[start : start + COPY_BATCH] for start in range(0, len(rows), COPY_BATCH)]
    with connection.cursor() as cursor:
        cursor.execute(_CREATE_STAGE)
        # JIT compiling the statement cost a fifth of its time per batch; its sorts fit in 64 MB.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE; SET LOCAL jit = off; SET LOCAL work_mem = '64MB'")
        with ThreadPoolExecutor(max_workers=1) as formatter:
            pending = formatter.submit(_staged_lines, batches[0], image_ids) if batches else None
            for i in range(len(batches)):
                data = pending.result()
                if i + 1 < len(batches):
                    pending = formatter.submit(_staged_lines, batches[i + 1], image_ids)
                cursor.execute(f"TRUNCATE {_STAGE}")
                bulk.copy_data(_STAGE, _STAGE_COLUMNS, data)
                cursor.execute(_WRITE_STAGED, params)
                report.prompts += len(batches[i])
                report.candidates += sum(len(row.candidates) for row in batches[i])
                report.tasks += cursor.rowcount
        # Back to Django's defaults for the rest of the transaction. (After an error there is no rest:
        # the import's atomic block rolls back, and with it these settings.)
        cursor.execute("SET CONSTRAINTS ALL DEFERRED; SET LOCAL jit TO DEFAULT; SET LOCAL work_mem TO DEFAULT")
