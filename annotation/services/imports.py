"""Import a bundle (folder or zip) of images plus a JSONL or CSV manifest into a project.

Two modes, chosen per import:

* ``all_or_nothing`` (the default): any problem — a bad row, a broken image, a refused zip entry —
  rejects the whole import; the database is untouched and the report lists every problem.
* ``partial``: good rows are imported, bad rows are skipped; the report lists each skipped row.

Either way a row is imported whole (image, prompt, candidates, task) or not at all, and all rows of
one import are written in one transaction. A row without a ``split`` is held out (``eval``) or not by
the hash of its id or content (``annotation.splits``), the same way on every import of the same data.

Neither holding the import in memory:

* *Check*: the manifest is read as a stream; rows are parsed here and their images (each image once)
  checked and stored by a pool of processes (``annotation.services.import_checks``), a batch of rows at a
  time, many batches in flight.
* *Write* (``annotation.services.import_writes``), in one transaction: on PostgreSQL each batch of good rows
  is written while the checkers go on with the next (the database's share of an import is as large as the
  checks'; a problem in an all-or-nothing import, a cancel or an error rolls it all back). Elsewhere
  (SQLite, whose one write lock would also hold the progress that the import page shows) the good rows
  are spooled to a temporary file first and written after the last row is checked.

New images are stored as they are checked, appended to packs of the import's own (``annotation.images``;
with object storage, one file and one object each); a rejected, cancelled or failed import deletes its
packs, and only an import whose process was killed leaves unreferenced bytes behind, never database rows.
Imports from the browser and the API run as background jobs (``annotation.services.import_jobs``) that
follow the ``progress`` callback.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import pickle
import secrets
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from django.conf import settings

from annotation import bulk
from annotation.bundles import Bundle, BundleError, open_bundle
from annotation.exceptions import ImportRejected
from annotation.models import Image, Project, Prompt
from annotation.services.import_checks import BAD, HAS_GT, PENDING, SPOOLED, Checker, ImageTable, Limits, close_pack
from annotation.services.import_writes import write_spooled
from annotation.splits import hashed_split, split_key
from lensloop import storage

MODES = ("all_or_nothing", "partial")
MAX_MANIFEST_BYTES = 2 * 1024**3  # streamed: the limit guards the disk and the time, not memory
PROBLEMS_KEPT = 1000  # problems listed in a report; ``problems_total`` counts them all
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
    images_checked: int = 0  # images that passed their check (and were stored), as the import goes
    rows_written: int = 0  # rows written so far, in the write pass
    problems_total: int = 0
    problems: list[Problem] = field(default_factory=list)  # the first PROBLEMS_KEPT

    @property
    def ok(self) -> bool:
        return not self.problems_total

    def add(self, problem: Problem) -> None:
        self.problems_total += 1
        if len(self.problems) < PROBLEMS_KEPT:
            self.problems.append(problem)

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


def _consumed(stream) -> int:
    """Bytes of the manifest read so far (for the progress bar)."""
    raw = getattr(stream, "raw", None)
    return raw.limit - raw.left if raw is not None and hasattr(raw, "left") else stream.tell()


def _manifest_rows(bundle: Bundle, manifest: str, k: int, position: list[int]) -> Iterator[tuple[int, Row | None, str | None]]:
    """Yield (line, row, problem) for each non-blank manifest line, reading the manifest as a stream (memory
    stays flat whatever its size); ``position[0]`` follows the bytes read."""
    with bundle.open(manifest, MAX_MANIFEST_BYTES) as raw:
        line = 0
        try:
            if manifest.endswith(".csv"):
                reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
                if reader.fieldnames is None:
                    return
                for raw_row in reader:
                    line = reader.line_num
                    position[0] = _consumed(raw)
                    if None in raw_row:
                        yield line, None, "row has more cells than the header"
                        continue
                    try:
                        yield line, _parse_row({k_: v for k_, v in raw_row.items() if v not in (None, "")}, line, k), None
                    except ValueError as exc:
                        yield line, None, str(exc)
                return
            # JSON lines are split on bytes and decoded one by one: a line that is not UTF-8 is its row's problem.
            for line, data in enumerate(raw, start=1):
                try:
                    content = data.decode("utf-8-sig" if line == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    yield line, None, f"not UTF-8 text ({exc.reason} at byte {exc.start} of the line)"
                    continue
                if not content.strip():
                    continue
                position[0] = _consumed(raw)
                try:
                    raw_row = json.loads(content)
                except json.JSONDecodeError as exc:
                    yield line, None, f"not valid JSON: {exc.msg} (column {exc.colno})"
                    continue
                if not isinstance(raw_row, dict):
                    yield line, None, "each line must be a JSON object"
                    continue
                try:
                    yield line, _parse_row(raw_row, line, k), None
                except ValueError as exc:
                    yield line, None, str(exc)
        except UnicodeDecodeError as exc:
            yield line + 1, None, f"manifest is not UTF-8 text ({exc.reason})"
        except BundleError as exc:
            yield line + 1, None, str(exc)


class ImportCancelled(Exception):
    """Raised by a progress callback to stop an import; nothing of it is written."""


Progress = Callable[[str, ImportReport, float | None], None]  # (phase, report so far, fraction of the phase or None)


def import_bundle(
    *, project: Project, path: Path, manifest: str | None = None, mode: str = "all_or_nothing", origin: str = "import",
    format: str = "manifest", split: str | None = None, limit: int | None = None, heldout: str = "source",
    progress: Progress | None = None, processes: int | None = None,
) -> ImportReport:
    """Import ``path`` (folder or zip) into ``project``. Raises ``ImportRejected`` (report in details) when
    mode is all_or_nothing and anything is wrong; otherwise returns the report.

    ``format`` other than ``manifest`` reads a standard dataset (COCO Captions, Karpathy, VQA v2, RefCOCO,
    Hugging Face; ``annotation.importers``), whose records become manifest rows checked and written here
    exactly like a manifest's; ``split`` picks the source's splits, ``heldout`` whether they decide the rows'
    ``split`` (``source``) or the project's held-out fraction does (``hash``). ``limit`` keeps the first
    ``limit`` rows (records) of any format.

    ``progress(phase, report, fraction)`` is called as the import goes (phase ``checking``, then ``writing``);
    it may raise ``ImportCancelled``, and nothing is written. ``processes`` checks images in that many
    processes (default: one per core; 0 or 1: in this process)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    report = ImportReport(project=project.slug, mode=mode, format=format)
    try:
        bundle = open_bundle(path, max_total_bytes=settings.LENSLOOP_MAX_UPLOAD_BYTES * 4)
    except BundleError as exc:
        report.add(Problem(path.name, None, str(exc)))
        raise ImportRejected(str(exc), report=report) from None
    try:
        if format != "manifest":
            from annotation import importers

            try:
                bundle = importers.convert(bundle, format, source=manifest, split=split, heldout=heldout)
            except BundleError as exc:
                report.add(Problem(getattr(exc, "file", bundle.label), None, getattr(exc, "reason", str(exc))))
                raise ImportRejected(str(exc), report=report) from None
        elif split:
            raise ValueError("split picks the splits of a converted dataset; a manifest's rows carry their own")
        return _import(bundle, project, manifest, mode, origin, report, limit, progress or _quiet, processes)
    finally:
        bundle.close()


def _quiet(phase: str, report: ImportReport, fraction: float | None) -> None:
    pass


def _import(bundle: Bundle, project: Project, manifest: str | None, mode: str, origin: str, report: ImportReport,
            limit: int | None, progress: Progress, processes: int | None):
    for name, why in bundle.refused:
        report.add(Problem(name, None, why))
    converted = getattr(bundle, "manifest_rows", None)  # a standard dataset read by annotation.importers
    position, size = [0], None
    if converted is not None:
        report.manifest = bundle.label
        # (where, row, problem): where is (file, line, record) of the source record
        records = converted(project.candidates_per_task)
    else:
        try:
            manifest = bundle.find_manifest(manifest)
            size = _located_size(bundle.locate(manifest, MAX_MANIFEST_BYTES))
        except BundleError as exc:
            report.add(Problem(bundle.label, None, str(exc)))
            raise ImportRejected(str(exc), report=report) from None
        report.manifest = manifest
        records = (((manifest, line or None, ""), row, problem)
                   for line, row, problem in _manifest_rows(bundle, manifest, project.candidates_per_task, position))
    if limit:
        records = itertools.islice(records, limit)

    def fraction() -> float | None:
        if limit:
            return min(1.0, report.rows / limit)
        return min(1.0, position[0] / size) if size else None

    store = storage.config()
    storage.check(store)  # a bucket that is missing or denies access fails the import before any row is read
    limits = Limits(settings.LENSLOOP_MAX_IMAGE_BYTES, settings.LENSLOOP_MAX_IMAGE_PIXELS, str(settings.MEDIA_ROOT),
                    store, pack_prefix=f"{time.strftime('%Y%m%d')}-{secrets.token_hex(6)}")
    late_gt: dict[str, dict] = {}
    checked = _checked_chunks(records, bundle, project, mode, converted is not None, report, late_gt, limits,
                              progress, fraction, processes)
    written = False
    try:  # closed however the writes end: the checking processes stop then, not when the generator is collected
        report = _written(checked, project, origin, report, late_gt, progress, fraction)
        written = True
        return report
    finally:
        checked.close()
        close_pack(limits)
        _drop_unused_packs(limits, written)


def _drop_unused_packs(limits: Limits, written: bool) -> None:
    """Delete this import's packs that no image names: all of them when nothing was written (rejected,
    cancelled, failed: the transaction rolled back), else those whose images were all there already."""
    for pack in Path(limits.media_root, "packs").glob(f"{limits.pack_prefix}-*.pack"):
        if not written or not Image.objects.filter(file__startswith=f"packs/{pack.name}/").exists():
            pack.unlink(missing_ok=True)


def _written(checked: Iterator, project: Project, origin: str, report: ImportReport, late_gt: dict,
             progress: Progress, fraction) -> ImportReport:
    def writing() -> None:  # every row is checked: the share of the good ones written so far
        good = report.rows_imported
        progress("writing", report, report.rows_written / good if good else 1.0)

    if bulk.fast_path():
        # PostgreSQL: each batch of good rows is written while the checkers go on with the next ones (the
        # server's share of an import is as large as the checks'); all in one transaction, which a problem
        # (all or nothing), a cancel or an error rolls back whole.
        checking = [True]

        def written() -> None:
            if checking[0]:
                progress("checking", report, fraction())
            else:
                writing()

        def chunks() -> Iterator:
            yield from checked
            checking[0] = False
            writing()

        write_spooled(project, chunks(), origin=origin, report=report, late_gt=late_gt, progress=written)
        return report
    Path(settings.IMPORT_ROOT).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=settings.IMPORT_ROOT, prefix="spool-") as spool:
        # Elsewhere (SQLite: one write lock, which would also hold the progress the import page shows) every
        # row is checked and the good ones spooled to disk first, then written in one transaction.
        for chunk in checked:
            pickle.dump(chunk, spool, protocol=pickle.HIGHEST_PROTOCOL)
        spool.seek(0)
        progress("writing", report, 0.0)
        write_spooled(project, _unspool(spool), origin=origin, report=report, late_gt=late_gt, progress=writing)
    return report


def _checked_chunks(records, bundle: Bundle, project: Project, mode: str, converted: bool, report: ImportReport,
                    late_gt: dict, limits: Limits, progress: Progress, fraction, processes) -> Iterator[tuple[list, list]]:
    """Check every row and every image it names (each image once, in parallel) and yield the good rows a
    chunk at a time, as (images, rows) in manifest order. At the end, raise ``ImportRejected`` if the mode is
    all or nothing and anything was wrong (after the first problem no more rows are yielded: they would
    only be rolled back)."""
    table = ImageTable(getattr(bundle, "member_count", None))
    with Checker(limits, processes) as checker:
        pending: deque = deque()
        entries: list[tuple] = []
        batch: list = []

        def collect() -> tuple[list, list] | None:
            chunk = _checked(*pending.popleft(), table, project, report, late_gt)
            return None if mode == "all_or_nothing" and report.problems_total else chunk

        for where, row, problem in records:
            report.rows += 1
            if problem is not None:
                report.add(Problem(*where[:2], problem, where[2]))
                continue
            try:  # right away: a converted dataset's embedded image is there for this row only
                located = bundle.locate(row.image, limits.max_bytes)
            except BundleError as exc:
                report.add(Problem(*where[:2], f"image {row.image!r}: {exc}", where[2]))
                continue
            key = located[1]
            if not table.state(key):
                table.set_state(key, PENDING)
                batch.append(located)
            entries.append((where, row, key))
            if len(entries) >= CHUNK:
                pending.append((entries, batch, checker.submit(batch)))
                entries, batch = [], []
                while pending and (len(pending) > IN_FLIGHT or pending[0][2].ready()):
                    chunk = collect()
                    progress("checking", report, fraction())
                    if chunk:
                        yield chunk
        pending.append((entries, batch, checker.submit(batch)))
        while pending:
            chunk = collect()
            if chunk:
                yield chunk
        progress("checking", report, 1.0)
    if report.rows == 0:
        report.add(Problem(report.manifest, None, "no records to import" if converted else "manifest has no rows"))
    good = report.rows_imported
    report.rows_skipped = report.rows - good
    if report.problems_total and mode == "all_or_nothing":
        report.rows_imported, report.rows_skipped, report.prompts_heldout = 0, report.rows, 0
        # (on PostgreSQL, batches written before the first problem are rolled back with this exception)
        report.images_new = report.images_reused = report.prompts = report.candidates = report.tasks = 0
        report.rows_written = 0
        raise ImportRejected(f"import refused: {report.problems_total} problem(s); nothing was imported", report=report)


CHUNK = 1000  # rows per batch of image checks (and per spooled chunk)
IN_FLIGHT = 32  # batches handed to the checkers and not yet collected: bounds what waits in memory, and keeps
# the checkers busy while a batch of rows is written (PostgreSQL: about 1 s for 10,000 rows)


def _located_size(located) -> int | None:
    kind = located[0]
    if kind == "zip":
        return located[6]
    if kind == "file":
        return os.path.getsize(located[3])
    return len(located[3]) if kind == "bytes" else None


def _checked(entries, batch, handle, table: ImageTable, project, report: ImportReport, late_gt) -> tuple[list, list]:
    """Collect a batch's image checks and return its good rows with the images they name first (in manifest
    order: batches are collected in the order they were handed out, so each image's outcome is known by the
    time its rows come)."""
    fresh = {}  # this batch's images that passed, by key
    for located, outcome in zip(batch, handle.get(), strict=True):
        table.record(located[1], outcome)
        if not isinstance(outcome, str):
            fresh[located[1]] = outcome
    report.images_checked += len(fresh)
    images, rows = [], []
    for (file, line, record), row, key in entries:
        state = table.state(key)
        if state & BAD:
            report.add(Problem(file, line, f"image {row.image!r}: {table.errors[key]}", record))
            continue
        sha = table.sha(key)
        if not row.split:
            key_ = split_key(external_id=row.external_id, image_sha256=sha, text=row.prompt)
            row.split = hashed_split(key_, project.heldout_fraction)
        if not state & SPOOLED:  # the image's first good row: the image goes in before it
            images.append((sha, *fresh[key][1:], row.ground_truth))
            table.set_state(key, state | SPOOLED | (HAS_GT if row.ground_truth is not None else 0))
        elif row.ground_truth is not None and not state & HAS_GT:
            late_gt.setdefault(sha, row.ground_truth)
            table.set_state(key, state | HAS_GT)
        rows.append((sha, row.prompt, row.reference, row.split, row.ground_truth, row.external_id, row.priority,
                     row.candidates, row.gold))
        report.rows_imported += 1
        report.prompts_heldout += row.split == Prompt.Split.EVAL
    return images, rows


def _unspool(spool) -> Iterator[tuple[list, list]]:
    while True:
        try:
            yield pickle.load(spool)
        except EOFError:
            return
