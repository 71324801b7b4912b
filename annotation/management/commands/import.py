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
        parser.add_argument(
            "--mode",
            choices=MODES,
            default="all_or_nothing",
            help="all_or_nothing: any problem refuses the import; partial: keep good rows, report bad ones",
        )

    def handle(self, *args, project, path, manifest, mode, fmt, split, limit, heldout, **options):
        proj = Project.objects.filter(slug=project).first()
        if proj is None:
            raise CommandError(f"no project {project!r}")
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1")
        if split and fmt == "manifest":
            raise CommandError("--split picks the splits of a standard dataset (--format); a manifest's rows "
                               "carry their own split")
        started = time.perf_counter()
        try:
            report = import_bundle(project=proj, path=Path(path), manifest=manifest, mode=mode, format=fmt,
                                   split=split, limit=limit, heldout=heldout)
        except ImportRejected as exc:
            for problem in exc.details["report"].problems:
                self.stderr.write(str(problem))
            raise CommandError(exc.message) from None
        for problem in report.problems:
            self.stderr.write(f"skipped {problem}")
        self.stdout.write(
            f"imported {report.rows_imported}/{report.rows} rows: {report.prompts} prompts, "
            f"{report.candidates} candidates, {report.tasks} tasks, {report.images_new} new images "
            f"({report.images_reused} already stored) in {time.perf_counter() - started:.1f} s"
        )
