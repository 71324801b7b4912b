"""A real S3-compatible server for the object-storage tests: moto in server mode, in a process of its own
(``s3_server``; ``denying_server`` checks credentials as a real one does, and ours are not in its records), and
``s3``: object storage switched on (settings and the environment that worker processes inherit) with a fresh
bucket. tests/conftest.py loads them as a plugin, so every test can ask for them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from lensloop import storage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto(env: dict | None = None):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start")


@pytest.fixture(scope="session")
def s3_server():
    proc, url = _moto()
    yield url
    proc.kill()


@pytest.fixture(scope="session")
def denying_server():
    """A server that checks credentials, as a real one does: ours are not in its records."""
    proc, url = _moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    yield url
    proc.kill()


@pytest.fixture
def s3(settings, s3_server, monkeypatch):
    """Object storage on: a fresh bucket on the test server; returns its S3Config."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings.LENSLOOP_STORAGE = "s3"
    settings.LENSLOOP_S3_ENDPOINT_URL = s3_server
    settings.LENSLOOP_S3_REGION = "us-east-1"
    settings.LENSLOOP_S3_BUCKET = f"lensloop-{uuid.uuid4().hex[:12]}"
    settings.LENSLOOP_S3_PREFIX = "site-a"
    cfg = storage.config()
    storage.client(cfg).create_bucket(Bucket=cfg.bucket)
    return cfg


def keys(cfg, prefix: str) -> list[str]:
    """The keys of the bucket under ``prefix`` (below the installation's prefix), sorted."""
    out = storage.client(cfg).list_objects_v2(Bucket=cfg.bucket, Prefix=cfg.key(prefix)).get("Contents", [])
    return sorted(o["Key"] for o in out)
