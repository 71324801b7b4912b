"""Settings from the environment: URLs parse into what Django and psycopg expect, bad values fail loudly."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from lensloop.env import database_from_url


def test_a_postgres_url_gives_django_settings_with_explicit_prepares_only():
    db = database_from_url("postgres://bob:s%40cret@db.example:6543/lensloop?sslmode=require")
    assert (db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], db["PORT"]) == (
        "lensloop", "bob", "s@cret", "db.example", "6543"
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
