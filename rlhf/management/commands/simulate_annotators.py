from django.core.management.base import BaseCommand, CommandError

from annotation.models import Project
from rlhf.engine.demo.annotators import KINDS, kinds_list
from rlhf.simulate import simulate


def parse_kinds(text: str) -> dict[str, int]:
    """``careful=4,adversarial=2,random=2`` (a bare kind counts one) as a mix of simulated annotators."""
    mix: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, count = part.partition("=")
        kind = kind.strip()
        try:
            n = int(count) if count.strip() else 1
        except ValueError:
            raise CommandError(f"--kinds: {part!r} is not KIND=COUNT") from None
        mix[kind] = mix.get(kind, 0) + n
    try:
        listed = kinds_list(mix)
    except ValueError as e:
        raise CommandError(f"--kinds: {e}") from None
    if not listed:
        raise CommandError("--kinds names no simulated annotator")
    return mix


class Command(BaseCommand):
    help = "Rank a project's queue with simulated annotators who judge by the demo world's ground truth."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--annotators", type=int, default=4, help="careful annotators (without --kinds)")
        parser.add_argument("--kinds", default=None,
                            help=f"a mix of annotator kinds, e.g. careful=4,adversarial=2,random=2 "
                                 f"(kinds: {', '.join(KINDS)}); replaces --annotators")
        parser.add_argument("--noise", type=float, default=0.1, help="probability of swapping neighbouring groups")
        parser.add_argument("--limit", type=int, default=None, help="stop after this many rankings")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, project, annotators, kinds, noise, limit, seed, **options):
        proj = Project.objects.filter(slug=project).first()
        if proj is None:
            raise CommandError(f"no project {project!r}")
        if not 0 <= noise <= 1:
            raise CommandError("--noise must lie in [0, 1]")
        mix = parse_kinds(kinds) if kinds is not None else None
        if mix is None and annotators < 1:
            raise CommandError("--annotators must be at least 1")
        result = simulate(proj, annotators=annotators, noise=noise, limit=limit, seed=seed, kinds=mix)
        who = (f"{annotators} simulated annotators" if mix is None else
               "simulated annotators " + ", ".join(f"{n} {kind}" for kind, n in mix.items() if n))
        self.stdout.write(f"{result['rankings']} rankings by {who} ({result['skipped']} skipped)")
