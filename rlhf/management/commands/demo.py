"""Seed the demo: a caption project on the synthetic shapes world, an admin and two annotators.

The demo's first tasks are the demo base's own captions (a generate run from the base policy, in this process,
about 15 seconds on 2 cores): the first round then learns from rankings of the policy's own samples, as every
later round does, and improves on them. ``--candidates world`` imports the world's hand-made candidates instead
(no model needed; they are not the policy's, so a round on them teaches it little).

Idempotent: a second run prints the logins and leaves the data alone (it samples again only when the project
has no task, say after a failed first try). Passwords are generated once and kept in ``var/demo-logins.json``
(never in the repository).
"""

import json
import secrets
import tempfile
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from annotation.models import Membership, Project, RankingTask
from annotation.services.imports import import_bundle
from annotation.services.projects import member_set, project_create
from rlhf.engine.demo import DEMO_POLICY_LORA, world
from rlhf.jobs import run_step
from rlhf.models import LoopSettings, TrainingRun
from rlhf.services import loop_settings_set, start_generate

SLUG = "demo-shapes"
INSTRUCTIONS = """\
Rank the captions **best first**. A good caption names every shape in the picture with the right
**count**, **colour**, **size** and **shape**, and nothing that is not there.

* Keys: press a candidate's number to place it next; `T` ties your last pick with the rank above it;
  `Backspace` undoes; `Enter` submits; `S` skips; `F` opens the flags.
* If two captions are equally good (or equally bad), tie them.
"""
ACCOUNTS = (("admin", True), ("annotator1", False), ("annotator2", False))


def demo_logins() -> dict[str, str]:
    """username → password, generated on first use."""
    path = Path(settings.VAR_DIR) / "demo-logins.json"
    if path.exists():
        return json.loads(path.read_text())
    logins = {name: secrets.token_urlsafe(9) for name, _ in ACCOUNTS}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(logins, indent=2))
    path.chmod(0o600)
    return logins


class Command(BaseCommand):
    help = "Seed the demo project (synthetic shapes images with candidate captions) and demo accounts."

    def add_arguments(self, parser):
        parser.add_argument("--images", type=int, default=300, help="number of synthetic images")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("-k", type=int, default=4, help="candidates per task")
        parser.add_argument("--candidates", choices=("policy", "world"), default="policy",
                            help="the first tasks' candidates: the demo base's own samples (default) or the "
                            "world's hand-made captions")
        parser.add_argument("--tasks", type=int, default=240,
                            help="images the demo base captions for the first tasks (with --candidates policy)")

    def handle(self, *args, images, seed, k, candidates, tasks, **options):
        logins = demo_logins()
        users = {}
        User = get_user_model()
        with transaction.atomic():
            for name, is_admin in ACCOUNTS:
                user, created = User.objects.get_or_create(
                    username=name, defaults={"is_staff": is_admin, "is_superuser": is_admin}
                )
                if created:
                    user.set_password(logins[name])
                    user.save()
                users[name] = user
        project = Project.objects.filter(slug=SLUG).first()
        if project is None:
            project = project_create(
                name="Demo: shapes captions",
                slug=SLUG,
                task_type=Project.TaskType.CAPTION,
                candidates_per_task=k,
                overlap=1,
                instructions=INSTRUCTIONS,
                created_by=users["admin"],
            )
        for name, is_admin in ACCOUNTS:
            role = Membership.Role.ADMIN if is_admin else Membership.Role.ANNOTATOR
            member_set(project=project, user=users[name], role=role)
        if not LoopSettings.objects.filter(project=project).exists():
            # The demo model learns from RL only with lm_head trainable (docs/policy.md), and PPO on it was
            # unstable with the engine's 16 answers per step (KL to the reference above 20): every round
            # of the demo uses both settings.
            # Its prompts carry ground truth, so the promotion gate judges each round's policy by the demo
            # world's verifiable reward on the held-out prompts (docs/loop.md).
            loop_settings_set(project=project, round_params={**DEMO_POLICY_LORA, "policy_batch_size": 64},
                              gate_reward="demo_reward")
        if not project.prompts.exists():
            with tempfile.TemporaryDirectory(dir=settings.VAR_DIR) as tmp:
                world.write_demo_manifest(tmp, n=images, seed=seed, task_type="caption",
                                          k=k if candidates == "world" else 0)
                report = import_bundle(project=project, path=Path(tmp), origin="demo")
            self.stdout.write(f"demo project {SLUG}: {report.prompts} images, {report.tasks} ranking tasks")
        else:
            self.stdout.write(f"demo project {SLUG} already seeded ({project.prompts.count()} prompts)")
        if not RankingTask.objects.filter(project=project).exists():
            self._sample_first_tasks(project, users["admin"], tasks)
        for name, is_admin in ACCOUNTS:
            label = "admin" if is_admin else "annotator"
            self.stdout.write(f"  {label:9s}  user {name:11s} password {logins[name]}")

    def _sample_first_tasks(self, project: Project, admin, tasks: int) -> None:
        """The first tasks: K captions per image sampled from the demo base, by a generate run like the ones a
        round ends with (it shows on the Training page), run here rather than by a worker so that the queue
        is full when the server starts."""
        self.stdout.write(f"sampling the demo base's captions for {tasks} images (first start only, about "
                          "15 seconds on 2 cores) ...")
        run = start_generate(project=project, user=admin, prompts=tasks, enqueue=False)
        if run_step(run.pk) == "succeeded":
            opened = RankingTask.objects.filter(project=project).count()
            self.stdout.write(f"demo project {SLUG}: {opened} ranking tasks of the demo base's own captions")
            return
        run = TrainingRun.objects.get(pk=run.pk)
        self.stderr.write(self.style.ERROR(
            f"sampling the demo base's captions failed (run {run.pk}, log in {run.run_dir}): {run.error[-1500:]}\n"
            "the demo has no tasks yet: start `manage.py demo` again, or use Generate on the Training page"))
