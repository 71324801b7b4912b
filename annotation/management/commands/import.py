import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.exceptions import ImportRejected
from annotation.importers import FORMATS, HELDOUT
from annotation.models import Project
from annotation.services.imports import MODES, import_bundle


class Command(BaseCommand):
    help = ("Import a folder or zip of images plus manifest.jsonl / manifest.csv into a project, or a standard "
            "dataset (--format coco, karpathy, vqa, refcoco, hf; docs/import-export.md).")

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("path", help="folder or .zip")
        parser.add_argument("--manifest", default=None,
                            help="manifest name inside the bundle; for another --format, its main source file")
        parser.add_argument("--format", default="manifest", choices=FORMATS, dest="fmt",
                            help="manifest (default), coco, karpathy, vqa, refcoco or hf (Hugging Face datasets)")
        parser.add_argument("--split", default=None,
                            help="the source's splits to take, comma-separated (e.g. val2017, or train,restval)")
        parser.add_argument("--limit", type=int, default=None, help="import the first N rows (records) only")
        parser.add_argument("--heldout", choices=HELDOUT, default="source",
                            help="source: the dataset's val/test records are held out (eval), its train records "
                                 "not; hash: the project's held-out fraction chooses")
        parser.add_argument("--no-progress", action="store_true",
                            help="no progress bar (by default one is drawn on stderr: on a terminal as it goes, "
                                 "elsewhere one line every 10 s)")
        parser.add_argument("--processes", type=int, default=None,
                            help="processes that check images (default: one per core; 1: none besides this one)")
        parser.add_argument(
            "--mode",
            choices=MODES,
            default="all_or_nothing",
            help="all_or_nothing: any problem refuses the import; partial: keep good rows, report bad ones",
        )

    def handle(self, *args, project, path, manifest, mode, fmt, split, limit, heldout, no_progress, processes,
               **options):
        proj = Project.objects.filter(slug=project).first()
        if proj is None:
            raise CommandError(f"no project {project!r}")
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1")
        if processes is not None and processes < 0:
            raise CommandError("--processes must be 0 or more")
        if split and fmt == "manifest":
            raise CommandError("--split picks the splits of a standard dataset (--format); a manifest's rows "
                               "carry their own split")
        started = time.perf_counter()
        bar = None if no_progress else ProgressBar(self.stderr, started)
        try:
            report = import_bundle(project=proj, path=Path(path), manifest=manifest, mode=mode, format=fmt,
                                   split=split, limit=limit, heldout=heldout, progress=bar, processes=processes)
        except ImportRejected as exc:
            if bar:
                bar.end()
            rejected = exc.details["report"]
            for problem in rejected.problems:
                self.stderr.write(str(problem))
            if rejected.problems_total > len(rejected.problems):
                self.stderr.write(f"... and {rejected.problems_total - len(rejected.problems)} more problems")
            raise CommandError(exc.message) from None
        if bar:
            bar.end()
        for problem in report.problems:
            self.stderr.write(f"skipped {problem}")
        if report.problems_total > len(report.problems):
            self.stderr.write(f"... and {report.problems_total - len(report.problems)} more skipped rows")
        self.stdout.write(
            f"imported {report.rows_imported}/{report.rows} rows: {report.prompts} prompts, "
            f"{report.candidates} candidates, {report.tasks} tasks, {report.images_new} new images "
            f"({report.images_reused} already stored) in {time.perf_counter() - started:.1f} s"
        )


class ProgressBar:
    """The import's progress on stderr: a bar redrawn in place on a terminal, a plain line every 10 s elsewhere
    (a log file or CI keeps a readable record)."""

    WIDTH = 30

    def __init__(self, out, started: float):
        self.out, self.started, self.tty = out, started, out.isatty()
        self.last, self.every, self.drawn, self.latest = 0.0, 0.2 if self.tty else 10.0, False, None

    def __call__(self, phase, report, fraction, *, force: bool = False) -> None:
        self.latest = (phase, report, fraction)
        now = time.perf_counter()
        if now - self.last < self.every and not force:
            return
        self.last, self.latest = now, None
        if phase == "writing":
            what = f"writing  {report.rows_written:,} rows written"
        else:
            what = f"checking {report.rows:,} rows, {report.images_checked:,} images stored, {report.problems_total:,} problems"
            if report.rows_written:  # PostgreSQL writes batches while later rows are checked
                what += f", {report.rows_written:,} rows written"
        if fraction is None:
            bar = "[" + "·" * self.WIDTH + "]"
        else:
            filled = round(fraction * self.WIDTH)
            bar = "[" + "#" * filled + "-" * (self.WIDTH - filled) + f"] {fraction:4.0%}"
        line = f"{bar} {what} ({now - self.started:.0f} s)"
        if self.tty:
            self.out.write("\r" + line[:150].ljust(150), style_func=str, ending="")
        else:
            self.out.write(line, style_func=str)
        self.out.flush()
        self.drawn = True

    def end(self) -> None:
        """Draw where the import ended (if the last call was not drawn) and end the line."""
        if self.latest is not None:
            self(*self.latest, force=True)
        if self.tty and self.drawn:
            self.out.write("")
