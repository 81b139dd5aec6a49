"""Open the database named by ``database_url``, create or migrate its schema, write transactions."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import peewee as pw
from playhouse import db_url

from ..exceptions import SettingsError, StoreUnavailable
from .migrations import exact_text
from .models import ALL_MODELS, SCHEMA_VERSION, Meta, SchemaVersion, db_proxy

#: Durability first: a recorded call survives a crash or power loss once recorded.
SQLITE_PRAGMAS = {
    "busy_timeout": 60_000,  # first, so the pragmas below wait for other processes too
    "journal_mode": "wal",
    "synchronous": "full",
    "foreign_keys": 1,
}

#: Arbitrary constant naming the advisory lock held while creating or migrating the schema.
SCHEMA_LOCK_ID = 0x41544C53

SUPPORTED = "sqlite:///path/to/budget.db, postgresql://user@host:5432/db, mysql://user@host:3306/db"

#: version -> step that upgrades a database from that version to the next one.
MIGRATIONS: dict[int, Callable[[pw.Database], None]] = {1: exact_text}


def open_database(url: str) -> pw.Database:
    """Return an (unconnected) peewee Database for ``url``; a bad URL is a SettingsError."""
    scheme = urlparse(url).scheme
    if scheme not in db_url.schemes:
        raise SettingsError(f"database_url {url!r} has an unsupported scheme {scheme!r}; use one of {SUPPORTED}")
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
        # READ COMMITTED: locking reads and sums see what other processes committed,
        # and InnoDB takes fewer gap locks (fewer deadlocks) than REPEATABLE READ.
        params = {"charset": "utf8mb4", "init_command": "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"}
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


@contextmanager
def _schema_lock(db: pw.Database) -> Iterator[None]:
    """Serialise schema creation between processes starting at once against a server."""
    if isinstance(db, pw.PostgresqlDatabase):
        db.execute_sql("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_ID,))
        try:
            yield
        finally:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_ID,))
    elif isinstance(db, pw.MySQLDatabase):
        db.execute_sql("SELECT GET_LOCK('atlas_budget_schema', 120)")
        try:
            yield
        finally:
            db.execute_sql("SELECT RELEASE_LOCK('atlas_budget_schema')")
    else:  # SQLite: BEGIN IMMEDIATE in write_transaction already serialises
        yield


#: What a lost or unreachable database raises (the plugin then follows on_store_error and spools).
STORE_ERRORS: tuple[type[Exception], ...] = (pw.OperationalError, pw.InterfaceError, StoreUnavailable)


def reset_connection(db: pw.Database) -> None:
    """Drop a connection that failed, so the next statement connects afresh."""
    try:
        if not db.is_closed():
            db.close()
    except Exception:  # a broken connection may fail to close; it is gone either way
        pass


#: Server errors after which the whole transaction can simply run again.
_RETRYABLE_PG = {"40001", "40P01"}  # serialization failure, deadlock detected
_RETRYABLE_MYSQL = {1205, 1213}  # lock wait timeout, deadlock found

T = TypeVar("T")


def _retryable(exc: BaseException) -> bool:
    # peewee re-raises the driver's error as its own; the original is its first argument.
    causes = [exc, exc.__cause__, exc.__context__, *(a for a in exc.args if isinstance(a, BaseException))]
    for cause in causes:
        if cause is None:
            continue
        if getattr(cause, "pgcode", None) in _RETRYABLE_PG:
            return True
        args: tuple[Any, ...] = getattr(cause, "args", ())
        if args and args[0] in _RETRYABLE_MYSQL:
            return True
    return False


def run_in_transaction(db: pw.Database, work: Callable[[], T], attempts: int = 8) -> T:
    """Run ``work`` in one write transaction, again from the start after a deadlock.

    PostgreSQL and MariaDB may abort one of two transactions that wait on each
    other; nothing of the aborted one was written, so running it again is safe.
    """
    for attempt in range(attempts):
        try:
            with write_transaction(db):
                return work()
        except (pw.OperationalError, pw.InternalError) as exc:
            if attempt == attempts - 1 or not _retryable(exc):
                raise
            time.sleep(random.uniform(0, 0.005 * 2**attempt))
    raise AssertionError("unreachable")  # pragma: no cover


def schema_version(db: pw.Database) -> int | None:
    """The stored schema version, or ``None`` for an empty database."""
    if not db.table_exists(SchemaVersion._meta.table_name):
        return None
    row = SchemaVersion.select().first()
    return row.version if row else None


def initialize(db: pw.Database) -> int:
    """Bind the models to ``db``, create missing tables and run pending migrations."""
    db_proxy.initialize(db)
    for attempt in range(5):
        try:
            db.connect(reuse_if_open=True)
            break
        except pw.OperationalError as exc:
            # A new SQLite file being switched to WAL by another process answers "locked" at once.
            if "locked" not in str(exc) or attempt == 4:
                raise StoreUnavailable(f"cannot connect to the budget database: {exc}") from exc
            if not db.is_closed():  # pragma: no cover - connect failed half-way
                db.close()
            time.sleep(0.05 * 2**attempt)
    with _schema_lock(db), write_transaction(db):
        current = schema_version(db)
        if current is None:
            db.create_tables(ALL_MODELS, safe=True)
            SchemaVersion.delete().execute()
            SchemaVersion.create(version=SCHEMA_VERSION)
            Meta.insert(name="policy_generation", value=0).on_conflict_ignore().execute()
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
