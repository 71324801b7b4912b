from django.core.management.base import BaseCommand, CommandError

from annotation.models import Project
from rlhf.simulate import simulate


class Command(BaseCommand):
    help = "Rank a project's queue with simulated annotators who judge by the demo world's ground truth."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--annotators", type=int, default=4)
        parser.add_argument("--noise", type=float, default=0.1, help="probability of swapping neighbouring groups")
        parser.add_argument("--limit", type=int, default=None, help="stop after this many rankings")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, project, annotators, noise, limit, seed, **options):
        proj = Project.objects.filter(slug=project).first()
        if proj is None:
            raise CommandError(f"no project {project!r}")
        if not 0 <= noise <= 1:
            raise CommandError("--noise must lie in [0, 1]")
        if annotators < 1:
            raise CommandError("--annotators must be at least 1")
        result = simulate(proj, annotators=annotators, noise=noise, limit=limit, seed=seed)
        self.stdout.write(f"{result['rankings']} rankings by {annotators} simulated annotators ({result['skipped']} skipped)")
