"""``manage.py mark_gold <project-slug> --fraction 0.05 [--reward demo_reward] [--as USERNAME] [--dry-run]``: make a
stable, hashed share of a project's open tasks gold tasks, ordered by a verifiable reward against the ground truth
(``rlhf.gold``; docs/loop.md, "Gold tasks from ground truth")."""

from __future__ import annotations

import math

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotation.models import Project
from rlhf.gold import MarkGoldError, mark_gold_from_ground_truth


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 < number <= 1:  # also false for nan
        raise CommandError(f"--fraction must be a number in (0, 1] (more than 0, at most 1), not {value!r}")
    return number


class Command(BaseCommand):
    help = ("Mark a stable, hashed fraction of a project's open tasks as gold tasks, their candidates ordered by a "
            "verifiable reward against the prompts' ground truth.")

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("--fraction", required=True,
                            help="share of the open tasks, in (0, 1]; the same tasks every run, a larger one "
                                 "extends the set")
        parser.add_argument("--reward", default=None,
                            help="verifiable reward (rlhf.engine.rewards.REWARDS); default: the project's gate "
                                 "reward, else its rounds' verifiable_reward, else demo_reward")
        parser.add_argument("--as", dest="as_user", default=None, metavar="USERNAME",
                            help="mark as this project admin (default: the system, as the operator at the shell)")
        parser.add_argument("--dry-run", action="store_true", help="score and count, change nothing")

    def handle(self, *args, project, fraction, reward, as_user, dry_run, **options):
        number = _fraction(fraction)
        proj = Project.objects.filter(slug=project).first()
        if proj is None:
            raise CommandError(f"no project {project!r}")
        by = None
        if as_user is not None:
            by = get_user_model().objects.filter(username=as_user).first()
            if by is None:
                raise CommandError(f"--as: no user {as_user!r}")
        try:
            result = mark_gold_from_ground_truth(proj, fraction=number, reward=reward, by=by, dry_run=dry_run)
        except MarkGoldError as e:
            raise CommandError(e.message) from None
        verb = "would mark" if dry_run else "marked"
        self.stdout.write(
            f"{proj.slug}: reward {result.reward}, fraction {result.fraction:g} of {result.open_tasks} open tasks: "
            f"{result.considered} considered, {verb} {result.marked} gold, skipped {result.skipped} "
            f"({result.skipped_ties} ties, {result.skipped_no_ground_truth} without ground truth, "
            f"{result.skipped_ranked} already ranked, {result.skipped_unscorable} unscorable)"
            + (" [dry run: nothing changed]" if dry_run else "")
        )
        for line in result.errors:
            self.stderr.write(f"  unscorable {line}")
