"""Serving benchmark: the annotation queue over HTTP on PostgreSQL under concurrent annotators.

For each N (open tasks, K=4, overlap 1): fill a fresh PostgreSQL database through the real import
path (manifest + images), serve the app with gunicorn, then run C concurrent simulated annotators,
each looping "next task → submit a ranking" over HTTP for a fixed time. Prints import rate,
annotations/s, next-task and submit latency percentiles, then checks the database: no task beyond
its overlap, every successful submit stored, pair count matching the rankings.

    .venv/bin/python bench/serve.py                       # N = 100k and 1M, C = 1, 16, 64, 60 s each
    .venv/bin/python bench/serve.py --tasks 10000 --clients 4 --seconds 5   # a quick look

Needs a PostgreSQL server (default postgres://postgres@127.0.0.1:5432, database lensloop_bench, which
is dropped and re-created unless --reuse). Figures are printed, not asserted.

    .venv/bin/python bench/serve.py --tasks 1000000 --clients 16 --seconds 30 --reuse   # serving only, same data
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def recreate_database(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def manage(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, check=check, capture_output=True, text=True
    )


def write_bundle(folder: Path, n: int, k: int) -> None:
    """n manifest rows with K candidates each over 16 distinct images (the queue is what is measured,
    not Pillow: each distinct image is still checked once)."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    for i in range(16):
        Image.new("RGB", (64, 64), (i * 15, 100, 200 - i * 10)).save(folder / "images" / f"{i}.png")
    rng = random.Random(0)
    with (folder / "manifest.jsonl").open("w") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {
                        "image": f"images/{i % 16}.png",
                        "prompt": "Describe the image.",
                        "candidates": [f"caption {j} of row {i}" for j in range(k)],
                        "priority": rng.random(),
                    }
                )
                + "\n"
            )


SETUP = """
import json, sys
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from annotation.services.projects import project_create, member_set
n_users = int(sys.argv[1])
User = get_user_model()
project = project_create(name="Bench", slug="bench", candidates_per_task=4, overlap=1, lease_minutes=30)
tokens = []
for i in range(n_users):
    user = User.objects.create(username=f"bench{i}")
    member_set(project=project, user=user, role="annotator")
    tokens.append(Token.objects.create(user=user).key)
print(json.dumps(tokens))
"""

CHECK = """
import json
from django.db.models import Count, F
from annotation.models import PreferencePair, Ranking, RankingTask
ids = set(json.load(open(__import__("sys").argv[1])))
stored = set(Ranking.objects.filter(pk__in=ids).values_list("pk", flat=True))
over = RankingTask.objects.annotate(n=Count("rankings")).filter(n__gt=F("required_annotations")).count()
over_counter = RankingTask.objects.filter(completed_count__gt=F("required_annotations")).count()
rankings = Ranking.objects.count()
print(json.dumps({
    "submits_ok": len(ids), "submits_missing": len(ids - stored), "tasks_over_overlap": over + over_counter,
    "rankings": rankings, "pairs": PreferencePair.objects.count(), "pairs_expected": 6 * rankings,
}))
"""


class Annotator(threading.Thread):
    def __init__(self, host, port, token, deadline, start_barrier, one_call=False):
        super().__init__(daemon=True)
        self.one_call = one_call
        self.host, self.port, self.token, self.deadline, self.start_barrier = host, port, token, deadline, start_barrier
        self.next_ms: list[float] = []
        self.submit_ms: list[float] = []
        self.ranking_ids: list[int] = []
        self.errors: list[str] = []

    def request(self, conn, method, path, body=None):
        headers = {"Authorization": "Token " + self.token, "Content-Type": "application/json"}
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()

    def run(self):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        self.start_barrier.wait()
        task = None
        while time.monotonic() < self.deadline:
            if task is None:
                t0 = time.perf_counter()
                status, body = self.request(conn, "POST", "/api/projects/bench/next/")
                self.next_ms.append((time.perf_counter() - t0) * 1000)
                if status == 204:
                    break
                if status != 200:
                    self.errors.append(f"next {status} {body[:200]!r}")
                    continue
                task = json.loads(body)
            ids = [c["id"] for c in task["candidates"]]
            random.shuffle(ids)
            t0 = time.perf_counter()
            status, body = self.request(
                conn, "POST", f"/api/tasks/{task['task_id']}/submit/" + ("?next=1" if self.one_call else ""),
                {"ordering": [[i] for i in ids], "client_uuid": str(uuid.uuid4()), "time_spent_ms": 1000},
            )
            self.submit_ms.append((time.perf_counter() - t0) * 1000)
            task = None
            if status == 201:
                answer = json.loads(body)
                self.ranking_ids.append(answer["id"])
                if self.one_call:
                    task = answer["next_task"]
                    if task is None:
                        break
            else:
                self.errors.append(f"submit {status} {body[:200]!r}")
        conn.close()


def wait_for(host: str, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("gunicorn did not come up")


class Autoanalyze(threading.Thread):
    """Stands in for autovacuum's ANALYZE where the server runs with autovacuum off (this development
    machine's does). Without it the tables that start empty (rankings, pairs, assignments) keep the
    plans PostgreSQL cached while they were empty, foreign-key checks included: sequential scans
    that grow with every ranking. Production servers run autovacuum (the default), which does this."""

    def __init__(self, url: str, every: float = 5.0):
        super().__init__(daemon=True)
        self.url, self.every, self.stop = url, every, threading.Event()

    def run(self):
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.wait(self.every):
                conn.execute("ANALYZE annotation_ranking, annotation_preferencepair, annotation_assignment")


def autovacuum_is_on(url: str) -> bool:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SHOW autovacuum").fetchone()[0] == "on"


def run_load(env, tokens, clients, seconds, port, one_call=False):
    host = "127.0.0.1"
    start = threading.Barrier(clients + 1)
    deadline = time.monotonic() + seconds + 1
    threads = [Annotator(host, port, tokens[i], deadline, start, one_call) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    next_ms = [x for t in threads for x in t.next_ms]
    submit_ms = [x for t in threads for x in t.submit_ms]
    ids = [x for t in threads for x in t.ranking_ids]
    errors = [x for t in threads for x in t.errors]
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "annotations": len(ids),
        "annotations_per_s": round(len(ids) / elapsed, 1),
        "next_p50_ms": round(pct(next_ms, 0.50), 1),
        "next_p95_ms": round(pct(next_ms, 0.95), 1),
        "next_p99_ms": round(pct(next_ms, 0.99), 1),
        "submit_p50_ms": round(pct(submit_ms, 0.50), 1),
        "submit_p95_ms": round(pct(submit_ms, 0.95), 1),
        "submit_p99_ms": round(pct(submit_ms, 0.99), 1),
        "errors": len(errors),
        "first_errors": errors[:3],
    }, ids


TOKENS = """
import json
from rest_framework.authtoken.models import Token
print(json.dumps(list(Token.objects.filter(user__username__startswith="bench").order_by("user_id")
                      .values_list("key", flat=True))))
"""


def bench_n(args, n: int) -> dict:
    if args.reuse:
        # Serve against the database a previous run filled (its open tasks are what is left of N).
        url = f"{args.server}/{args.database}"
        env = {**os.environ, "DATABASE_URL": url, "DB_CONN_MAX_AGE": "600", "LOG_LEVEL": "WARNING"}
        tokens = json.loads(manage(env, "shell", "-c", TOKENS).stdout.strip().splitlines()[-1])
        import_s = import_only_s = float("nan")
        print(f"  reusing {args.database} (no import)", flush=True)
    else:
        url = recreate_database(args.server, args.database)
        env = {**os.environ, "DATABASE_URL": url, "DB_CONN_MAX_AGE": "600", "LOG_LEVEL": "WARNING"}
        manage(env, "migrate", "-v0")
        setup = SETUP.replace("sys.argv[1]", str(max(args.clients)))
        tokens = json.loads(manage(env, "shell", "-c", setup).stdout.strip().splitlines()[-1])
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_bundle(Path(tmp), n, 4)
            gen_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = manage(env, "import", "bench", tmp)
            import_s = time.perf_counter() - t0
        import_only_s = float(out.stdout.strip().rsplit(" in ", 1)[1].split()[0])
        print(f"  N={n:,}: manifest written in {gen_s:.1f}s; `manage.py import` {import_s:.1f}s = {n / import_s:,.0f} tasks/s, "
              f"the import itself (without Django's start-up) {import_only_s:.1f}s = {n / import_only_s:,.0f} tasks/s "
              f"({out.stdout.strip()})", flush=True)
    manage(env, "shell", "-c", "from django.db import connection; connection.cursor().execute('VACUUM ANALYZE')")
    port = args.port
    gunicorn = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "lensloop.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", str(args.web_workers),
         "--threads", str(args.threads), "--worker-class", "gthread", "--log-level", "warning", "--backlog", "2048"],
        env=env, cwd=ROOT,
    )
    results = []
    all_ids: list[int] = []
    analyze = None
    if not autovacuum_is_on(url):
        print("    (autovacuum is off on this server: the benchmark runs ANALYZE every 5 s in its place)", flush=True)
        analyze = Autoanalyze(url)
        analyze.start()
    try:
        wait_for("127.0.0.1", port)
        for c in args.clients:
            result, ids = run_load(env, tokens, c, args.seconds, port, args.one_call)
            all_ids += ids
            print("   ", json.dumps(result), flush=True)
            results.append(result)
    finally:
        if analyze is not None:
            analyze.stop.set()
        gunicorn.terminate()
        gunicorn.wait(timeout=30)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(all_ids, fh)
    check = json.loads(manage(env, "shell", "-c", CHECK.replace('__import__("sys").argv[1]', repr(fh.name))).stdout.strip().splitlines()[-1])
    os.unlink(fh.name)
    print("    checks:", json.dumps(check), flush=True)
    def rate(seconds: float) -> int | None:
        return None if math.isnan(seconds) else round(n / seconds)  # NaN: no import (--reuse)

    return {"tasks": n, "import_s": None if math.isnan(import_s) else round(import_s, 1),
            "import_tasks_per_s": rate(import_s), "import_only_tasks_per_s": rate(import_only_s), "runs": results,
            "checks": check}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--server", default=os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--database", default="lensloop_bench")
    parser.add_argument("--port", type=int, default=8911)
    parser.add_argument("--web-workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--one-call", action="store_true",
                        help="submit with ?next=1, so each annotation is one request (as the ranking page does); "
                             "next-task latency is then that of the first lease only, submit latency covers both")
    parser.add_argument("--reuse", action="store_true",
                        help="serve against --database as a previous run left it: no re-creation, no import "
                             "(to compare two versions of the app on the same data)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    loop = "submit?next=1 (one request per annotation)" if args.one_call else "next -> submit (two requests)"
    print(f"lensloop serve benchmark: {os.cpu_count()} cores, gunicorn {args.web_workers}×{args.threads} threads, loop {loop}",
          flush=True)
    results = [bench_n(args, n) for n in args.tasks]
    if len(results) >= 2:
        small, large = results[0], results[-1]
        for a, b in zip(small["runs"], large["runs"], strict=True):
            ratio = b["next_p95_ms"] / a["next_p95_ms"] if a["next_p95_ms"] else float("nan")
            print(f"  C={a['clients']}: next-task p95 at {large['tasks']:,} / at {small['tasks']:,} = {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
