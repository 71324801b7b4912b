"""Run an rq worker on lensloop's queues (``generate``, ``train``, ``default`` unless told otherwise)."""

from django.conf import settings
from django.core.management.base import BaseCommand

from lensloop.queue import redis_connection


class Command(BaseCommand):
    help = "Run an rq worker on lensloop's queues."

    def add_arguments(self, parser):
        parser.add_argument("queues", nargs="*", help=f"queues to listen on (default: {settings.RQ_QUEUES})")
        parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
        parser.add_argument("--name", default=None, help="worker name (default: host and pid)")

    def handle(self, *args, queues, burst, name, **options):
        from rq import Worker

        worker = Worker(queues or settings.RQ_QUEUES, connection=redis_connection(), name=name)
        worker.work(burst=burst, with_scheduler=not burst)
