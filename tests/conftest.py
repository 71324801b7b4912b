"""Shared fixtures: data dirs in a temp folder, personas, small factories."""

from __future__ import annotations

import os
from pathlib import Path

# One torch (OpenMP) thread per test process and per engine subprocess it starts. `make test` runs two xdist
# workers on two cores: with torch's default of one thread per core each, four busy threads on two cores
# wait on each other (a 25 s reward-model test took 6 minutes). Results depend on the thread count (float
# reduction order), so the learning tests' thresholds are measured with one thread as well.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest

# The S3-compatible server (moto) and the object-storage fixtures: s3_server, denying_server, s3.
pytest_plugins = ["tests.s3"]


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
    from rlhf.engine.demo import TINY_BUILD

    return BuildDemoConfig(**TINY_BUILD)


@pytest.fixture(scope="session")
def demo_model_path():
    """The demo base shipped in the repository (what `make run` serves), for the tests whose targets are
    stated for it. Nothing is built: a damaged copy fails with the command that rebuilds it."""
    from rlhf.engine.config import BuildDemoConfig
    from rlhf.engine.demo.build import shipped_build

    path = shipped_build(BuildDemoConfig())
    assert path is not None, "rlhf/engine/demo/base does not hold the build of BuildDemoConfig()'s defaults"
    return path


@pytest.fixture(scope="session")
def tiny_model_path(engine_data_dir, tiny_build_config):
    """The tiny demo model (`rlhf.engine.demo.TINY_BUILD`), shipped prebuilt in tests/assets/tiny-demo so that a
    test run builds nothing and every machine tests the same weights; built (once per run, the first worker
    building while the others wait) only if that folder holds another build."""
    from rlhf.engine.demo.build import ensure_demo_model

    return ensure_demo_model(tiny_build_config, engine_data_dir, shipped=TINY_ASSET)


TINY_ASSET = Path(__file__).resolve().parent / "assets" / "tiny-demo"


def pytest_collection_modifyitems(config, items):
    """Slow tests first: xdist hands tests out in order, so a long test left for last keeps one worker busy
    while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
