"""Open the database named by ``database_url``, create or migrate its schema, write transactions."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import urlparse

import peewee as pw
from playhouse import db_url

from ..exceptions import SettingsError, StoreUnavailable
from .models import ALL_MODELS, SCHEMA_VERSION, SchemaVersion, db_proxy

#: Durability first: a recorded call survives a crash or power loss once recorded.
SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "full",
    "busy_timeout": 60_000,
    "foreign_keys": 1,
}

SUPPORTED = "sqlite:///path/to/budget.db, postgresql://user@host:5432/db, mysql://user@host:3306/db"

#: version -> step that upgrades a database from that version to the next one.
MIGRATIONS: dict[int, Callable[[pw.Database], None]] = {}


def open_database(url: str) -> pw.Database:
    """Return an (unconnected) peewee Database for ``url``; a bad URL is a SettingsError."""
    scheme = urlparse(url).scheme
    if scheme not in db_url.schemes:
        raise SettingsError(
            f"database_url {url!r} has an unsupported scheme {scheme!r}; use one of {SUPPORTED}"
        )
    params: dict[str, object] = {}
    if scheme.startswith("sqlite"):
        raw = url.split("://", 1)[1]
        path = raw[1:] if raw.startswith("/") else raw
        if path != ":memory:":
            file = Path(path).expanduser()
            file.parent.mkdir(parents=True, exist_ok=True)
            url = f"{scheme}:///{file}"
        params = {"pragmas": SQLITE_PRAGMAS, "timeout": 60}
    elif scheme.startswith("mysql"):
        params = {"charset": "utf8mb4"}
    try:
        return db_url.connect(url, **params)
    except (ValueError, RuntimeError) as exc:
        raise SettingsError(f"database_url {url!r} is invalid: {exc}. Use {SUPPORTED}") from None


def is_sqlite(db: pw.Database) -> bool:
    return isinstance(db, pw.SqliteDatabase)


def write_transaction(db: pw.Database) -> AbstractContextManager[object]:
    """A transaction that may write; on SQLite it takes the write lock at BEGIN.

    ``BEGIN IMMEDIATE`` makes every check-and-reserve on one SQLite file run one
    after another across processes; on PostgreSQL and MariaDB the ledger locks the
    rows it changes instead (``SELECT ... FOR UPDATE`` in a fixed order).
    """
    if is_sqlite(db):
        return db.atomic("IMMEDIATE")
    return db.atomic()


def schema_version(db: pw.Database) -> int | None:
    """The stored schema version, or ``None`` for an empty database."""
    if not db.table_exists(SchemaVersion._meta.table_name):
        return None
    row = SchemaVersion.select().first()
    return row.version if row else None


def initialize(db: pw.Database) -> int:
    """Bind the models to ``db``, create missing tables and run pending migrations."""
    db_proxy.initialize(db)
    try:
        db.connect(reuse_if_open=True)
    except pw.OperationalError as exc:
        raise StoreUnavailable(f"cannot connect to the budget database: {exc}") from exc
    with write_transaction(db):
        current = schema_version(db)
        if current is None:
            db.create_tables(ALL_MODELS, safe=True)
            SchemaVersion.delete().execute()
            SchemaVersion.create(version=SCHEMA_VERSION)
            return SCHEMA_VERSION
        if current > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"the budget database has schema version {current}, newer than this "
                f"atlas-budget-plugin understands ({SCHEMA_VERSION}); upgrade the package"
            )
        while current < SCHEMA_VERSION:
            MIGRATIONS[current](db)
            current += 1
            SchemaVersion.update(version=current).execute()
        return current
