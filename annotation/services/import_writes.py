"""The writes of an import: the checked images and rows, in chunks, written in one transaction (on
PostgreSQL as ``annotation.services.imports`` checks them, elsewhere read back from its spool once every row
is checked).

Chunked images are ``(sha256, format, width, height, size_bytes, file, ground_truth)`` (``file``: where the
checking process stored it, its ``Image.file``), each image once, written
before the first row that names it; rows are ``(sha256, prompt, reference, split, ground_truth,
external_id, priority, candidates, gold)``. A new image's ground truth is that of the first row naming it
that has one (``late_gt`` holds those that came after the image's first row).

On PostgreSQL each batch is COPYed into temporary staging tables and written with one statement per table
(``_copy_writes``); elsewhere through the ORM in batches (``_orm_writes``). Neither holds more than a batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator

from django.db import connection, transaction
from django.utils import timezone

from annotation import bulk
from annotation.models import Candidate, Image, Prompt, RankingTask

BATCH = 2000
COPY_BATCH = 10_000  # rows per staged batch (PostgreSQL): the server writes one batch while the next is formatted

Chunk = tuple[list[tuple], list[tuple]]  # (images, rows) as spooled


def write_spooled(project, chunks: Iterable[Chunk], *, origin: str, report, late_gt: dict[str, dict],
                  progress: Callable[[], None]) -> None:
    """Write every spooled chunk in one transaction; counts go into ``report``, ``progress()`` is called
    after each batch (and may raise to cancel: the transaction rolls back)."""
    with transaction.atomic():
        writes = _copy_writes if bulk.fast_path() else _orm_writes
        new_late = writes(project, chunks, origin, report, late_gt, progress)
        for sha in new_late:  # rare: the image's first row had no ground truth, a later one had
            Image.objects.filter(sha256=sha, ground_truth__isnull=True).update(ground_truth=late_gt[sha])


def _regroup(chunks: Iterable[Chunk], size: int) -> Iterator[Chunk]:
    images, rows = [], []
    for chunk_images, chunk_rows in chunks:
        images += chunk_images
        rows += chunk_rows
        if len(rows) >= size:
            yield images, rows
            images, rows = [], []
    if images or rows:
        yield images, rows


def _new_images(images: list[tuple]) -> dict[str, tuple]:
    """The batch's images by sha256, the first of each (two names may hold the same bytes)."""
    by_sha: dict[str, tuple] = {}
    for image in images:
        by_sha.setdefault(image[0], image)
    return by_sha


# --- the ORM (SQLite and any other database) -----------------------------------------------------------

def _orm_writes(project, chunks, origin, report, late_gt, progress) -> list[str]:
    new_late = []
    for images, rows in _regroup(chunks, BATCH):
        by_sha = _new_images(images)
        existing = set(Image.objects.filter(sha256__in=list(by_sha)).values_list("sha256", flat=True))
        new = [Image(sha256=sha, file=file, format=fmt, width=w, height=h, size_bytes=size, ground_truth=gt)
               for sha, (_, fmt, w, h, size, file, gt) in by_sha.items() if sha not in existing]
        Image.objects.bulk_create(new, batch_size=BATCH, ignore_conflicts=True)
        report.images_new += len(new)
        report.images_reused += len(existing)
        new_late += [image.sha256 for image in new if image.sha256 in late_gt]
        ids = dict(Image.objects.filter(sha256__in=list({row[0] for row in rows})).values_list("sha256", "id"))
        _orm_rows(project, rows, ids, origin, report)
        progress()
    return new_late


def _orm_rows(project, rows, image_ids, origin, report) -> None:
    prompts = Prompt.objects.bulk_create(
        [
            Prompt(project=project, image_id=image_ids[sha], text=text, reference=reference, split=split,
                   ground_truth=gt, external_id=external_id)
            for sha, text, reference, split, gt, external_id, *_ in rows
        ]
    )
    report.prompts += len(prompts)
    with_candidates = [(row, prompt) for row, prompt in zip(rows, prompts, strict=True) if row[7]]
    candidates = Candidate.objects.bulk_create(
        [Candidate(prompt=prompt, text=text, source=Candidate.IMPORT) for row, prompt in with_candidates for text in row[7]]
    )
    report.candidates += len(candidates)
    k = project.candidates_per_task
    tasks = []
    for i, (row, prompt) in enumerate(with_candidates):
        ids = [c.pk for c in candidates[i * k : (i + 1) * k]]
        gold = [[ids[p] for p in group] for group in row[8]] if row[8] else None
        tasks.append(RankingTask(
            project=project, prompt=prompt, candidate_ids=ids, priority=row[6], required_annotations=project.overlap,
            origin=origin, gold_ordering=gold, state=RankingTask.State.GOLD if gold else RankingTask.State.OPEN,
        ))
    RankingTask.objects.bulk_create(tasks)
    report.tasks += len(tasks)
    report.rows_written += len(rows)


# --- PostgreSQL ----------------------------------------------------------------------------------------
# Each batch is COPYed into temporary staging tables, one line per image and per row, then one statement
# writes the new images and one the prompts, candidates and tasks. Ids come from the tables' own sequences
# inside the statement (no round trip of millions of ids through Python), rows find their image by sha256,
# and every foreign key keeps its constraint.
_STAGE_IMAGES = "lensloop_import_images"
_STAGE_IMAGE_COLUMNS = ["sha256", "file", "format", "width", "height", "size_bytes", "ground_truth"]
_STAGE = "lensloop_import_rows"
_STAGE_COLUMNS = [
    "n", "sha256", "text", "reference", "split", "ground_truth", "external_id", "priority", "candidates", "gold",
]
_CREATE_STAGES = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE_IMAGES} (
    sha256 varchar(64) NOT NULL, file text NOT NULL, format varchar(16) NOT NULL, width integer NOT NULL,
    height integer NOT NULL, size_bytes bigint NOT NULL, ground_truth jsonb
) ON COMMIT DROP;
CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (
    n integer NOT NULL, sha256 varchar(64) NOT NULL, text text NOT NULL, reference jsonb NOT NULL,
    split varchar(8) NOT NULL, ground_truth jsonb, external_id text NOT NULL, priority double precision NOT NULL,
    candidates text[] NOT NULL, gold jsonb
) ON COMMIT DROP
"""
_WRITE_IMAGES = f"""
INSERT INTO annotation_image (sha256, file, format, width, height, size_bytes, ground_truth, created_at)
SELECT sha256, file, format, width, height, size_bytes, ground_truth, %(now)s FROM {_STAGE_IMAGES}
ON CONFLICT (sha256) DO NOTHING
RETURNING 1
"""
# rows: the batch in manifest order, each with its prompt id and its candidates' ids. Tasks are inserted in
# manifest order, so their ids (the queue's tie-break) follow the manifest.
_WRITE_STAGED = f"""
WITH rows AS MATERIALIZED (
    SELECT s.*, i.id AS image_id, nextval(%(prompt_seq)s::regclass) AS prompt_id,
           ARRAY(SELECT nextval(%(candidate_seq)s::regclass) FROM generate_series(1, cardinality(s.candidates)))
               AS candidate_ids
    FROM {_STAGE} s JOIN annotation_image i ON i.sha256 = s.sha256
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


def _staged_lines(batch: Chunk) -> tuple[bytes, bytes, int]:
    """A batch in COPY text format for the staging tables (pure Python: runs in a helper thread while the
    database writes the batch before); and the number of distinct images in it."""
    images, rows = batch
    dumps, esc, null, array = json.dumps, bulk.text, bulk.NULL, _text_array
    by_sha = _new_images(images)
    image_lines = "".join(
        f"{sha}\t{esc(file)}\t{fmt}\t{w}\t{h}\t{size}\t{null if gt is None else esc(dumps(gt))}\n"
        for sha, (_, fmt, w, h, size, file, gt) in by_sha.items()
    ).encode()
    row_lines = "".join(
        f"{n}\t{sha}\t{esc(text)}\t{esc(dumps(reference))}\t{split}\t"
        f"{null if gt is None else esc(dumps(gt))}\t{esc(external_id)}\t"
        f"{priority!r}\t{esc(array(candidates))}\t{null if gold is None else esc(dumps(gold))}\n"
        for n, (sha, text, reference, split, gt, external_id, priority, candidates, gold) in enumerate(rows)
    ).encode()
    return image_lines, row_lines, len(by_sha)


def _copy_writes(project, chunks, origin, report, late_gt, progress) -> list[str]:
    """Foreign-key checks (PostgreSQL checks each new row's prompt or project, one lookup per row) run at
    the end of each batch's statement rather than all at commit, while a helper thread formats the next
    batch: the database's checking and Python's formatting overlap."""
    from concurrent.futures import ThreadPoolExecutor

    params = {
        "project": project.pk, "overlap": project.overlap, "origin": origin, "now": timezone.now(),
        "source": Candidate.IMPORT, "state": RankingTask.State.OPEN.value,
        "prompt_seq": bulk.sequence(Prompt._meta.db_table), "candidate_seq": bulk.sequence(Candidate._meta.db_table),
    }
    new_late: list[str] = []
    batches = _regroup(chunks, COPY_BATCH)
    with connection.cursor() as cursor:
        cursor.execute(_CREATE_STAGES)
        # JIT compiling the statement cost a fifth of its time per batch; its sorts fit in 64 MB.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE; SET LOCAL jit = off; SET LOCAL work_mem = '64MB'")
        with ThreadPoolExecutor(max_workers=1) as formatter:
            batch = next(batches, None)
            pending = formatter.submit(_staged_lines, batch) if batch else None
            while batch is not None:
                image_lines, row_lines, distinct = pending.result()
                rows = batch[1]
                batch = next(batches, None)
                if batch is not None:
                    pending = formatter.submit(_staged_lines, batch)
                cursor.execute(f"TRUNCATE {_STAGE_IMAGES}, {_STAGE}")
                bulk.copy_data(_STAGE_IMAGES, _STAGE_IMAGE_COLUMNS, image_lines)
                cursor.execute(_WRITE_IMAGES, params)
                new = len(cursor.fetchall())
                report.images_new += new
                report.images_reused += distinct - new
                bulk.copy_data(_STAGE, _STAGE_COLUMNS, row_lines)
                cursor.execute(_WRITE_STAGED, params)
                report.prompts += len(rows)
                report.candidates += sum(len(row[7]) for row in rows)
                report.tasks += cursor.rowcount
                report.rows_written += len(rows)
                progress()
        if late_gt:  # known only once every row is checked: batches may have been written before
            cursor.execute("SELECT sha256 FROM annotation_image WHERE sha256 = ANY(%s) AND created_at = %s",
                           [list(late_gt), params["now"]])  # the images this import inserted
            new_late = [sha for (sha,) in cursor.fetchall()]
        # Back to Django's defaults for the rest of the transaction. (After an error there is no rest:
        # the import's atomic block rolls back, and with it these settings.)
        cursor.execute("SET CONSTRAINTS ALL DEFERRED; SET LOCAL jit TO DEFAULT; SET LOCAL work_mem TO DEFAULT")
    return new_late
