"""Helpers for tests that start real processes against the test database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    """A DATABASE_URL naming the database this test runs on, for child processes."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return "sqlite:///" + str(Path(s["NAME"]).resolve())
    auth = quote(s["USER"] or "")
    if s["PASSWORD"]:
        auth += ":" + quote(s["PASSWORD"])
    host = s["HOST"] or "localhost"
    port = f":{s['PORT']}" if s["PORT"] else ""
    return f"postgres://{auth}@{host}{port}/{s['NAME']}"


def child_env(**extra: str) -> dict:
    """Environment for a child process that must see what this test sees: the test database, the
    same Redis and the same data directory."""
    from django.conf import settings

    from lensloop.queue import redis_url

    storage = {}
    if settings.LENSLOOP_STORAGE == "s3":  # the object store a test switched on (tests/s3.py)
        storage = {name: str(getattr(settings, name)) for name in (
            "LENSLOOP_STORAGE", "LENSLOOP_S3_BUCKET", "LENSLOOP_S3_ENDPOINT_URL", "LENSLOOP_S3_PREFIX", "LENSLOOP_S3_REGION")}
    return {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        "REDIS_URL": redis_url(),
        "LENSLOOP_DATA_DIR": str(settings.DATA_DIR),
        **storage,
        **extra,
    }


def start_worker(*queues: str, **extra_env: str) -> subprocess.Popen:
    """A long-running ``manage.py worker`` (not burst) in the background."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "worker", *queues],
        env=child_env(**extra_env),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def manage(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DATABASE_URL": test_database_url(), **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=full_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextmanager
def writes_held():
    """PostgreSQL: hold every import at its first batch of rows, inside its transaction: a second connection
    locks the prompts table against inserts (reads go on) until the block ends. Yields a function that waits
    until an import waits on the lock. Tests use it to act on an import that is surely mid-write, however
    fast the machine."""
    from annotation.models import Prompt

    held = connection.get_new_connection(connection.get_connection_params())
    try:
        with held.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {Prompt._meta.db_table} IN SHARE MODE")  # opens a transaction

        def until_blocked(timeout: float = 60.0) -> None:
            deadline = time.monotonic() + timeout
            with held.cursor() as cursor:
                while True:
                    cursor.execute(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass AND database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database())", [Prompt._meta.db_table])
                    if cursor.fetchone()[0]:
                        return
                    assert time.monotonic() < deadline, "no import came to wait on the held prompts table"
                    time.sleep(0.05)

        yield until_blocked
    finally:
        held.rollback()
        held.close()
