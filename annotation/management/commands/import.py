import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.exceptions import ImportRejected
from annotation.models import Project
from annotation.services.imports import MODES, import_bundle


class Command(BaseCommand):
    help = "Import a folder or zip of images plus manifest.jsonl / manifest.csv into a project."

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("path", help="folder or .zip")
        parser.add_argument("--manifest", default=None, help="manifest name inside the bundle")
        parser.add_argument(
            "--mode",
            choices=MODES,
            default="all_or_nothing",
            help="all_or_nothing: any problem refuses the import; partial: keep good rows, report bad ones",
        )

    def handle(self, *args, project, path, manifest, mode, **options):
        proj = Project.objects.filter(slug=project).first()
        if proj is None:
            raise CommandError(f"no project {project!r}")
        started = time.perf_counter()
        try:
            report = import_bundle(project=proj, path=Path(path), manifest=manifest, mode=mode)
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
