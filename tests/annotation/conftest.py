"""Fixtures shared by the annotation app's tests."""

import pytest
from django.db import connection

from annotation.services.queue import OrmQueue


def postgres_queue():
    if connection.vendor != "postgresql":
        pytest.skip("PostgresQueue needs DATABASE_URL pointing at PostgreSQL")
    from annotation.services.queue.postgres import PostgresQueue

    return PostgresQueue()


@pytest.fixture(params=["orm", pytest.param("postgres", marks=pytest.mark.postgres)])
def q(request):
    """Each implementation of the queue interface."""
    return OrmQueue() if request.param == "orm" else postgres_queue()
