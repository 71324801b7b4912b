"""Typed readers for settings that come from the environment.

Every helper fails loudly with ``ImproperlyConfigured`` naming the variable and the value it could not
use, so a typo in a deployment is an error at start-up rather than a silent default.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import unquote, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool | None = False) -> bool | None:
    """A boolean; ``default`` (which may be None: "not said, find out") when the variable is unset."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    path = Path(raw).expanduser() if raw else default
    return path.resolve()


def env_paths(name: str, default: list[Path]) -> list[Path]:
    """A colon-separated list of absolute folders (like ``PATH``), each resolved (``..``, symlinks).
    Set but empty means no folder at all."""
    raw = os.environ.get(name)
    if raw is None:
        return [path.resolve() for path in default]
    paths = []
    for item in raw.split(":"):
        if not item.strip():
            continue
        path = Path(item.strip()).expanduser()
        if not path.is_absolute():
            raise ImproperlyConfigured(f"{name}: {item!r} is not an absolute path")
        paths.append(path.resolve())
    return paths


def secret_key(var_dir: Path) -> str:
    """``SECRET_KEY`` from the environment, else one generated once and kept in ``var/secret_key``.

    The generated key never enters the repository (``var/`` is ignored) and survives restarts, so
    sessions and pseudonymous annotator ids stay stable on one installation.
    """
    raw = os.environ.get("SECRET_KEY")
    if raw is not None:
        if len(raw) < 32:
            raise ImproperlyConfigured("SECRET_KEY is set but shorter than 32 characters")
        return raw
    path = var_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    var_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    # O_EXCL: two processes starting at once must agree on one key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


def database_from_url(url: str, *, conn_max_age: int = 0) -> dict:
    """Django ``DATABASES['default']`` from a URL: ``postgres://user:pw@host:port/db`` or
    ``sqlite:///absolute/path.db`` (``sqlite:///:memory:`` too).

    dj-database-url parses the URL; what it leaves to us is what lensloop adds: PostgreSQL URLs must name a
    database and get ``prepare_threshold`` (below) and health checks on kept connections; SQLite gets the
    WAL/IMMEDIATE options of ``sqlite_database``; any other scheme is refused."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in {"postgres", "postgresql", "pgsql"}:
        # A kept connection is checked before a request reuses it: after a PostgreSQL restart every web
        # thread's kept connection is dead, and without the check each answered one 500 before Django
        # dropped it (bench/faults.py).
        config = dict(dj_database_url.parse(url, conn_max_age=conn_max_age, conn_health_checks=conn_max_age > 0))
        if not config.get("NAME"):
            raise ImproperlyConfigured(f"DATABASE_URL {url!r} names no database, e.g. postgres://host/lensloop")
        options = dict(config.get("OPTIONS") or {})
        # psycopg prepares only what is asked for explicitly (the queue's statements, annotation.rawsql);
        # Django's own cursors never prepare. `?prepare_threshold=none` turns it off, e.g. behind a
        # pooler in transaction mode.
        threshold = str(options.pop("prepare_threshold", "1000000000"))
        if threshold.lower() == "none":
            options["prepare_threshold"] = None
        elif threshold.isdigit():
            options["prepare_threshold"] = int(threshold)
        else:
            raise ImproperlyConfigured(f"DATABASE_URL {url!r}: prepare_threshold must be a number or none")
        config["OPTIONS"] = options
        return config
    if scheme == "sqlite":
        # Not dj-database-url here: it reads sqlite://relative.db as an in-memory database, and lensloop's
        # SQLite needs its own options (sqlite_database).
        path = unquote(parts.path)
        if path.startswith("/") and parts.netloc == "":
            name = path if path != "/:memory:" else ":memory:"
        else:
            raise ImproperlyConfigured(f"DATABASE_URL {url!r}: use sqlite:////absolute/path.db")
        return sqlite_database(Path(name) if name != ":memory:" else None)
    raise ImproperlyConfigured(f"DATABASE_URL {url!r}: unsupported scheme {scheme!r}; use postgres:// or sqlite://")


def sqlite_database(path: Path | None) -> dict:
    """SQLite in WAL mode with IMMEDIATE transactions.

    IMMEDIATE takes the write lock at BEGIN, so two queue transactions never both read a task as free
    and then race to write: SQLite serialises them, which is what makes the queue race-safe there.
    """
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path) if path is not None else ":memory:",
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
        },
        "TEST": {"NAME": str(path.with_name("test_" + path.name)) if path is not None else None},
    }
