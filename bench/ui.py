"""Annotator UI benchmark: time from submit to the next task on screen, measured in the browser.

Seeds the demo project in a throw-away data folder, serves the app with gunicorn, then drives Chromium
(Playwright) through the ranking page: rank four candidates by keyboard, press Enter, wait for the next
task; repeat. The page records, as standard User Timing measures, the time from sending the submit
(``POST /api/tasks/<id>/submit/?next=1``, which answers with the next task) to the next task rendered
with its image decoded and painted (``lensloop:next-task``), and to the answer's arrival
(``lensloop:next-task-answer``); this script reads them with ``performance.getEntriesByName``. Two
runs, two annotators, the same page:

* the page as it is: while the annotator works it reads ``GET /api/projects/<slug>/upcoming/`` and
  downloads and decodes the images of the tasks likely to come next;
* the same page with that read blocked (by Playwright routing, here, not by anything in the page), so
  each next task's image is loaded only once the task arrives. The route intercepts the run's
  requests, which adds a little to each of them.

    .venv/bin/python bench/ui.py                 # 50 tasks each run, 300 ms "think time" per task
    .venv/bin/python bench/ui.py --tasks 20 --think-ms 0
    .venv/bin/python bench/ui.py --only-page     # just the page as it is

Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manage(env: dict, *args: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"manage.py {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def wait_for(url: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"the server at {url} did not come up")


UPCOMING = re.compile(r"/api/projects/[^/]+/upcoming/")
MEASURES = """() => ({
    ms: performance.getEntriesByName("lensloop:next-task", "measure").map((e) => e.duration),
    answerMs: performance.getEntriesByName("lensloop:next-task-answer", "measure").map((e) => e.duration),
})"""


def run(page, base: str, user: str, password: str, *, prefetch: bool, tasks: int, think_ms: int, k: int) -> dict:
    from playwright.sync_api import expect

    blocked = []
    if not prefetch:
        page.route(UPCOMING, lambda route: (blocked.append(route.request.url), route.abort()))
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", user)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    page.goto(f"{base}/projects/demo-shapes/work/")
    expect(page.locator("#work")).to_have_attribute("data-state", "ready", timeout=15_000)
    count = """() => performance.getEntriesByName("lensloop:next-task", "measure").length"""
    for i in range(tasks):
        page.wait_for_timeout(think_ms)
        for n in range(1, k + 1):
            page.keyboard.press(str(n))
        page.keyboard.press("Enter")
        deadline = time.time() + 15
        while page.evaluate(count) < i + 1:
            if time.time() > deadline:
                sys.exit(f"task {i + 1}: the next task did not appear")
            time.sleep(0.002)
    timings = page.evaluate(MEASURES)
    assert len(timings["ms"]) == len(timings["answerMs"]) == tasks
    assert prefetch or len(blocked) >= tasks, "the upcoming read was not blocked"
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=50, help="tasks per run")
    parser.add_argument("--think-ms", type=int, default=300, help="pause before ranking each task, as a person would")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--only-page", action="store_true", help="skip the run with the upcoming read blocked")
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        sys.exit("needs Debian's chromium: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="lensloop-bench-ui-") as tmp:
        env = {**os.environ, "LENSLOOP_VAR_DIR": tmp, "DJANGO_SETTINGS_MODULE": "lensloop.settings"}
        env.pop("DATABASE_URL", None)
        manage(env, "migrate", "-v0")
        manage(env, "demo", "--images", str(2 * args.tasks + 20))
        logins = json.loads((Path(tmp) / "demo-logins.json").read_text())
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "lensloop.wsgi", "--bind", f"127.0.0.1:{port}",
             "--workers", str(args.workers), "--threads", "2", "--log-level", "warning"],
            env=env, cwd=ROOT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(f"{base}/healthz")
            results = {}
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_ARGS)
                runs = (("annotator1", True),) if args.only_page else (("annotator1", True), ("annotator2", False))
                for user, prefetch in runs:
                    ctx = browser.new_context(viewport={"width": 1366, "height": 860})
                    page = ctx.new_page()
                    results[prefetch] = run(
                        page, base, user, logins[user], prefetch=prefetch, tasks=args.tasks, think_ms=args.think_ms, k=4
                    )
                    ctx.close()
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=10)

    print(f"submit → next task rendered (image decoded, painted), {args.tasks} tasks each, "
          f"think time {args.think_ms} ms, gunicorn {args.workers} workers × 2 threads, SQLite")
    print(f"{'':22}{'p50 ms':>8}{'p95 ms':>8}{'mean ms':>9}{'max ms':>8}{'answer p50':>12}")
    for prefetch, label in ((True, "the page"), (False, "upcoming read blocked")):
        if prefetch not in results:
            continue
        ms, answer = results[prefetch]["ms"], results[prefetch]["answerMs"]
        print(f"{label:22}{pct(ms, .5):8.1f}{pct(ms, .95):8.1f}{statistics.mean(ms):9.1f}{max(ms):8.1f}{pct(answer, .5):12.1f}")
    print("(answer: until the server's answer arrived; the rest is building the page and showing the image)")
    if False in results:
        ratio = pct(results[False]["ms"], .5) / pct(results[True]["ms"], .5)
        print(f"p50 blocked / the page: {ratio:.2f}×")


if __name__ == "__main__":
    main()
