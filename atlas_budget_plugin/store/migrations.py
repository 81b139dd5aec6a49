"""Schema migrations: each step upgrades a database from one ``SCHEMA_VERSION`` to the next.

Steps run from ``store.database.initialize`` under the schema lock (one process at a
time) and are idempotent, so a step interrupted half-way simply runs again.
"""

from __future__ import annotations

import peewee as pw

from . import routines
from .models import ScopeLink, exact_collation

#: The tables of schema version 1 (fixed: later tables are created exact from the start).
V1_TABLES = (
    "budget_meta",
    "budget_policy",
    "budget_spend_counter",
    "budget_hold",
    "budget_usage",
    "budget_usage_hourly",
    "budget_threshold_mark",
    "budget_alert_config",
    "budget_alert",
    "budget_delivery",
    "budget_audit",
)


def inexact_columns(db: pw.Database, table: str, collation: str) -> list[str]:
    """Text columns of ``table`` (MariaDB/MySQL) whose collation is not ``collation``."""
    rows = db.execute_sql(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = %s AND COLLATION_NAME IS NOT NULL AND COLLATION_NAME <> %s",
        (table, collation),
    ).fetchall()
    return [row[0] for row in rows]


def exact_text(db: pw.Database) -> None:
    """1 -> 2: every text column compares exactly (case, trailing spaces) on MariaDB/MySQL.

    Version 1 tables took the server's default collation (``utf8mb4_general_ci``):
    ``'ACME' = 'acme '`` was true in WHERE, GROUP BY and unique keys. Each table is
    converted to the binary NO PAD collation the models now declare. Binary
    comparison is finer than the old one, so no unique key can fail: rows only
    become distinct. PostgreSQL and SQLite already compare exactly: nothing to do.

    The conversion rebuilds each table (MariaDB copies it, blocking writes to it
    meanwhile); tables already converted are skipped, so the step is idempotent.
    """
    collation = exact_collation(db)
    if collation is None:
        return
    for table in V1_TABLES:
        if db.table_exists(table) and inexact_columns(db, table, collation):
            db.execute_sql(f"ALTER TABLE `{table}` CONVERT TO CHARACTER SET utf8mb4 COLLATE {collation}")


def policy_options_and_counter_parts(db: pw.Database) -> None:
    """2 -> 3: ``budget_policy.options_json`` (sub-limits, throttle), ``budget_spend_counter.part``, the
    ``budget_scope_link`` table and ``budget_usage.lineage_json`` (scope hierarchy).

    The counters' unique key becomes (policy_id, part, window_start), so a policy's sub-limits
    and its throttle's minute buckets have counters of their own. Each change is made only if
    it is missing, so an interrupted step runs again safely. Existing rows keep their meaning:
    ``options_json`` = ``{}`` (no sub-limits), ``part`` = ``''`` (the policy's own limit).
    """
    collation = exact_collation(db)
    collate = f" COLLATE {collation}" if collation else ""
    quote = "`" if isinstance(db, pw.MySQLDatabase) else '"'
    columns = [
        ("budget_policy", "options_json", f"TEXT{collate} NOT NULL DEFAULT '{{}}'"),
        ("budget_spend_counter", "part", f"VARCHAR(250){collate} NOT NULL DEFAULT ''"),
        ("budget_usage", "lineage_json", f"TEXT{collate} NOT NULL DEFAULT '{{}}'"),
    ]
    if not db.table_exists("budget_scope_link"):
        db.create_tables([ScopeLink])
    for table, column, definition in columns:
        if column not in {c.name for c in db.get_columns(table)}:
            db.execute_sql(f"ALTER TABLE {quote}{table}{quote} ADD COLUMN {quote}{column}{quote} {definition}")
    indexes = {i.name for i in db.get_indexes("budget_spend_counter")}
    old, new = "budget_spend_counter_policy_id_window_start", "budget_spend_counter_policy_id_part_window_start"
    if new not in indexes:
        db.execute_sql(
            f"CREATE UNIQUE INDEX {quote}{new}{quote} ON {quote}budget_spend_counter{quote} "
            f"({quote}policy_id{quote}, {quote}part{quote}, {quote}window_start{quote})"
        )
    if old in indexes:
        on = f" ON {quote}budget_spend_counter{quote}" if isinstance(db, pw.MySQLDatabase) else ""
        db.execute_sql(f"DROP INDEX {quote}{old}{quote}{on}")


def server_routines(db: pw.Database) -> None:
    """3 -> 4: the server-side reserve and settle routines (PostgreSQL, MariaDB; see ``store/routines.py``).

    Where the server refuses to create them the step still completes (with a warning):
    the ledger then keeps its Python path. Nothing to do on SQLite.
    """
    routines.install(db)


__all__ = ["V1_TABLES", "exact_text", "inexact_columns", "policy_options_and_counter_parts", "server_routines"]
