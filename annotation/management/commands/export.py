import math
from datetime import datetime
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from annotation.models import Project
from annotation.services.exports import FORMATS, ExportFilter, quality_note, write_export


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = parse_datetime(value) or parse_datetime(value + "T00:00:00+00:00")
    if parsed is None:
        raise CommandError(f"{value!r} is not a date or ISO 8601 date-time")
    return parsed


def _fraction(value: str | None, option: str) -> float | None:
    """A number from 0 to 1, or a CommandError naming the option (argparse's own would only print usage)."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number <= 1:  # also false for nan
        raise CommandError(f"{option} must be a number from 0 to 1, not {value!r}")
    return number


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
        parser.add_argument("--min-confidence", metavar="C",
                            help="0-1: only pairs whose confidence is at least C (rankings: consensus); "
                                 "pairs without one yet are left out")
        parser.add_argument("--min-annotator-reliability", metavar="R",
                            help="0-1: only pairs (rankings) of annotators whose reliability (Crowd-BT eta) is at "
                                 "least R; annotators without a figure are left out")
        parser.add_argument("--refresh-quality", action="store_true",
                            help="recompute the project's quality report first when it is stale or missing, so "
                                 "that every pair carries a confidence")

    def handle(self, *args, **o):
        project = Project.objects.filter(slug=o["project"]).first()
        if project is None:
            raise CommandError(f"no project {o['project']!r}")
        flt = ExportFilter(
            project=project, since=_when(o["since"]), until=_when(o["until"]), sources=tuple(o["source"]),
            split=o["split"], min_confidence=_fraction(o["min_confidence"], "--min-confidence"),
            min_annotator_reliability=_fraction(o["min_annotator_reliability"], "--min-annotator-reliability"),
        )
        note = quality_note(flt)
        if note.state != "fresh" and o["refresh_quality"]:
            from annotation.services.quality import quality_report_compute

            quality_report_compute(project=project)
            self.stderr.write("recomputed the project's quality report")
            note = quality_note(flt)
        if note.message:
            self.stderr.write(f"warning: {note.message} (--refresh-quality recomputes it first)")
        summary = write_export(flt, o["format"], Path(o["out"]))
        self.stdout.write(f"wrote {summary['rows']} rows ({o['format']}) to {o['out']}")
