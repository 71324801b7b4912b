"""Shared fixtures: data dirs in a temp folder, personas, small factories."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _data_dirs(settings, tmp_path_factory):
    """Media, exports and imports in a temp folder per test, never the developer's var/."""
    root = tmp_path_factory.mktemp("data")
    settings.DATA_DIR = root
    settings.MEDIA_ROOT = root / "media"
    settings.EXPORT_ROOT = root / "exports"
    settings.IMPORT_ROOT = root / "imports"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    """PBKDF2 at production strength costs ~0.3 s per user; tests need no such strength."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session", autouse=True)
def _redis_of_our_own(tmp_path_factory, worker_id):
    """Without REDIS_URL, tests start their own embedded Redis, never the one a running app uses.
    With REDIS_URL (a shared server, as in CI), each xdist worker gets a database number of its own,
    emptied first, so one worker's jobs never run against another worker's test database."""
    from urllib.parse import urlsplit, urlunsplit

    from django.conf import settings as django_settings

    django_settings.REDIS_EMBEDDED_DB = tmp_path_factory.mktemp("redis") / "redis.db"
    if django_settings.REDIS_URL:
        index = int(worker_id[2:]) if worker_id.startswith("gw") else 8
        parts = urlsplit(django_settings.REDIS_URL)
        django_settings.REDIS_URL = urlunsplit(parts._replace(path=f"/{10 + index % 6}"))
        from lensloop.queue import redis_connection

        redis_connection().flushdb()
    yield
    from lensloop.queue import stop_embedded_redis

    stop_embedded_redis()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """A test database of this pytest process's own: two test sessions in one checkout (or a test run
    beside a running app) must never share, drop or flush each other's database."""
    import os

    from django.conf import settings as django_settings

    db = django_settings.DATABASES["default"]
    name = db.get("TEST", {}).get("NAME") or ("test_" + str(db["NAME"]))
    if db["ENGINE"].endswith("sqlite3"):
        base, dot, ext = str(name).rpartition(".")
        db["TEST"]["NAME"] = f"{base}_{os.getpid()}.{ext}" if dot else f"{name}_{os.getpid()}"
    else:
        db.setdefault("TEST", {})["NAME"] = f"{name}_{os.getpid()}"


# A quicker, worse demo model (about 1 minute on 2 cores): its captions are half right, enough for the
# reward model to have visual features to build on. No wall-clock cap: under CPU contention a cap would
# silently give a worse, machine-dependent model.
TINY_BUILD = {"steps": 800, "train_images": 2000, "eval_images": 20, "warmup_steps": 20, "budget_seconds": 0}


@pytest.fixture(scope="session")
def engine_data_dir(tmp_path_factory, worker_id):
    """Cache root for built models: shared by the xdist workers of one run (and between runs when
    LENSLOOP_TEST_CACHE is set), so the tiny model is built once, not once per worker."""
    import os
    from pathlib import Path

    if os.environ.get("LENSLOOP_TEST_CACHE"):
        return Path(os.environ["LENSLOOP_TEST_CACHE"])
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if worker_id != "master" else base) / "engine-data"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def tiny_build_config():
    from rlhf.engine.config import BuildDemoConfig

    return BuildDemoConfig(**TINY_BUILD)


@pytest.fixture(scope="session")
def demo_model_path(engine_data_dir):
    """The default demo build (what `build-demo` makes, about a minute on 2 cores), for the tests whose
    targets are stated for it; built once per test run like the tiny one."""
    from filelock import FileLock

    from rlhf.engine.config import BuildDemoConfig
    from rlhf.engine.demo.build import ensure_demo_model

    # budget_seconds=0: the default build's wall-clock cap bit at step 641 of 2400 on a busy machine, and the
    # tests' targets then failed against a weaker model. Without the cap the build is the same everywhere.
    with FileLock(str(engine_data_dir / "build-default.lock")):
        return ensure_demo_model(BuildDemoConfig(budget_seconds=0), engine_data_dir)


@pytest.fixture(scope="session")
def tiny_model_path(engine_data_dir, tiny_build_config):
    """Path of the tiny demo model, built once per test run (the first worker builds, the others wait)."""
    from filelock import FileLock

    from rlhf.engine.demo.build import ensure_demo_model

    with FileLock(str(engine_data_dir / "build.lock")):
        return ensure_demo_model(tiny_build_config, engine_data_dir)
