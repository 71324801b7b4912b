"""Seed the demo: a caption project on the synthetic shapes world, an admin and two annotators.

``--task grounding`` (or ``detection``) seeds a second project beside it, ``demo-grounding`` (``demo-detection``):
referring expressions ("Where is the red circle?", or "Find every shape.") whose answers are boxes, with the
scenes' boxes as ground truth, scored by the IoU reward (``iou_reward`` / ``detection_reward``) in its rounds and
its promotion gate. Its first tasks are the world's hand-made box answers: the demo base was never taught boxes.

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
BOX_INSTRUCTIONS = """\
Each answer is drawn on the image in its candidate's colour. Rank the answers **best first**: the best box
covers {what} tightly; a box on the wrong shape, far off, or an answer without a box is worst.

* Hover a candidate (or Tab to it) to bring its boxes forward and dim the others.
* Keys: press a candidate's number to place it next; `T` ties your last pick with the rank above it;
  `Backspace` undoes; `Enter` submits; `S` skips; `F` opens the flags.
"""
# task type → (slug, name, instructions, verifiable reward of its rounds and gate)
PROJECTS = {
    "caption": (SLUG, "Demo: shapes captions", INSTRUCTIONS, "demo_reward"),
    "grounding": ("demo-grounding", "Demo: shapes grounding", BOX_INSTRUCTIONS.format(what="the named shape"),
                  "iou_reward"),
    "detection": ("demo-detection", "Demo: shapes detection",
                  BOX_INSTRUCTIONS.format(what="every shape, each labelled with its colour and shape,"),
                  "detection_reward"),
}
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
    help = "Seed a demo project (synthetic shapes images with candidate captions, or box answers) and demo accounts."

    def add_arguments(self, parser):
        parser.add_argument("--images", type=int, default=300, help="number of synthetic images")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("-k", type=int, default=4, help="candidates per task")
        parser.add_argument("--task", choices=tuple(PROJECTS), default="caption",
                            help="the project's task type: caption (demo-shapes, default), grounding "
                            "(demo-grounding) or detection (demo-detection)")
        parser.add_argument("--candidates", choices=("policy", "world"), default=None,
                            help="the first tasks' candidates: the demo base's own samples (default for "
                            "captions) or the world's hand-made answers (default for box tasks)")
        parser.add_argument("--tasks", type=int, default=240,
                            help="images the demo base captions for the first tasks (with --candidates policy)")

    def handle(self, *args, images, seed, k, candidates, tasks, task="caption", **options):
        slug, project_name, instructions, reward = PROJECTS[task]
        if candidates is None:
            candidates = "policy" if task == "caption" else "world"
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
        project = Project.objects.filter(slug=slug).first()
        if project is None:
            project = project_create(
                name=project_name,
                slug=slug,
                task_type=task,
                candidates_per_task=k,
                overlap=1,
                instructions=instructions,
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
            # A box project's rounds add its IoU reward to the reward model's (the answers' ground truth is what
            # makes a box right, docs/ui.md, "Box answers").
            params = {**DEMO_POLICY_LORA, "policy_batch_size": 64}
            if task != "caption":
                params["verifiable_reward"] = reward
            loop_settings_set(project=project, round_params=params, gate_reward=reward)
        if not project.prompts.exists():
            with tempfile.TemporaryDirectory(dir=settings.VAR_DIR) as tmp:
                world.write_demo_manifest(tmp, n=images, seed=seed, task_type=task,
                                          k=k if candidates == "world" else 0)
                report = import_bundle(project=project, path=Path(tmp), origin="demo")
            self.stdout.write(f"demo project {slug}: {report.prompts} images, {report.tasks} ranking tasks")
        else:
            self.stdout.write(f"demo project {slug} already seeded ({project.prompts.count()} prompts)")
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
            self.stdout.write(f"demo project {project.slug}: {opened} ranking tasks of the demo base's own answers")
            return
        run = TrainingRun.objects.get(pk=run.pk)
        self.stderr.write(self.style.ERROR(
            f"sampling the demo base's captions failed (run {run.pk}, log in {run.run_dir}): {run.error[-1500:]}\n"
            "the demo has no tasks yet: start `manage.py demo` again, or use Generate on the Training page"))
