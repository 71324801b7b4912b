from datetime import datetime
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from annotation.models import Project
from annotation.services.exports import FORMATS, ExportFilter, write_export


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = parse_datetime(value) or parse_datetime(value + "T00:00:00+00:00")
    if parsed is None:
        raise CommandError(f"{value!r} is not a date or ISO 8601 date-time")
    return parsed


class Command(BaseCommand):
    help = "Export preference data of a project into a folder."

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("out", help="output folder (created)")
        parser.add_argument("--format", choices=FORMATS, default="records")
        parser.add_argument("--since", help="only data created at or after this date/time")
        parser.add_argument("--until", help="only data created before this date/time")
        parser.add_argument("--source", action="append", default=[], help="candidate source (repeatable)")
        parser.add_argument("--split", choices=["train", "eval"], help="only training or only held-out prompts")

    def handle(self, *args, **o):
        project = Project.objects.filter(slug=o["project"]).first()
        if project is None:
            raise CommandError(f"no project {o['project']!r}")
        flt = ExportFilter(project=project, since=_when(o["since"]), until=_when(o["until"]), sources=tuple(o["source"]),
                           split=o["split"])
        summary = write_export(flt, o["format"], Path(o["out"]))
        self.stdout.write(f"wrote {summary['rows']} rows ({o['format']}) to {o['out']}")
