"""Peewee models of the budget store; money columns are integer nano-units, times naive UTC."""

from __future__ import annotations

import weakref
from typing import Any

import peewee as pw

#: Bound at run time to the database chosen by ``database_url`` (see ``store.database``).
db_proxy = pw.DatabaseProxy()

#: Bump when the schema changes and add a step to ``store.database.MIGRATIONS``.
#: 2: every text column compares exactly on MariaDB/MySQL too (``store.migrations``).
#: 3: policies keep sub-limits and throttle settings (``options_json``); counters have a ``part``; scope
#:    hierarchy links (``budget_scope_link``) and the ancestors each call was attributed to (``lineage_json``).
SCHEMA_VERSION = 4

#: Binary collations of MariaDB/MySQL, best first. Text must compare exactly (``'acme' != 'ACME'``,
#: ``'acme' != 'acme '``) as it does on PostgreSQL and SQLite; ``utf8mb4_bin`` alone is not enough:
#: it is PAD SPACE (trailing spaces ignored). MariaDB has ``utf8mb4_nopad_bin``, MySQL 8 ``utf8mb4_0900_bin``.
EXACT_COLLATIONS = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin", "utf8mb4_bin")
#: The collation found on each MariaDB/MySQL database (asked once per Database object).
_chosen: weakref.WeakKeyDictionary[pw.Database, str] = weakref.WeakKeyDictionary()


def exact_collation(db: pw.Database | None) -> str | None:
    """The collation text columns get on ``db`` (MariaDB/MySQL), None on PostgreSQL and SQLite.

    PostgreSQL (deterministic collations) and SQLite (``BINARY``) already compare
    text byte for byte, so only MariaDB/MySQL columns name a collation.
    """
    db = getattr(db, "obj", db)  # a DatabaseProxy stands for the database bound to it
    if not isinstance(db, pw.MySQLDatabase):
        return None
    chosen = _chosen.get(db)
    if chosen is None:
        marks = ", ".join(["%s"] * len(EXACT_COLLATIONS))
        sql = f"SELECT COLLATION_NAME FROM information_schema.COLLATIONS WHERE COLLATION_NAME IN ({marks})"
        present = {row[0] for row in db.execute_sql(sql, EXACT_COLLATIONS).fetchall()}
        chosen = next((name for name in EXACT_COLLATIONS if name in present), EXACT_COLLATIONS[-1])
        _chosen[db] = chosen
    return chosen


def _with_exact_collation(field: pw.Field, column: pw.NodeList) -> pw.NodeList:
    """``column`` (a column definition) with the exact collation on MariaDB/MySQL, unchanged elsewhere."""
    collation = exact_collation(field.model._meta.database)
    return pw.NodeList((column, pw.SQL(f"COLLATE {collation}"))) if collation else column


class ExactCharField(pw.CharField):
    """VARCHAR compared exactly on every backend: ids, tenants, actors, names, call ids, dimension values."""

    def ddl(self, ctx: Any) -> pw.NodeList:
        return _with_exact_collation(self, super().ddl(ctx))


class ExactTextField(pw.TextField):
    """TEXT compared exactly on every backend (JSON of tags and scopes, messages)."""

    def ddl(self, ctx: Any) -> pw.NodeList:
        return _with_exact_collation(self, super().ddl(ctx))


class BaseModel(pw.Model):
    id = pw.AutoField()

    class Meta:
        database = db_proxy
        legacy_table_names = False


class SchemaVersion(BaseModel):
    """One row: the schema version this database was created or migrated to."""

    version = pw.IntegerField()


class Meta(BaseModel):
    """Small named counters; ``policy_generation`` changes whenever any policy changes."""

    name = ExactCharField(max_length=64, unique=True)
    value = pw.BigIntegerField(default=0)

    class Meta:
        table_name = "budget_meta"


class PolicyRow(BaseModel):
    tenant = ExactCharField(max_length=200)
    name = ExactCharField(max_length=200)
    scope_json = ExactTextField(default="{}")
    scope_key = ExactCharField(max_length=500, default="")
    period = ExactCharField(max_length=32)
    timezone = ExactCharField(max_length=64, default="UTC")
    limit_units = pw.BigIntegerField()
    currency = ExactCharField(max_length=3, default="USD")
    enforcement = ExactCharField(max_length=16, null=True)
    thresholds_json = ExactTextField(default="[]")
    rollover_cap_units = pw.BigIntegerField(default=0)
    alternatives_json = ExactTextField(default="[]")
    options_json = ExactTextField(default="{}", constraints=[pw.SQL("DEFAULT '{}'")])  # sub-limits, throttle
    enabled = pw.BooleanField(default=True)
    priority = pw.IntegerField(default=0)
    version = pw.IntegerField(default=1)
    created_at = pw.DateTimeField()
    updated_at = pw.DateTimeField()

    class Meta:
        table_name = "budget_policy"
        indexes = ((("tenant", "name"), True),)


class SpendCounter(BaseModel):
    """Spend and holds of one policy in one window (a rolling window sums its hourly counters)."""

    policy_id = pw.IntegerField()
    #: '' for the policy's own limit; ``provider:<name>`` / ``model:<name>`` for a sub-limit; ``rate`` for the
    #: admissions of one minute of a ``throttle`` policy (money in ``spent_units``, calls in ``carry_units``).
    part = ExactCharField(max_length=250, default="", constraints=[pw.SQL("DEFAULT ''")])
    window_start = pw.DateTimeField()
    spent_units = pw.BigIntegerField(default=0)
    reserved_units = pw.BigIntegerField(default=0)
    carry_units = pw.BigIntegerField(default=0)

    class Meta:
        table_name = "budget_spend_counter"
        indexes = ((("policy_id", "part", "window_start"), True),)


class Hold(BaseModel):
    """An amount reserved for a call on one counter until the call settles or the hold expires."""

    call_id = ExactCharField(max_length=200, index=True)
    counter_id = pw.IntegerField()
    policy_id = pw.IntegerField()
    amount_units = pw.BigIntegerField()
    created_at = pw.DateTimeField()
    expires_at = pw.DateTimeField(index=True)

    class Meta:
        table_name = "budget_hold"


class UsageRow(BaseModel):
    call_id = ExactCharField(max_length=200, unique=True)
    tenant = ExactCharField(max_length=200)
    actor = ExactCharField(max_length=200, null=True)
    provider = ExactCharField(max_length=100)
    model = ExactCharField(max_length=200)
    operation = ExactCharField(max_length=50)
    category = ExactCharField(max_length=100, null=True)
    tags_json = ExactTextField(default="{}")
    input_tokens = pw.BigIntegerField(default=0)
    output_tokens = pw.BigIntegerField(default=0)
    cache_read_tokens = pw.BigIntegerField(default=0)
    cache_write_tokens = pw.BigIntegerField(default=0)
    cost_units = pw.BigIntegerField()
    units_json = ExactTextField(default="{}")
    price_source = ExactCharField(max_length=200)
    error = ExactTextField(null=True)
    recorded_at = pw.DateTimeField()
    #: Tag values the call was attributed to through the scope hierarchy when recorded: {"team": ["red"]}.
    lineage_json = ExactTextField(default="{}", constraints=[pw.SQL("DEFAULT '{}'")])

    class Meta:
        table_name = "budget_usage"
        indexes = ((("tenant", "recorded_at"), False),)


class UsageHourly(BaseModel):
    """Usage summed per tenant, UTC hour and one dimension value (``*`` = the whole tenant).

    Updated in the same transaction as each usage row (one row for the tenant
    total and one per dimension: actor, provider, model, operation, category), so
    reports read hundreds of buckets instead of millions of rows, and totals stay
    exact after raw rows are pruned. A missing actor or category is the key ''.
    """

    tenant = ExactCharField(max_length=200)
    dimension = ExactCharField(max_length=16)
    key = ExactCharField(max_length=200, column_name="dim_value")
    hour = pw.DateTimeField()
    calls = pw.BigIntegerField(default=0)
    cost_units = pw.BigIntegerField(default=0)
    input_tokens = pw.BigIntegerField(default=0)
    output_tokens = pw.BigIntegerField(default=0)
    cache_read_tokens = pw.BigIntegerField(default=0)
    cache_write_tokens = pw.BigIntegerField(default=0)

    class Meta:
        table_name = "budget_usage_hourly"
        indexes = ((("tenant", "dimension", "key", "hour"), True),)


class ThresholdMark(BaseModel):
    """A threshold already announced for a policy window, so it is announced once."""

    policy_id = pw.IntegerField()
    window_start = pw.DateTimeField()
    threshold = pw.IntegerField()

    class Meta:
        table_name = "budget_threshold_mark"
        indexes = ((("policy_id", "window_start", "threshold"), True),)


class AlertConfigRow(BaseModel):
    tenant = ExactCharField(max_length=200, index=True)
    policy = ExactCharField(max_length=200)
    config_json = ExactTextField()
    snoozed_until = pw.DateTimeField(null=True)
    created_at = pw.DateTimeField()

    class Meta:
        table_name = "budget_alert_config"


class AlertRow(BaseModel):
    """A triggered alert; unique per config and window, so it fires once even with many evaluators."""

    config_id = pw.IntegerField()
    tenant = ExactCharField(max_length=200, index=True)
    policy = ExactCharField(max_length=200)
    kind = ExactCharField(max_length=16)
    severity = ExactCharField(max_length=16)
    threshold = pw.IntegerField()
    window_start = pw.DateTimeField()
    window_end = pw.DateTimeField()
    spent_units = pw.BigIntegerField()
    limit_units = pw.BigIntegerField()
    message = ExactTextField()
    sinks_json = ExactTextField(default="[]")
    triggered_at = pw.DateTimeField()
    acknowledged_by = ExactCharField(max_length=200, null=True)
    acknowledged_at = pw.DateTimeField(null=True)
    resolved_at = pw.DateTimeField(null=True)

    class Meta:
        table_name = "budget_alert"
        indexes = ((("config_id", "window_start"), True),)


class DeliveryRow(BaseModel):
    """Delivery of one alert to one sink, retried with backoff; claimed by one evaluator at a time."""

    alert_id = pw.IntegerField()
    sink = ExactCharField(max_length=100)
    status = ExactCharField(max_length=16, default="pending")
    attempts = pw.IntegerField(default=0)
    last_error = ExactTextField(null=True)
    next_attempt_at = pw.DateTimeField(index=True)
    claimed_until = pw.DateTimeField(null=True)
    delivered_at = pw.DateTimeField(null=True)

    class Meta:
        table_name = "budget_delivery"
        indexes = ((("alert_id", "sink"), True),)


class AuditEntry(BaseModel):
    tenant = ExactCharField(max_length=200, index=True)
    actor = ExactCharField(max_length=200)
    action = ExactCharField(max_length=50)
    object_type = ExactCharField(max_length=50)
    object_id = ExactCharField(max_length=200)
    before_json = ExactTextField(null=True)
    after_json = ExactTextField(null=True)
    at = pw.DateTimeField()

    class Meta:
        table_name = "budget_audit"


class ScopeLink(BaseModel):
    """A scope value that belongs to another (``actor=alice`` -> ``team=red``), per tenant."""

    tenant = ExactCharField(max_length=200)
    child = ExactCharField(max_length=250)
    parent = ExactCharField(max_length=250)
    created_at = pw.DateTimeField()

    class Meta:
        table_name = "budget_scope_link"
        indexes = ((("tenant", "child", "parent"), True),)


ALL_MODELS: list[type[BaseModel]] = [
    SchemaVersion,
    Meta,
    PolicyRow,
    SpendCounter,
    Hold,
    UsageRow,
    UsageHourly,
    ThresholdMark,
    AlertConfigRow,
    AlertRow,
    DeliveryRow,
    AuditEntry,
    ScopeLink,
]
