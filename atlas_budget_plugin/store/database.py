"""Open the database named by ``database_url``, create or migrate its schema, write transactions."""

from __future__ import annotations

import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse

import peewee as pw
from playhouse import db_url

from ..exceptions import SettingsError, StoreUnavailable
from . import routines
from .migrations import exact_text, policy_options_and_counter_parts, server_routines
from .models import ALL_MODELS, SCHEMA_VERSION, Meta, SchemaVersion, db_proxy

#: Durability first: a recorded call survives a crash or power loss once recorded
#: (``durability = "normal"`` trades the last moments before a power loss for speed).
SQLITE_PRAGMAS = {
    "busy_timeout": 10_000,  # first, so the pragmas below wait for other processes too (store_lock_timeout)
    "journal_mode": "wal",
    "synchronous": "full",
    "foreign_keys": 1,
}

#: Extra time the client gives a PostgreSQL statement beyond store_statement_timeout, so that the
#: server's own timeout (a clean error) usually answers before the client cuts the connection.
CLIENT_GRACE = 1.0

#: Arbitrary constant naming the advisory lock held while creating or migrating the schema.
SCHEMA_LOCK_ID = 0x41544C53

SUPPORTED = "sqlite:///path/to/budget.db, postgresql://user@host:5432/db, mysql://user@host:3306/db"

#: version -> step that upgrades a database from that version to the next one.
MIGRATIONS: dict[int, Callable[[pw.Database], None]] = {
    1: exact_text,
    2: policy_options_and_counter_parts,
    3: server_routines,
}


@dataclass(frozen=True)
class StoreTimeouts:
    """How long the store waits (seconds): to connect, for one statement, for a lock."""

    connect: float = 5.0
    statement: float = 10.0
    lock: float = 10.0


class StoreTimeout(StoreUnavailable, pw.OperationalError):
    """The database did not answer within a configured timeout (a kind of unreachable store)."""


def open_database(
    url: str,
    *,
    connect_timeout: float = 5.0,
    statement_timeout: float = 10.0,
    lock_timeout: float = 10.0,
    durability: Literal["full", "normal"] = "full",
) -> pw.Database:
    """Return an (unconnected) peewee Database for ``url``; a bad URL is a SettingsError.

    PostgreSQL and MariaDB/MySQL connections wait at most ``connect_timeout`` to connect and
    about ``statement_timeout`` for any answer (a server that stops answering is cut off, never
    waited on for ever); a row lock is waited on at most ``lock_timeout``. Past them a statement
    raises :class:`StoreTimeout`, one of :data:`STORE_ERRORS`. SQLite waits ``lock_timeout`` for
    other processes' write lock, and syncs every commit to disk with ``durability = "full"``.
    """
    timeouts = StoreTimeouts(connect_timeout, statement_timeout, lock_timeout)
    scheme = urlparse(url).scheme
    if scheme not in db_url.schemes:
        raise SettingsError(f"database_url {url!r} has an unsupported scheme {scheme!r}; use one of {SUPPORTED}")
    params: dict[str, object] = {}
    database_class: type[pw.Database] = db_url.schemes[scheme]
    if scheme.startswith("sqlite"):
        raw = url.split("://", 1)[1]
        path = raw[1:] if raw.startswith("/") else raw
        if path != ":memory:":
            file = Path(path).expanduser()
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SettingsError(
                    f"database_url {url!r}: the folder {file.parent} cannot be created ({exc.strerror}); "
                    "point database_url at a folder you can write to"
                ) from None
            url = f"{scheme}:///{file}"
        pragmas = {**SQLITE_PRAGMAS, "busy_timeout": int(lock_timeout * 1000)}
        if durability == "normal":
            pragmas["synchronous"] = "normal"
        params = {"pragmas": pragmas, "timeout": lock_timeout}
    elif scheme.startswith("postgres"):
        if getattr(pw, "psycopg2", None) is None and getattr(pw, "psycopg", None) is None:
            raise SettingsError(
                f"database_url {url!r} names PostgreSQL, but its driver is not installed; "
                "install it with: pip install 'atlas-budget-plugin[postgres]'"
            )
        params = _postgres_params(timeouts)
        database_class = _guarded(database_class)
    elif scheme.startswith("mysql"):
        if getattr(pw, "mysql", None) is None:
            raise SettingsError(
                f"database_url {url!r} names MariaDB/MySQL, but its driver is not installed; "
                "install it with: pip install 'atlas-budget-plugin[mysql]'"
            )
        # READ COMMITTED: locking reads and sums see what other processes committed,
        # and InnoDB takes fewer gap locks (fewer deadlocks) than REPEATABLE READ.
        params = {
            "charset": "utf8mb4",
            "init_command": "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "connect_timeout": connect_timeout,
            # Waiting for the server's greeting and for every answer: a server that stops
            # answering (or a port that is not MySQL) is given up after this long.
            "read_timeout": statement_timeout,
            "write_timeout": statement_timeout,
        }
        database_class = _guarded(database_class)
    try:
        kwargs = {**params, **db_url.parse(url)}  # the URL's own ?key=value parameters win
        if not kwargs.get("database"):
            raise ValueError(f"{url!r} has no database name (local: sqlite:///file.db, servers: scheme://host/db)")
        db = database_class(**kwargs)
    except (ValueError, RuntimeError) as exc:
        raise SettingsError(f"database_url {url!r} is invalid: {exc}. Use {SUPPORTED}") from None
    db.store_timeouts = timeouts  # type: ignore[attr-defined]
    return db


def _postgres_params(timeouts: StoreTimeouts) -> dict[str, object]:
    """libpq options: connect and server-side statement/lock timeouts, TCP keepalives."""
    params: dict[str, object] = {
        # libpq counts whole seconds and waits at least 2.
        "connect_timeout": max(1, math.ceil(timeouts.connect)),
        "options": (
            f"-c statement_timeout={int(timeouts.statement * 1000)} -c lock_timeout={int(timeouts.lock * 1000)}"
        ),
        # A server that vanished without closing the connection is noticed while idle too.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    return params


def _timeouts_of(db: pw.Database) -> StoreTimeouts:
    return getattr(db, "store_timeouts", None) or StoreTimeouts()


class _Watchdog:
    """Cuts the connection of a statement that has had no answer past its deadline.

    libpq has no read timeout: a server (or a network path) that accepts a statement and then
    answers nothing would block the calling thread for ever. The server's statement_timeout
    cannot help when the statement never reaches it, so a deadline is armed around every
    statement, and one daemon thread shuts the socket down when it passes (the blocked call
    then fails at once and is reported as a :class:`StoreTimeout`).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, int]] = {}  # token -> (deadline, socket fd)
        self._fired: set[int] = set()
        self._tokens = 0
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None

    def arm(self, fd: int, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        with self._cond:
            self._tokens += 1
            token = self._tokens
            self._armed[token] = (deadline, fd)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="atlas-budget-watchdog", daemon=True)
                self._thread.start()
            if deadline < self._wake_at:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> bool:
        """Forget the deadline; True if it had passed and the connection was cut."""
        with self._cond:
            self._armed.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (deadline, fd) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        self._fired.add(token)
                        _cut(fd)
                self._wake_at = min((d for d, _ in self._armed.values()), default=math.inf)
                self._cond.wait(None if self._wake_at == math.inf else self._wake_at - now)


def _cut(fd: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


_watchdog = _Watchdog()

_PG_TIMEOUTS = {"57014": "store_statement_timeout", "55P03": "store_lock_timeout"}
_MYSQL_LOCK_WAIT = 1205
_MYSQL_LOST = {2013, 2003, 2006}


def _driver_error(exc: BaseException) -> BaseException:
    return getattr(exc, "orig", None) or exc.__cause__ or exc.__context__ or exc


class _GuardedDatabase:
    """Mixin for the PostgreSQL and MariaDB databases: every wait is bounded; timeouts are named."""

    store_timeouts: StoreTimeouts

    def connect(self, reuse_if_open: bool = False) -> bool:
        self._state.timed_out = False  # type: ignore[attr-defined]
        try:
            return super().connect(reuse_if_open)  # type: ignore[misc]
        except pw.OperationalError as exc:
            explained = self._explain_timeout(exc, connecting=True)
            if explained is exc:
                raise
            raise explained from exc

    def _execute_cursor(self, sql: str, params: Any, **cursor_options: Any) -> Any:
        if self.is_closed() and self.autoconnect:  # type: ignore[attr-defined]
            self.connect()
        return self._guard(super()._execute_cursor, sql, params, **cursor_options)  # type: ignore[misc]

    def begin(self, *args: Any, **kwargs: Any) -> None:
        self._guard(super().begin, *args, **kwargs)  # type: ignore[misc]

    def commit(self) -> None:
        self._guard(super().commit)  # type: ignore[misc]

    def rollback(self) -> None:
        if getattr(self._state, "timed_out", False):  # type: ignore[attr-defined]
            return  # the connection was cut: nothing to roll back, the server discards the transaction
        self._guard(super().rollback)  # type: ignore[misc]

    def _guard(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        token = None
        if isinstance(self, pw.PostgresqlDatabase) and not self.is_closed():
            fd = self._state.conn.fileno()  # type: ignore[attr-defined]
            token = _watchdog.arm(fd, self.store_timeouts.statement + CLIENT_GRACE)
        cut = False
        try:
            result = work(*args, **kwargs)
        except (pw.OperationalError, pw.InterfaceError, pw.DatabaseError) as exc:
            cut = token is not None and _watchdog.disarm(token)
            token = None
            explained = self._explain_timeout(exc, cut=cut)
            if explained is exc:
                raise
            raise explained from exc
        finally:
            if token is not None:
                cut = _watchdog.disarm(token)
        if cut:  # the answer came just as the deadline passed: the connection is gone all the same
            self._state.timed_out = True  # type: ignore[attr-defined]
            raise StoreTimeout(self._timeout_text("store_statement_timeout"))
        return result

    def _timeout_text(self, setting: str, during: str = "") -> str:
        seconds = {
            "store_connect_timeout": self.store_timeouts.connect,
            "store_statement_timeout": self.store_timeouts.statement,
            "store_lock_timeout": self.store_timeouts.lock,
        }[setting]
        server = "PostgreSQL" if isinstance(self, pw.PostgresqlDatabase) else "MariaDB/MySQL"
        what = f"the {server} server did not answer"
        if setting == "store_lock_timeout":
            what = "a row lock was not granted"
        return f"{what} within {seconds:g} s{during} ({setting})"

    def _explain_timeout(self, exc: BaseException, *, cut: bool = False, connecting: bool = False) -> BaseException:
        """A StoreTimeout naming the setting when ``exc`` is a timeout, else ``exc`` itself."""
        if isinstance(exc, StoreTimeout):
            return exc
        during = " while connecting" if connecting else ""
        if cut:
            self._state.timed_out = True  # type: ignore[attr-defined]
            return StoreTimeout(self._timeout_text("store_statement_timeout", during))
        cause = _driver_error(exc)
        text = str(cause)
        pgcode = getattr(cause, "pgcode", None)
        if pgcode in _PG_TIMEOUTS:
            return StoreTimeout(self._timeout_text(_PG_TIMEOUTS[pgcode]))
        if connecting and isinstance(self, pw.PostgresqlDatabase) and "timeout expired" in text:
            return StoreTimeout(self._timeout_text("store_connect_timeout", during))
        args: tuple[Any, ...] = getattr(cause, "args", ())
        code = args[0] if args else None
        if code == _MYSQL_LOCK_WAIT:
            return StoreTimeout(self._timeout_text("store_lock_timeout"))
        if code in _MYSQL_LOST and "timed out" in text:
            self._state.timed_out = True  # type: ignore[attr-defined]
            if code == 2003:  # the TCP connection itself was not made in time
                return StoreTimeout(self._timeout_text("store_connect_timeout", during))
            # No greeting or no answer: a server that hangs, or a port that is not MariaDB/MySQL.
            hint = "; no greeting came: the server hangs or that port is not MariaDB/MySQL" if connecting else ""
            return StoreTimeout(self._timeout_text("store_statement_timeout", during) + hint)
        return exc

    def _initialize_connection(self, conn: Any) -> None:
        super()._initialize_connection(conn)  # type: ignore[misc]
        if isinstance(self, pw.MySQLDatabase):
            with conn.cursor() as cursor:
                cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {max(1, math.ceil(self.store_timeouts.lock))}")


_guarded_classes: dict[type[pw.Database], type[pw.Database]] = {}


def _guarded(database_class: type[pw.Database]) -> type[pw.Database]:
    """``database_class`` with :class:`_GuardedDatabase` mixed in (one class per driver class)."""
    if database_class not in _guarded_classes:
        _guarded_classes[database_class] = type(
            f"Guarded{database_class.__name__}", (_GuardedDatabase, database_class), {}
        )
    return _guarded_classes[database_class]


def is_sqlite(db: pw.Database) -> bool:
    return isinstance(db, pw.SqliteDatabase)


_writer_locks_guard = threading.Lock()


def _writer_lock(db: pw.Database) -> threading.RLock:
    """The in-process lock taken before SQLite's write lock (one per database object)."""
    lock = getattr(db, "_atlas_writer_lock", None)
    if lock is None:
        with _writer_locks_guard:
            lock = getattr(db, "_atlas_writer_lock", None)
            if lock is None:
                lock = threading.RLock()
                setattr(db, "_atlas_writer_lock", lock)  # noqa: B010 - peewee databases take new attributes
    return lock


@contextmanager
def _sqlite_write(db: pw.Database) -> Iterator[object]:
    # Threads of one process queue on a lock (woken the moment it is free) instead of on SQLite's busy
    # handler, which sleeps and polls with growing pauses: under 50 threads that polling, not the work,
    # made the slowest calls wait over a second.
    with _writer_lock(db), db.atomic("IMMEDIATE") as txn:
        yield txn


def write_transaction(db: pw.Database) -> AbstractContextManager[object]:
    """A transaction that may write; on SQLite it takes the write lock at BEGIN.

    ``BEGIN IMMEDIATE`` makes every check-and-reserve on one SQLite file run one
    after another across processes (threads of one process queue on an in-process
    lock first); on PostgreSQL and MariaDB the ledger locks the rows it changes
    instead (``SELECT ... FOR UPDATE`` in a fixed order).
    """
    if is_sqlite(db):
        return _sqlite_write(db)
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
        # Wait less than the read timeout, so a busy lock is reported instead of cutting the connection.
        wait = max(1, math.floor(_timeouts_of(db).statement) - 1)
        got = db.execute_sql("SELECT GET_LOCK('atlas_budget_schema', %s)", (wait,)).fetchone()
        if not got or got[0] != 1:
            raise StoreTimeout(
                f"another process held the schema lock of the budget database for more than {wait} s "
                "(store_statement_timeout); it is probably creating or upgrading the schema: try again"
            )
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
_RETRYABLE_MYSQL = {1213}  # deadlock found (a lock wait timeout is answered, not waited out again)

T = TypeVar("T")


def driver_error_in(exc: BaseException, postgres: set[str], mysql: set[int]) -> bool:
    """Whether ``exc`` is (or wraps) a driver error with one of these PostgreSQL SQLSTATEs or MariaDB error numbers."""
    # peewee re-raises the driver's error as its own; the original is its first argument.
    causes = [exc, exc.__cause__, exc.__context__, *(a for a in exc.args if isinstance(a, BaseException))]
    for cause in causes:
        if cause is None:
            continue
        if getattr(cause, "pgcode", None) in postgres:
            return True
        args: tuple[Any, ...] = getattr(cause, "args", ())
        if args and args[0] in mysql:
            return True
    return False


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` is a deadlock or serialization failure, after which the work can simply run again."""
    return driver_error_in(exc, _RETRYABLE_PG, _RETRYABLE_MYSQL)


@dataclass
class _Job:
    """One caller's transaction body waiting for a shared commit."""

    work: Callable[[], Any]
    done: bool = False
    result: Any = None
    error: BaseException | None = None


def _queue(db: pw.Database) -> list[_Job]:
    queue = getattr(db, "_atlas_commit_queue", None)
    if queue is None:
        with _writer_locks_guard:
            queue = getattr(db, "_atlas_commit_queue", None)
            if queue is None:
                queue = []
                setattr(db, "_atlas_commit_queue", queue)  # noqa: B010 - peewee databases take new attributes
    return queue


def run_grouped(db: pw.Database, work: Callable[[], T]) -> T:
    """Run ``work`` in a write transaction it may share with other threads' work: one commit, one fsync.

    Group commit for SQLite. A caller queues its work and takes the in-process writer lock;
    whoever holds the lock runs every queued body, each in its own savepoint (one body's error
    rolls back only that body and is raised to its own caller), and commits them together; a body
    that finds itself alone in the queue runs without a savepoint (its error rolls back the transaction).
    Each caller returns only after the commit that made its work durable; a caller whose
    work someone else committed finds it done when it gets the lock. Elsewhere it is
    :func:`run_in_transaction`.
    """
    if not is_sqlite(db):
        return run_in_transaction(db, work)
    job = _Job(work)
    queue = _queue(db)
    with _writer_locks_guard:
        queue.append(job)
    with _writer_lock(db):
        if not job.done:
            with _writer_locks_guard:
                batch = list(queue)
                queue.clear()
            try:
                with db.atomic("IMMEDIATE"):
                    if len(batch) == 1:  # alone (the usual case): its error rolls back the whole transaction
                        job.result = work()
                    else:
                        for each in batch:
                            try:
                                with db.atomic():  # a savepoint inside the shared transaction
                                    each.result = each.work()
                            except Exception as exc:
                                each.error = exc
            except BaseException as exc:  # the commit (or a lone body) failed: nobody's work is durable
                for each in batch:
                    each.error, each.result = exc, None
                raise
            finally:
                for each in batch:
                    each.done = True
    if job.error is not None:
        raise job.error
    return job.result


def run_in_transaction(db: pw.Database, work: Callable[[], T], attempts: int = 8) -> T:
    """Run ``work`` in one write transaction, again from the start after a deadlock.

    PostgreSQL and MariaDB may abort one of two transactions that wait on each
    other; nothing of the aborted one was written, so running it again is safe.
    """
    sqlite = is_sqlite(db)
    for attempt in range(attempts):
        try:
            if sqlite:  # write_transaction's, without its generator (this is every reservation's path)
                with _writer_lock(db), db.atomic("IMMEDIATE"):
                    return work()
            with db.atomic():
                return work()
        except (pw.OperationalError, pw.InternalError) as exc:
            if attempt == attempts - 1 or not is_retryable(exc):
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
        except pw.DatabaseError as exc:  # e.g. sqlite:////etc/passwd: "file is not a database"
            raise SettingsError(
                f"database_url names {db.database}, which is not a budget database ({exc}); point "
                "database_url at the budget database or at a new file"
            ) from None
    try:
        return _create_or_upgrade(db)
    except (pw.ProgrammingError, pw.OperationalError, pw.InternalError) as exc:
        if not _forbidden(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreUnavailable(
            f"the budget's database user may not create or upgrade its tables ({first}); grant it CREATE on "
            "the schema (PostgreSQL) or CREATE, ALTER, INDEX and CREATE ROUTINE on the database (MariaDB), or let "
            "a user who may open the store once (e.g. atlas-budget doctor with that user's database_url)"
        ) from None


#: PostgreSQL's insufficient_privilege; MariaDB's "command denied" (1142) and "access denied to database" (1044).
_FORBIDDEN_PG = {"42501"}
_FORBIDDEN_MYSQL = {1142, 1044}


def _forbidden(exc: BaseException) -> bool:
    return driver_error_in(exc, _FORBIDDEN_PG, _FORBIDDEN_MYSQL)


def _create_or_upgrade(db: pw.Database) -> int:
    with _schema_lock(db), write_transaction(db):
        current = schema_version(db)
        if current is None:
            db.create_tables(ALL_MODELS, safe=True)
            SchemaVersion.delete().execute()
            SchemaVersion.create(version=SCHEMA_VERSION)
            Meta.insert(name="policy_generation", value=0).on_conflict_ignore().execute()
            server_routines(db)
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
        if not is_sqlite(db) and not routines.present(db):
            server_routines(db)  # refused when the store was made, or dropped since: a right granted later counts
        return current
