from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.models import Project
from annotation.services.projects import project_create


class Command(BaseCommand):
    help = "Create an annotation project."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--slug", default="")
        parser.add_argument("--task-type", choices=Project.TaskType.values, default="caption")
        parser.add_argument("-k", "--candidates", type=int, default=4, help="candidates per task, 2 to 9")
        parser.add_argument("--overlap", type=int, default=1, help="annotators per task")
        parser.add_argument("--lease-minutes", type=int, default=30)
        parser.add_argument("--instructions", default="", help="Markdown, or @path/to/file.md")
        parser.add_argument("--base-model", default="")
        parser.add_argument("--admin", default=None, help="username to make project admin")

    def handle(self, *args, **o):
        instructions = o["instructions"]
        if instructions.startswith("@"):
            with open(instructions[1:], encoding="utf-8") as fh:
                instructions = fh.read()
        owner = None
        if o["admin"]:
            owner = get_user_model().objects.filter(username=o["admin"]).first()
            if owner is None:
                raise CommandError(f"no user named {o['admin']!r}")
        try:
            project = project_create(
                name=o["name"],
                slug=o["slug"],
                task_type=o["task_type"],
                candidates_per_task=o["candidates"],
                overlap=o["overlap"],
                lease_minutes=o["lease_minutes"],
                instructions=instructions,
                base_model=o["base_model"],
                created_by=owner,
                any_model_path=True,  # whoever runs manage.py can read the model folders anyway
            )
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        self.stdout.write(f"created project {project.slug} (id {project.pk})")
