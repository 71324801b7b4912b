"""The README's demo walkthrough, done for real, with screenshots: `manage.py run` (web server, rq worker,
embedded Redis, the demo project on the shipped demo base) in a fresh var/ folder; simulated annotators rank
200 tasks; the admin launches a round from the Training page in Chromium; the worker runs it; then the
pages a newcomer looks at are saved, ending with annotator1's queue serving the new policy's candidates.

    .venv/bin/python scripts/demo_walkthrough.py [--out docs/screenshots] [--port 8765]

Needs Chromium (`apt-get install -y chromium`). Nothing is built: the demo base ships in the repository; seeding
the demo samples its first tasks from it (about 15 s). The round took under 2 minutes on a quiet 2-core machine
and 20 on one busy with other training (load average 6–8); the script waits up to 40 minutes for it. Exits
non-zero, saying where it stopped, if any step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLUG = "demo-shapes"


def wait_until(predicate, timeout: float, what: str, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--rankings", type=int, default=200)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="lensloop-walkthrough-"))
    # A fresh data folder whose models/ is the usual one, so a demo model built before is reused.
    models = Path(os.environ.get("LENSLOOP_DATA_DIR", ROOT / "var" / "data")).resolve() / "models"
    models.mkdir(parents=True, exist_ok=True)
    (var / "data").mkdir()
    (var / "data" / "models").symlink_to(models)
    env = {**os.environ, "LENSLOOP_VAR_DIR": str(var), "PYTHONUNBUFFERED": "1", "LENSLOOP_DATA_DIR": str(var / "data")}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    manage = [sys.executable, str(ROOT / "manage.py")]
    base = f"http://127.0.0.1:{args.port}"
    with open(var / "run.log", "wb") as run_log:
        server = subprocess.Popen([*manage, "run", "--port", str(args.port)], env=env, cwd=ROOT, stdout=run_log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: _up(base), 600, "the web server (seeding the demo samples its first tasks first)")
            print(f"lensloop is up at {base} (var: {var})", flush=True)
            sim = subprocess.run([*manage, "simulate_annotators", "--project", SLUG, "--annotators", "4", "--noise",
                                  "0.1", "--limit", str(args.rankings)], env=env, cwd=ROOT, capture_output=True, text=True)
            if sim.returncode:
                raise SystemExit(f"simulate_annotators failed:\n{sim.stderr[-2000:]}")
            print(sim.stdout.strip(), flush=True)
            logins = json.loads((var / "demo-logins.json").read_text())
            browse(base, logins, out)
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    print(f"screenshots in {out}; the run's var/ folder: {var}")


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/accounts/login/", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def browse(base: str, logins: dict, out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_context(viewport={"width": 1366, "height": 860}).new_page()
        page.set_default_timeout(20_000)

        def login(user: str) -> None:
            page.context.clear_cookies()
            page.goto(f"{base}/accounts/login/")
            page.fill("#id_username", user)
            page.fill("#id_password", logins[user])
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/")

        login("admin")
        page.goto(f"{base}/projects/{SLUG}/training/")
        page.click("#launch-round")
        expect(page.locator(".messages")).to_contain_text("queued")
        round_id = int(page.locator(".messages").inner_text().split("#")[1].split()[0])
        print(f"round #{round_id} launched from the Training page", flush=True)

        def state() -> str | None:
            runs = _get_json(page, f"{base}/api/projects/{SLUG}/runs/")
            if runs is None:
                return None
            run = next(r for r in runs if r["id"] == round_id)
            if run["state"] in ("failed", "cancelled"):
                detail = _get_json(page, f"{base}/api/runs/{round_id}/")
                raise SystemExit(f"round #{round_id} {run['state']}: {json.dumps(detail)[-3000:]}")
            return run["state"] if run["state"] == "succeeded" else None

        # A shot while it runs (the policy step), then wait for the end.
        wait_until(lambda: _policy_running(page, base, round_id), 2400, "the policy step to start", every=1.0)
        time.sleep(8)
        page.goto(f"{base}/projects/{SLUG}/training/")
        page.screenshot(path=str(out / "training.png"), full_page=True)
        wait_until(state, 2400, f"round #{round_id} to finish")
        print(f"round #{round_id} succeeded", flush=True)
        page.goto(f"{base}/runs/{round_id}/")
        page.screenshot(path=str(out / "run.png"), full_page=True)
        page.goto(f"{base}/projects/{SLUG}/training/versions/")
        page.screenshot(path=str(out / "versions.png"), full_page=True)

        login("annotator1")
        page.goto(f"{base}/projects/{SLUG}/work/")
        expect(page.locator("#work")).to_have_attribute("data-state", "ready")
        # "ready" comes with the task's text; its image may still be on its way.
        page.wait_for_function("() => { const i = document.getElementById('task-image'); "
                               "return i && i.complete && i.naturalWidth > 0; }")
        page.screenshot(path=str(out / "ranking-new-policy.png"))
        browser.close()


def _get_json(page, url: str):
    """The JSON at url, or None when the connection was reset: gunicorn closes an idle keep-alive connection
    after 2 s, and a poll every 2 s sometimes sends on one just as it closes. The next poll tries again."""
    from playwright.sync_api import Error

    try:
        return page.request.get(url).json()
    except Error as e:
        if "ECONNRESET" not in str(e) and "socket hang up" not in str(e):
            raise
        print(f"(connection reset polling {url}; trying again)", flush=True)
        return None


def _policy_running(page, base: str, round_id: int) -> bool:
    detail = _get_json(page, f"{base}/api/runs/{round_id}/") or {}
    return any(s["kind"] in ("ppo", "grpo", "dpo", "sft") and s["state"] == "running" and (s.get("step") or 0) > 0
               for s in detail.get("steps", []))


if __name__ == "__main__":
    main()
