"""Browser tests: Playwright for Python driving Debian's Chromium against pytest-django's live server.

Skipped, saying why, where the ``chromium`` executable is missing (``make test`` installs it as root).
``LENSLOOP_SCREENSHOTS=1`` also saves a screenshot of each main page to docs/screenshots/.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
from django.core.signals import request_finished, request_started

from tests import factories as f
from tests.e2e.helpers import shapes_tasks

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def browser():
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium); browser tests skipped")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an asyncio loop in this thread; the ORM calls the tests make between
    # browser steps are still plain synchronous calls, so Django's async-safety guard must stand
    # aside — only while the browser is up, so the rest of a run keeps the guard.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class _Requests:
    """The live server's requests in flight (Django's request signals, sent in its threads)."""

    def __init__(self):
        self.lock, self.count, self.last = threading.Lock(), 0, time.monotonic()

    def started(self, **_):
        with self.lock:
            self.count, self.last = self.count + 1, time.monotonic()

    def finished(self, **_):
        with self.lock:
            self.count, self.last = max(0, self.count - 1), time.monotonic()

    def wait_quiet(self, quiet: float = 0.5, timeout: float = 15.0) -> None:
        """Until no request is in flight and none started for ``quiet`` seconds (or ``timeout``)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if self.count == 0 and time.monotonic() - self.last >= quiet:
                    return
            time.sleep(0.05)


REQUESTS = _Requests()
request_started.connect(REQUESTS.started, weak=False, dispatch_uid="e2e-requests-started")
request_finished.connect(REQUESTS.finished, weak=False, dispatch_uid="e2e-requests-finished")


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1366, "height": 860}, accept_downloads=True)
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()
    # Closing a page sends what its pagehide handler sends (the work page gives an untouched task's lease
    # back with a keepalive request that outlives the page). The test's database is flushed after this
    # fixture (pytest-django's live-server helper comes first, so it ends last): a request still running
    # then deadlocked with the flush's TRUNCATE on PostgreSQL. Wait until the server is quiet.
    REQUESTS.wait_quiet()


@pytest.fixture
def page(context):
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def world(transactional_db):
    """alice is a project admin, bob an annotator, charlie an outsider; 25 shape-caption tasks, K=4."""
    alice, bob, charlie = f.user("alice", is_staff=True), f.user("bob"), f.user("charlie")
    proj = f.project("shapes", k=4, admins=[alice], annotators=[bob])
    proj.name = "Shapes captions"
    proj.instructions = (
        "Rank the captions **best first**. A good caption names every shape with the right *count*, "
        "*colour*, *size* and *shape*, and nothing that is not there.\n\n"
        "* Tie captions that are equally good (or equally bad).\n* Flag an unclear image instead of guessing."
    )
    proj.save(update_fields=["name", "instructions"])
    shapes_tasks(proj, 25)
    return {"alice": alice, "bob": bob, "charlie": charlie, "project": proj}
