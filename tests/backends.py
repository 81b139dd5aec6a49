"""The database servers tests run against, and how to enable the ones that are missing."""

from __future__ import annotations

import os

import pytest

from atlas_budget_plugin.store import open_database
from atlas_budget_plugin.store.models import ALL_MODELS

POSTGRES_URL = os.environ.get("BUDGET_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("BUDGET_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
#: CI sets this so a missing server fails the run instead of skipping silently.
REQUIRE = os.environ.get("BUDGET_TEST_REQUIRE_SERVERS", "") == "1"

HOW = {
    "postgres": "start PostgreSQL on 127.0.0.1:5432 with database 'test' (trust auth) or set BUDGET_TEST_POSTGRES_URL",
    "mysql": "start MariaDB on 127.0.0.1:3306 (root, empty password, database 'test') or set BUDGET_TEST_MYSQL_URL",
}


def server_url(kind: str) -> str:
    """The URL of a reachable, emptied server database, or skip (fail under CI) with how to enable it."""
    url = POSTGRES_URL if kind == "postgres" else MYSQL_URL
    db = open_database(url)
    try:
        db.connect()
        with db.bind_ctx(ALL_MODELS):
            db.drop_tables(ALL_MODELS, safe=True)
    except Exception as exc:
        message = f"{kind} not reachable at {url} ({type(exc).__name__}: {exc}); to run these tests, {HOW[kind]}"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)
    finally:
        if not db.is_closed():
            db.close()
    return url
