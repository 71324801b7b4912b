"""Settings from the environment: URLs parse into what Django and psycopg expect, bad values fail loudly."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from lensloop.env import database_from_url


def test_a_postgres_url_gives_django_settings_with_explicit_prepares_only():
    db = database_from_url("postgres://bob:s%40cret@db.example:6543/lensloop?sslmode=require")
    assert (db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], db["PORT"]) == (
        "lensloop", "bob", "s@cret", "db.example", 6543
    )
    # psycopg prepares nothing on its own (threshold out of reach); the queue asks explicitly.
    assert db["OPTIONS"] == {"sslmode": "require", "prepare_threshold": 1_000_000_000}


def test_prepared_statements_can_be_turned_off_for_a_transaction_pooler():
    assert database_from_url("postgres://h/db?prepare_threshold=none")["OPTIONS"]["prepare_threshold"] is None
    assert database_from_url("postgres://h/db?prepare_threshold=5")["OPTIONS"]["prepare_threshold"] == 5
    with pytest.raises(ImproperlyConfigured, match="prepare_threshold"):
        database_from_url("postgres://h/db?prepare_threshold=often")


@pytest.mark.parametrize("url", ["postgres://host", "mysql://h/db", "sqlite://relative.db"])
def test_unusable_database_urls_are_refused(url):
    with pytest.raises(ImproperlyConfigured):
        database_from_url(url)


def test_kept_postgres_connections_are_health_checked():
    kept = database_from_url("postgres://h/db", conn_max_age=60)
    assert (kept["CONN_MAX_AGE"], kept["CONN_HEALTH_CHECKS"]) == (60, True)
    fresh = database_from_url("postgres://h/db")
    assert (fresh["CONN_MAX_AGE"], fresh["CONN_HEALTH_CHECKS"]) == (0, False)


def test_a_sqlite_url_gets_wal_and_immediate_transactions(tmp_path):
    db = database_from_url(f"sqlite://{tmp_path}/lensloop.sqlite3")
    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["NAME"] == f"{tmp_path}/lensloop.sqlite3"
    assert db["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in db["OPTIONS"]["init_command"]
    assert database_from_url("sqlite:///:memory:")["NAME"] == ":memory:"
