"""Faults under load: PostgreSQL, Redis, the rq worker and a web worker killed or restarted while
annotators rank and rounds train (issue 12).

The stack is the production one, on this machine: gunicorn (several workers) on a PostgreSQL database
the bench creates and drops (`lensloop_faults`), a Redis server of the bench's own on a spare port (so
it can be restarted without touching the machine's), and a real rq worker (`manage.py worker`) that the
bench supervises the way systemd would: when it dies, a new one starts a second later.

N simulated annotators behave like the ranking page (static/js/work.js): next task, think, submit with
`?next=1`; on a network error or a 5xx they try again with the page's backoff (0.5, 1, 2, 4, 8, 15,
30 s, ±20 %) and the *same* client_uuid; on a 409 they move on. An admin launches rounds through the API.
While they work the bench injects, in turn:

  pg              PostgreSQL restarted (pg_ctlcluster ... restart) while a round trains
  web             a gunicorn worker SIGKILLed mid-request, while it streams an export to the admin (and serves
                  whatever annotators' requests it holds); the master starts another
  worker-reward   the rq worker SIGKILLed while a round trains its reward model
  worker-generate the rq worker SIGKILLed while a round generates candidates
  redis           the Redis server restarted while a round runs (no persistence: every job in it is lost)

A round whose worker was killed must end failed with a clear message; the bench then resumes it through
the API, as an admin would from the Training page. Figures: rankings lost (every submit an annotator
was told was stored, or was still retrying, must be in the database: must be 0), tasks over their
overlap (0), duplicate rankings per (task, annotator) (0), seconds until the app answered again after
each fault, requests/s and errors in each window, and what each round did.

The annotators work for --seconds, or until the last fault's round has ended if that is later; then
they finish the submits in flight. The JSON goes to docs/benchmarks/faults.json unless --json says.

    .venv/bin/python bench/faults.py                     # 64 annotators, 600 s, every fault
    .venv/bin/python bench/faults.py --annotators 16 --tasks 3000 --seconds 60 --faults web,redis \
        --json /tmp/f.json                               # a quick look (no PostgreSQL restart)

Needs PostgreSQL on 127.0.0.1:5432 with trust auth (user postgres or root) that this user may restart,
and `redis-server` on the PATH. PostgreSQL is started again at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RETRY_DELAYS_S = (0.5, 1, 2, 4, 8, 15, 30)  # the ranking page's (static/js/work.js)
# The default order lets one round meet three faults in turn (PostgreSQL during its reward model, Redis
# during its policy step, the worker during its generation), and a second one the last.
FAULTS = ("pg", "web", "redis", "worker-generate", "worker-reward")
SLUG = "faults"

T0 = time.monotonic()


def clock() -> float:
    """Seconds since the annotators started."""
    return time.monotonic() - T0


def say(message: str) -> None:
    print(f"[{clock():7.1f}s] {message}", flush=True)


# --- the stack -------------------------------------------------------------------------------------------


def pg_version() -> str:
    return sorted(os.listdir("/etc/postgresql"))[-1]


def pg_ctl(action: str) -> subprocess.CompletedProcess:
    return subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", pg_version(), "main", action],
                          capture_output=True, text=True, timeout=180)


def pg_is_up(server: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(server + "/postgres", connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def pg_server() -> str:
    """postgres://USER@127.0.0.1:5432 for the first of postgres, root that connects."""
    import psycopg

    for user in ("postgres", "root"):
        url = f"postgres://{user}@127.0.0.1:5432"
        try:
            psycopg.connect(url + "/postgres", connect_timeout=3).close()
            return url
        except psycopg.Error:
            continue
    raise SystemExit("no PostgreSQL on 127.0.0.1:5432 that user postgres or root may use without a password")


def recreate_database(server: str, name: str, drop_only: bool = False) -> str:
    import psycopg

    with psycopg.connect(server + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A redis-server of the bench's own, without persistence: a restart loses every job in it."""

    def __init__(self, work: Path, persist: bool):
        self.port, self.dir, self.persist = free_port(), work / "redis", persist
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.log = (work / "redis.log").open("ab")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        save = ["--save", "60 1", "--dbfilename", "dump.rdb"] if self.persist else ["--save", ""]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "no", *save], stdout=self.log, stderr=subprocess.STDOUT)

    def ping(self) -> bool:
        import redis

        try:
            return redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1).ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: SHUTDOWN (saving first only with --redis-persist)
            self.proc.wait(timeout=30)


class Supervisor(threading.Thread):
    """Keeps one `manage.py worker` running, as systemd's Restart=always would (one second later)."""

    def __init__(self, env: dict, log: Path):
        super().__init__(daemon=True)
        self.env, self.log = env, log.open("ab")
        self.proc: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.starts: list[float] = []
        self.exits: list[dict] = []  # exits it did not cause itself (a worker that quit on its own)
        self.killed_pids: set[int] = set()

    def spawn(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "worker"], env=self.env, cwd=ROOT,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.starts.append(round(clock(), 1))

    def run(self) -> None:
        self.spawn()
        while not self.stopping.is_set():
            code = self.proc.poll()
            if code is not None:
                if self.proc.pid not in self.killed_pids:
                    self.exits.append({"at_s": round(clock(), 1), "exit_code": code})
                    say(f"the rq worker exited on its own (code {code}); starting another")
                time.sleep(1.0)
                if not self.stopping.is_set():
                    self.spawn()
            time.sleep(0.2)

    def kill(self) -> int:
        pid = self.proc.pid
        self.killed_pids.add(pid)
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        self.stopping.set()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def manage(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


SETUP = """
import json, random
from pathlib import Path
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from annotation.services.imports import import_bundle
from annotation.services.projects import member_set, project_create
from rlhf.engine.demo import DEMO_POLICY_LORA, world
from rlhf.services import loop_settings_set
n_users, n_tasks, n_scenes, overlap, bundle, batch = ARGS
bundle = Path(bundle)
world.write_demo_manifest(bundle, n=n_scenes, seed=12, k=4, eval_fraction=0.1)
rows = (bundle / "manifest.jsonl").read_text().splitlines()
train = [r for r in rows if json.loads(r)["split"] == "train"]
# More tasks than scenes: train rows again (each one a prompt and task of its own), sharing the images.
rows += [train[i % len(train)] for i in range(n_tasks - len(rows))]
(bundle / "manifest.jsonl").write_text("\\n".join(rows) + "\\n")
User = get_user_model()
admin = User.objects.create(username="faults-admin", is_staff=True)
project = project_create(name="Faults", slug="SLUG", candidates_per_task=4, overlap=overlap, created_by=admin)
# The demo project's engine settings (rlhf/management/commands/demo.py), with smaller policy batches.
loop_settings_set(project=project, round_params={**DEMO_POLICY_LORA, "policy_batch_size": batch})
report = import_bundle(project=project, path=bundle, origin="bench")
tokens = []
for i in range(n_users):
    user = User.objects.create(username=f"annotator{i}")
    member_set(project=project, user=user, role="annotator")
    tokens.append(Token.objects.create(user=user).key)
print(json.dumps({"admin": Token.objects.create(user=admin).key, "annotators": tokens, "tasks": report.tasks}))
"""

# The tests' tiny demo model (rlhf.engine.demo.TINY_BUILD), prebuilt in tests/assets/tiny-demo: a round takes
# about a minute.
BUILD = """
import sys
from pathlib import Path
from rlhf.engine.config import BuildDemoConfig
from rlhf.engine.demo import TINY_BUILD
from rlhf.engine.demo.build import ensure_demo_model
print(ensure_demo_model(BuildDemoConfig(**TINY_BUILD), Path(sys.argv[1]), shipped=Path("tests/assets/tiny-demo")).resolve())
"""


# --- HTTP ------------------------------------------------------------------------------------------------


class Log:
    """Every request the annotators made: (start, end, what, status or None for a network error)."""

    def __init__(self):
        self.rows: list[tuple[float, float, str, int | None]] = []
        self.errors: list[str] = []  # first bodies of 5xx answers and network errors, for the report

    def add(self, t0: float, t1: float, what: str, status: int | None, detail: str = "") -> None:
        self.rows.append((t0, t1, what, status))  # list.append is atomic: no lock needed
        if (status is None or status >= 500) and len(self.errors) < 40:
            self.errors.append(f"{t1:.1f}s {what} {status or 'network'}: {detail[:160]}")


def http_call(port: int, token: str, method: str, path: str, body=None, timeout: float = 60):
    """One request on a fresh connection (no keep-alive: a socket the server closed while the annotator
    was thinking would read as a network error). Returns (status, parsed body) or (None, error text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Authorization": "Token " + token, "Content-Type": "application/json", "Connection": "close"}
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw[:300].decode("utf-8", "replace")
        return response.status, data
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


class Schedule:
    """When the annotators stop taking tasks (`end`), and stop retrying a submit in flight (`drain_end`):
    open until the faults are done, then set by the main thread."""

    end = float("inf")
    drain_end = float("inf")


class Annotator(threading.Thread):
    """The ranking page's loop over the REST API, with its retry rules."""

    def __init__(self, port, token, log: Log, think, seed):
        super().__init__(daemon=True)
        self.port, self.token, self.log, self.think = port, token, log, think
        self.rng = random.Random(seed)
        self.acked: dict[str, int] = {}  # client_uuid -> ranking id: the server said it is stored
        self.pending: dict[str, int] = {}  # client_uuid -> task id: sent, no answer yet (still retrying)
        self.rejected: dict[str, str] = {}  # client_uuid -> 409 code: told it was not stored, moved on
        self.repeats = 0  # 200 "repeat": an earlier try had been stored but its answer was lost
        self.refused: list[str] = []  # other 4xx (a bug in the bench or the app)

    def until_answered(self, method, path, body, what):
        """Try until a status below 500 arrives; None when the drain deadline passed first."""
        for attempt in range(1, 10_000):
            t0 = clock()
            status, data = http_call(self.port, self.token, method, path, body)
            self.log.add(t0, clock(), what, status, "" if status and status < 500 else str(data))
            if status is not None and status < 500:
                return status, data
            base = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S)) - 1]
            wait = base * (0.8 + 0.4 * self.rng.random())
            if clock() + wait > Schedule.drain_end:
                return None
            time.sleep(wait)
        return None

    def run(self):
        task = None
        while clock() < Schedule.end:
            if task is None:
                answer = self.until_answered("POST", f"/api/projects/{SLUG}/next/", None, "next")
                if answer is None:
                    return
                status, data = answer
                if status != 200:  # 204: nothing for me right now
                    time.sleep(2.0)
                    continue
                task = data
            time.sleep(self.think * (0.5 + self.rng.random()))
            if clock() >= Schedule.end:
                return  # the lease runs out; nothing was sent
            ids = [c["id"] for c in task["candidates"]]
            self.rng.shuffle(ids)
            client_uuid = str(uuid.uuid4())
            body = {"ordering": [[i] for i in ids], "client_uuid": client_uuid, "time_spent_ms": 2000}
            self.pending[client_uuid] = task["task_id"]
            answer = self.until_answered("POST", f"/api/tasks/{task['task_id']}/submit/?next=1", body, "submit")
            if answer is None:
                return  # still pending: it must be in the database anyway if it was ever stored
            status, data = answer
            del self.pending[client_uuid]
            task = None
            if status in (200, 201):
                self.acked[client_uuid] = data["id"]
                self.repeats += status == 200
                task = data.get("next_task")
            elif status == 409:
                self.rejected[client_uuid] = (data or {}).get("error", "409")
            else:
                self.refused.append(f"{status} {str(data)[:200]}")


class Admin:
    """The project admin's side: rounds through the API (what the Training page calls)."""

    def __init__(self, port, token):
        self.port, self.token = port, token

    def call(self, method, path, body=None):
        for attempt in range(60):  # the admin's requests go through the same faults: try again
            status, data = http_call(self.port, self.token, method, path, body)
            if status is not None and status < 500:
                return status, data
            time.sleep(min(2.0, 0.2 * (attempt + 1)))
        raise RuntimeError(f"{method} {path}: no answer ({status} {data})")

    def run(self, run_id: int) -> dict:
        return self.call("GET", f"/api/runs/{run_id}/")[1]


# --- the faults ------------------------------------------------------------------------------------------


class Round:
    """One round and what happened to it."""

    def __init__(self, admin: Admin, params: dict):
        status, data = admin.call("POST", f"/api/projects/{SLUG}/rounds/", params)
        if status != 201:
            raise RuntimeError(f"round not started: {status} {data}")
        self.admin, self.id = admin, data["id"]
        self.events: list[str] = []
        self.resumes = 0
        self.stuck = False  # a fault left it queued or running with nothing moving
        self.note(f"started ({', '.join(f'{k}={v}' for k, v in params.items())})")

    def note(self, text: str) -> None:
        self.events.append(f"{clock():.0f}s {text}")
        say(f"round {self.id}: {text}")

    def get(self) -> dict:
        return self.admin.run(self.id)

    def step(self, run: dict, kinds) -> dict | None:
        return next((s for s in run["steps"] if s["kind"] in kinds), None)

    def wait_step(self, kinds, timeout: float, trained: bool = False) -> dict | None:
        """Wait until a step of these kinds is running (and, with `trained`, has logged a training step
        or run for 20 s); None if the round ended, or the step was done, or the time ran out first."""
        deadline, seen = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            run = self.get()
            step = self.step(run, kinds)
            if step is None or run["state"] not in ("queued", "running") or step["state"] not in ("queued", "running"):
                return None
            if step["state"] == "running":
                seen = seen or time.monotonic()
                if not trained or step["step"] > 0 or time.monotonic() - seen > 20:
                    return step
            time.sleep(0.5)
        return None

    def follow(self, step: dict, timeout: float) -> dict:
        """After a fault during `step`: wait until the round went past it (the next step left the queue)
        or ended; what happened, with the failure message if it failed."""
        t = time.monotonic()
        while True:
            run = self.get()
            steps = {s["position"]: s for s in run["steps"]}
            this = steps[step["position"]]
            after = steps.get(step["position"] + 1)
            if run["state"] not in ("queued", "running"):
                break
            if this["state"] == "succeeded" and (after is None or after["state"] != "queued"):
                break
            if time.monotonic() - t > timeout:
                self.note(f"stuck: still {run['state']}, step {this['kind']} {this['state']}"
                          + (f", step {after['kind']} {after['state']}" if after else "")
                          + f", {timeout:.0f} s after the fault")
                self.stuck = True
                return {"outcome": "stuck", "step_state": this["state"],
                        "next_step_state": after["state"] if after else None}
            time.sleep(1.0)
        seconds = round(time.monotonic() - t, 1)
        if run["state"] == "failed":
            self.note(f"failed {seconds} s after the fault: {run['error'][:300]}")
            return {"outcome": "failed", "after_s": seconds, "message": run["error"][:400]}
        # How long the next step waited once this one had ended (rq hands it on in milliseconds; a job the
        # queue lost waits for the housekeeping).
        gap = None
        if after and after.get("started_at") and this.get("finished_at"):
            gap = round((datetime.fromisoformat(after["started_at"].replace("Z", "+00:00"))
                         - datetime.fromisoformat(this["finished_at"].replace("Z", "+00:00"))).total_seconds(), 1)
        self.note(f"went on by itself: step {this['kind']} {this['state']} and step {after['kind'] if after else '-'} "
                  f"started {gap} s after it ended ({seconds} s after the fault), round {run['state']}")
        return {"outcome": "went on", "after_s": seconds, "step_state": this["state"],
                "next_step_started_after_s": gap, "round_state": run["state"]}

    def resume(self) -> None:
        status, data = self.admin.call("POST", f"/api/runs/{self.id}/resume/")
        self.resumes += 1
        self.note(f"resumed through the API: {status} {data.get('state') if isinstance(data, dict) else data}")

    def finish(self, timeout: float) -> str:
        """Wait for the end; a failed round is resumed (a few times at most) as an admin would, and a stuck
        one cancelled first."""
        if self.stuck and self.get()["state"] in ("queued", "running"):
            status, _ = self.admin.call("POST", f"/api/runs/{self.id}/cancel/")
            self.note(f"stuck: cancelled through the API ({status}), to resume it")
            self.resume()
            self.stuck = False
        deadline = time.monotonic() + timeout
        while True:
            run = self.get()
            if run["state"] in ("failed", "cancelled") and self.resumes < 4:
                self.resume()
            elif run["state"] not in ("queued", "running") or time.monotonic() > deadline:
                return run["state"]
            time.sleep(2.0)

    def summary(self) -> dict:
        run = self.get()
        return {"id": self.id, "state": run["state"], "resumes": self.resumes, "error": run["error"][:400],
                "steps": {s["kind"]: s["state"] for s in run["steps"]}, "events": self.events}


# Which step each fault waits for, and whether it waits until that step has trained a little.
FAULT_STEPS = {"pg": (("reward",), True), "redis": (("ppo", "grpo", "evaluate"), False),
               "worker-reward": (("reward",), True), "worker-generate": (("generate",), False)}


class Bench:
    def __init__(self, args, port, tokens, supervisor: Supervisor, redis: Redis, gunicorn, log: Log):
        self.args, self.port = args, port
        self.admin = Admin(port, tokens["admin"])
        self.supervisor, self.redis, self.gunicorn, self.log = supervisor, redis, gunicorn, log
        self.faults: list[dict] = []
        self.rounds: list[Round] = []
        self.annotators: list[Annotator] = []

    def round_params(self) -> dict:
        # Reward epochs sized so that a round trains on about --round-pairs pairs however many exist by
        # now (the API's floor is 0.1 epoch): a round then takes a minute or two on 2 busy cores.
        pairs = 6 * sum(len(a.acked) for a in self.annotators)
        epochs = max(0.1, min(2.0, self.args.round_pairs / max(1, pairs)))
        return {"algorithm": "ppo", "policy_steps": 2, "reward_epochs": round(epochs, 3), "generate_prompts": 32,
                "lora_r": 4}

    def round_for(self, kinds) -> Round:
        """The current round if its step of these kinds is still to come; else a new round once the
        current one has ended (resumed first if a fault left it failed)."""
        if self.rounds:
            current = self.rounds[-1]
            run = current.get()
            step = current.step(run, kinds)
            if run["state"] in ("queued", "running", "failed") and step and step["state"] in ("queued", "running"):
                if run["state"] == "failed":
                    current.resume()
                return current
            current.note(f"ended {current.finish(self.args.round_timeout)}")
        self.rounds.append(Round(self.admin, self.round_params()))
        return self.rounds[-1]

    def inject(self, name: str) -> None:
        if name == "web":
            workers = gunicorn_workers(self.gunicorn.pid)
            conn, export, victim = export_in_flight(self.port, self.admin.token)
            at = clock()
            os.kill(victim, signal.SIGKILL)
            try:
                export.read()
                cut = "the export arrived whole (it was sent before the kill)"
            except (OSError, http.client.HTTPException) as exc:
                cut = f"the export in flight was cut: {type(exc).__name__}"
            conn.close()
            record = self.fault("web", at=at, during="an export being streamed", pid=victim,
                                workers_before=len(workers), admin_saw=cut)
            time.sleep(5)
            record["workers_after_5s"] = len(gunicorn_workers(self.gunicorn.pid))
            return
        kinds, trained = FAULT_STEPS[name]
        rnd = self.round_for(kinds)
        step = rnd.wait_step(kinds, timeout=self.args.round_timeout, trained=trained)
        if step is None:
            self.fault(name, round=rnd.id, skipped=f"no {'/'.join(kinds)} step ran")
            return
        if name.startswith("worker"):
            time.sleep(2)  # well inside the step
            at = clock()
            record = self.fault(name, at=at, round=rnd.id, during=step["kind"], worker_pid=self.supervisor.kill())
            rnd.note(f"rq worker SIGKILLed during {step['kind']}; the supervisor starts another")
        elif name == "pg":
            record = self.fault(name, round=rnd.id, during=step["kind"])
            t = time.monotonic()
            done = pg_ctl("restart")
            record["restart_s"] = round(time.monotonic() - t, 1)
            if done.returncode:
                record["pg_ctl"] = (done.stdout + done.stderr).strip()[-300:]
            rnd.note(f"PostgreSQL restarted during {step['kind']} (pg_ctlcluster took {record['restart_s']} s)")
        else:
            record = self.fault(name, round=rnd.id, during=step["kind"], persistence=self.args.redis_persist)
            t = time.monotonic()
            self.redis.stop()
            self.redis.start()
            while not self.redis.ping():
                time.sleep(0.05)
            record["down_s"] = round(time.monotonic() - t, 2)
            rnd.note(f"Redis restarted during {step['kind']} (down {record['down_s']} s, "
                     f"{'jobs kept' if self.args.redis_persist else 'every job in it lost'})")
        record["round"] = {"id": rnd.id, **rnd.follow(step, timeout=self.args.stuck_after)}

    def fault(self, name: str, at: float | None = None, **info) -> dict:
        record = {"fault": name, "at_s": round(clock() if at is None else at, 3), **info}
        self.faults.append(record)
        say(f"FAULT {name} {info}")
        return record


# What the processes wrote about the faults (their logs), counted.
LOG_MARKS = {
    "gunicorn.log": {"server_errors_logged": "Internal Server Error", "answered_503": "answered 503"},
    "worker.log": {
        "steps_enqueued_again": "enqueuing it again",
        "engine_went_on_without_database": "the engine goes on",
        "redis_lost_while_recording_a_job": "Redis unreachable while recording job",
        "worker_waited_for_redis": "could not connect to Redis",
        "worker_quit_on_an_exception": "found an unhandled exception, quitting",
    },
}


def log_marks(work: Path) -> dict:
    out = {}
    for name, marks in LOG_MARKS.items():
        text = (work / name).read_text(errors="replace") if (work / name).exists() else ""
        out.update({key: text.count(mark) for key, mark in marks.items()})
    return out


def export_in_flight(port: int, token: str):
    """Start an export (a zip of every pair, streamed: seconds long) and read only its first bytes, so
    that it is surely in progress on one web worker. Returns (connection, response, that worker's pid)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", f"/api/projects/{SLUG}/export/?format=records", headers={"Authorization": "Token " + token})
    response = conn.getresponse()
    response.read(4096)
    mine = conn.sock.getsockname()[1]
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} and dport = :{mine} )"],
                         capture_output=True, text=True).stdout
    return conn, response, int(re.search(r"pid=(\d+)", out).group(1))


def gunicorn_workers(master: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


# --- figures ---------------------------------------------------------------------------------------------


def window_stats(log: Log, start: float, end: float) -> dict:
    """Requests that ended in [start, end): rate, errors, and when the app answered again after the last
    failure (a 5xx, 503 included, or a network error) of the window."""
    rows = [r for r in log.rows if start <= r[1] < end]
    ok = [r for r in rows if r[3] is not None and r[3] < 500]
    failed = [r for r in rows if r[3] is None or r[3] >= 500]
    answered_again = None
    if failed:
        last = max(r[1] for r in failed)
        after = [r[1] for r in ok if r[0] >= last]
        answered_again = round(min(after) - start, 1) if after else None
    ends = sorted(r[1] for r in ok)
    gaps = [b - a for a, b in zip([start, *ends], [*ends, end], strict=True)]
    return {
        "seconds": round(end - start, 1),
        "requests_per_s": round(len(rows) / max(1e-9, end - start), 1),
        "ok": len(ok),
        "status_503": sum(1 for r in failed if r[3] == 503),  # "unavailable, try again": expected while down
        "status_5xx_other": sum(1 for r in failed if r[3] is not None and r[3] != 503),  # a bug
        "network_errors": sum(1 for r in failed if r[3] is None),
        "status_409": sum(1 for r in rows if r[3] == 409),
        "answered_again_after_s": answered_again if failed else 0.0,
        "longest_gap_without_an_answer_s": round(max(gaps), 1) if gaps else None,
    }


CHECK_SQL = {
    "rankings": "SELECT count(*) FROM annotation_ranking",
    "pairs": "SELECT count(*) FROM annotation_preferencepair",
    "tasks_over_overlap": """
        SELECT count(*) FROM annotation_rankingtask t
        WHERE t.completed_count > t.required_annotations
           OR (SELECT count(*) FROM annotation_ranking r WHERE r.task_id = t.id)
              + (SELECT count(*) FROM annotation_assignment a WHERE a.task_id = t.id AND a.state = 'active')
              > t.required_annotations""",
    "duplicate_rankings": """
        SELECT count(*) FROM (SELECT task_id, annotator_id FROM annotation_ranking
                              GROUP BY task_id, annotator_id HAVING count(*) > 1) d""",
    "counters_off": """
        SELECT count(*) FROM annotation_rankingtask t
        WHERE t.completed_count <> (SELECT count(*) FROM annotation_ranking r WHERE r.task_id = t.id)
           OR t.leased_count <> (SELECT count(*) FROM annotation_assignment a
                                 WHERE a.task_id = t.id AND a.state = 'active')""",
}


def check_database(url: str, annotators: list[Annotator]) -> dict:
    import psycopg

    acked = {u for a in annotators for u in a.acked}
    pending = {u for a in annotators for u in a.pending}
    rejected = {u for a in annotators for u in a.rejected}
    with psycopg.connect(url) as conn:
        out = {name: conn.execute(sql).fetchone()[0] for name, sql in CHECK_SQL.items()}
        stored = {str(u) for (u,) in conn.execute("SELECT client_uuid FROM annotation_ranking")}
    out.update({
        "submits_acknowledged": len(acked),
        "submits_still_retrying_at_the_end": len(pending),
        "rankings_lost": len(acked - stored) + len(pending - stored),
        "rejected_409_but_stored": len(rejected & stored),
        "pairs_expected": 6 * out["rankings"],
    })
    return out


# --- main ------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotators", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=600, help="how long the annotators work (longer if a fault "
                    "is still being followed)")
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"in this order, from: {','.join(FAULTS)}")
    ap.add_argument("--think", type=float, default=2.0, help="mean seconds an annotator looks at a task")
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--scenes", type=int, default=500, help="distinct images (the tasks share them)")
    ap.add_argument("--overlap", type=int, default=2)
    ap.add_argument("--round-pairs", type=int, default=3000, help="pairs a round's reward model trains on")
    ap.add_argument("--round-timeout", type=float, default=600, help="longest wait for a round's step or end")
    ap.add_argument("--stuck-after", type=float, default=300,
                    help="a round that has not moved on this long after a fault counts as stuck")
    ap.add_argument("--warmup", type=float, default=30, help="seconds of plain load before the first fault")
    ap.add_argument("--window", type=float, default=30, help="seconds after a fault its figures cover")
    ap.add_argument("--drain", type=float, default=90, help="after --seconds: time to finish submits in flight")
    ap.add_argument("--web-workers", type=int, default=3)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--redis-persist", action="store_true", help="Redis saves on shutdown and reloads (jobs kept)")
    ap.add_argument("--server", default=os.environ.get("BENCH_PG", ""), help="postgres://user@host:port")
    ap.add_argument("--database", default="lensloop_faults")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "var" / "bench-faults",
                    help="LENSLOOP_DATA_DIR (the demo build is kept here between runs; runs are wiped)")
    ap.add_argument("--keep", action="store_true", help="keep the database and the logs")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "faults.json")
    args = ap.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        ap.error(f"unknown faults {sorted(unknown)}; choose from {FAULTS}")

    server = args.server or pg_server()
    data = args.data_dir.resolve()
    work = data / "work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(data / "runs", ignore_errors=True)
    work.mkdir(parents=True)
    print(f"lensloop faults benchmark: {os.cpu_count()} cores, load {os.getloadavg()}, {args.annotators} annotators, "
          f"{args.seconds:.0f} s, faults {faults}; logs in {work}", flush=True)

    t = time.monotonic()
    model = subprocess.run([sys.executable, "-c", BUILD, str(data)], cwd=ROOT,
                           env={**os.environ, "LENSLOOP_DATA_DIR": str(data)}, capture_output=True, text=True)
    if model.returncode:
        raise SystemExit(f"demo build failed: {model.stderr[-3000:]}")
    model_path = model.stdout.strip().splitlines()[-1]
    print(f"  demo model {model_path} ({time.monotonic() - t:.0f} s)", flush=True)

    url = recreate_database(server, args.database)
    redis = Redis(work, args.redis_persist)
    redis.start()
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis.url, "LENSLOOP_DATA_DIR": str(data),
           "LENSLOOP_VAR_DIR": str(work / "var"), "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    t = time.monotonic()
    manage(env, "migrate", "-v0")
    setup_args = (args.annotators, args.tasks, args.scenes, args.overlap, str(work / "bundle"), 16)
    tokens = json.loads(manage(env, "shell", "-c", SETUP.replace("ARGS", repr(setup_args)).replace("SLUG", SLUG))
                        .strip().splitlines()[-1])
    print(f"  database {url}: {tokens['tasks']} tasks at overlap {args.overlap} ({time.monotonic() - t:.0f} s)",
          flush=True)

    port = free_port()
    gunicorn = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "lensloop.wsgi", "--bind", f"127.0.0.1:{port}", "--workers",
         str(args.web_workers), "--threads", str(args.threads), "--worker-class", "gthread", "--log-level", "warning",
         "--backlog", "2048", "--timeout", "60"],
        env=env, cwd=ROOT, stdout=(work / "gunicorn.log").open("ab"), stderr=subprocess.STDOUT,
    )
    supervisor = Supervisor(env, work / "worker.log")
    log = Log()
    results: dict = {}
    try:
        wait_http(port)
        admin = Admin(port, tokens["admin"])
        status, answer = admin.call("PATCH", f"/api/projects/{SLUG}/", {"base_model": model_path})
        if status != 200:
            raise SystemExit(f"the project admin could not set the base model: {status} {answer}")
        supervisor.start()
        global T0
        T0 = time.monotonic()
        bench = Bench(args, port, tokens, supervisor, redis, gunicorn, log)
        bench.annotators = [Annotator(port, tok, log, args.think, seed=i) for i, tok in enumerate(tokens["annotators"])]
        for a in bench.annotators:
            a.start()
        time.sleep(args.warmup)
        baseline = window_stats(log, max(0.0, args.warmup - args.window), args.warmup)
        say(f"baseline: {baseline}")
        for name in faults:
            bench.inject(name)
        for rnd in bench.rounds:  # every round to its end (resumed where a fault left it failed)
            rnd.note(f"final state {rnd.finish(args.round_timeout)}")
        Schedule.end = max(args.seconds, clock() + 5)
        Schedule.drain_end = Schedule.end + args.drain
        say(f"faults done; the annotators work until {Schedule.end:.0f} s")
        for a in bench.annotators:
            a.join()
        ended = clock()
        for i, record in enumerate(bench.faults):
            end = min(record["at_s"] + args.window, bench.faults[i + 1]["at_s"] if i + 1 < len(bench.faults) else ended)
            record["window"] = window_stats(log, record["at_s"], max(end, record["at_s"] + 1))
        results = {
            "machine": {"cores": os.cpu_count(), "load_after": os.getloadavg()},
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "annotating_s": round(ended, 1),
            "whole_run": window_stats(log, 0, ended),
            "baseline": baseline,
            "faults": bench.faults,
            "rounds": [r.summary() for r in bench.rounds],
            "worker": {"starts_s": supervisor.starts, "exited_on_its_own": supervisor.exits},
            "repeats_answered_200": sum(a.repeats for a in bench.annotators),
            "rejected_409": sum(len(a.rejected) for a in bench.annotators),
            "refused_other_4xx": [r for a in bench.annotators for r in a.refused][:10],
            "first_errors": log.errors[:20],
            "logs": log_marks(work),
        }
    finally:
        supervisor.stop()
        gunicorn.terminate()
        try:
            gunicorn.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gunicorn.kill()
        redis.stop()
        if not pg_is_up(server):
            print("PostgreSQL is down: starting it", flush=True)
            pg_ctl("start")
    if results:
        results["checks"] = check_database(url, bench.annotators)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        report(results)
    if not args.keep:
        recreate_database(server, args.database, drop_only=True)


def wait_http(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _ = http_call(port, "-", "GET", "/healthz", timeout=2)
        if status == 200:
            return
        time.sleep(0.3)
    raise RuntimeError("gunicorn did not come up")


def report(results: dict) -> None:
    checks, whole, base = results["checks"], results["whole_run"], results["baseline"]
    print(f"\n{results['annotating_s']:.0f} s of annotation: {checks['submits_acknowledged']} submits acknowledged, "
          f"{whole['requests_per_s']} requests/s overall ({base['requests_per_s']} before the first fault)")
    print(f"rankings lost {checks['rankings_lost']} (still retrying at the end: "
          f"{checks['submits_still_retrying_at_the_end']}), tasks over their overlap {checks['tasks_over_overlap']}, "
          f"duplicate rankings per (task, annotator) {checks['duplicate_rankings']}, task counters off "
          f"{checks['counters_off']}, 409 answers whose ranking was stored {checks['rejected_409_but_stored']}, "
          f"pairs {checks['pairs']} of {checks['pairs_expected']} expected")
    print(f"repeats answered 200 (a stored submit whose answer was lost, sent again): "
          f"{results['repeats_answered_200']}; 409s: {results['rejected_409']}; 5xx other than 503 in the whole run: "
          f"{whole['status_5xx_other']}; logs: {results['logs']}")
    print("| fault | during | app answered again after | req/s in window (vs before) | 503 | other 5xx | network "
          "errors | round after the fault |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for f in results["faults"]:
        w = f.get("window", {})
        ratio = w.get("requests_per_s", 0) / base["requests_per_s"] if base["requests_per_s"] else float("nan")
        during = f.get("during", f.get("skipped", ""))
        rnd = f.get("round", {})
        outcome = f"round {rnd['id']} {rnd['outcome']}" if rnd else ""
        if rnd.get("outcome") == "failed":
            outcome += f" after {rnd['after_s']} s: {rnd['message'][:120]}"
        elif rnd.get("outcome") == "went on":
            outcome += f" (step {rnd['step_state']}, the next one started {rnd['next_step_started_after_s']} s after it)"
        print(f"| {f['fault']} | {during} | {w.get('answered_again_after_s')} s | {w.get('requests_per_s')} "
              f"({ratio:.2f}) | {w.get('status_503')} | {w.get('status_5xx_other')} | {w.get('network_errors')} | "
              f"{outcome} |")
    for r in results["rounds"]:
        print(f"round {r['id']}: {r['state']}, {r['resumes']} resume(s); " + "; ".join(r["events"]))
    if results["worker"]["exited_on_its_own"]:
        print(f"rq worker exits the bench did not cause: {results['worker']['exited_on_its_own']}")


if __name__ == "__main__":
    main()
