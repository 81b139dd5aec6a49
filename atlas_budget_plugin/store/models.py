"""Peewee models of the budget store; money columns are integer nano-units, times naive UTC."""

from __future__ import annotations

import peewee as pw

#: Bound at run time to the database chosen by ``database_url`` (see ``store.database``).
db_proxy = pw.DatabaseProxy()

#: Bump when the schema changes and add a step to ``store.database.MIGRATIONS``.
SCHEMA_VERSION = 1


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

    name = pw.CharField(max_length=64, unique=True)
    value = pw.BigIntegerField(default=0)

    class Meta:
        table_name = "budget_meta"


class PolicyRow(BaseModel):
    tenant = pw.CharField(max_length=200)
    name = pw.CharField(max_length=200)
    scope_json = pw.TextField(default="{}")
    scope_key = pw.CharField(max_length=500, default="")
    period = pw.CharField(max_length=32)
    timezone = pw.CharField(max_length=64, default="UTC")
    limit_units = pw.BigIntegerField()
    currency = pw.CharField(max_length=3, default="USD")
    enforcement = pw.CharField(max_length=16, null=True)
    thresholds_json = pw.TextField(default="[]")
    rollover_cap_units = pw.BigIntegerField(default=0)
    alternatives_json = pw.TextField(default="[]")
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
    window_start = pw.DateTimeField()
    spent_units = pw.BigIntegerField(default=0)
    reserved_units = pw.BigIntegerField(default=0)
    carry_units = pw.BigIntegerField(default=0)

    class Meta:
        table_name = "budget_spend_counter"
        indexes = ((("policy_id", "window_start"), True),)


class Hold(BaseModel):
    """An amount reserved for a call on one counter until the call settles or the hold expires."""

    call_id = pw.CharField(max_length=200, index=True)
    counter_id = pw.IntegerField()
    policy_id = pw.IntegerField()
    amount_units = pw.BigIntegerField()
    created_at = pw.DateTimeField()
    expires_at = pw.DateTimeField(index=True)

    class Meta:
        table_name = "budget_hold"


class UsageRow(BaseModel):
    call_id = pw.CharField(max_length=200, unique=True)
    tenant = pw.CharField(max_length=200)
    actor = pw.CharField(max_length=200, null=True)
    provider = pw.CharField(max_length=100)
    model = pw.CharField(max_length=200)
    operation = pw.CharField(max_length=50)
    category = pw.CharField(max_length=100, null=True)
    tags_json = pw.TextField(default="{}")
    input_tokens = pw.BigIntegerField(default=0)
    output_tokens = pw.BigIntegerField(default=0)
    cache_read_tokens = pw.BigIntegerField(default=0)
    cache_write_tokens = pw.BigIntegerField(default=0)
    cost_units = pw.BigIntegerField()
    units_json = pw.TextField(default="{}")
    price_source = pw.CharField(max_length=200)
    error = pw.TextField(null=True)
    recorded_at = pw.DateTimeField()

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

    tenant = pw.CharField(max_length=200)
    dimension = pw.CharField(max_length=16)
    key = pw.CharField(max_length=200, column_name="dim_value")
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
    tenant = pw.CharField(max_length=200, index=True)
    policy = pw.CharField(max_length=200)
    config_json = pw.TextField()
    snoozed_until = pw.DateTimeField(null=True)
    created_at = pw.DateTimeField()

    class Meta:
        table_name = "budget_alert_config"


class AlertRow(BaseModel):
    """A triggered alert; unique per config and window, so it fires once even with many evaluators."""

    config_id = pw.IntegerField()
    tenant = pw.CharField(max_length=200, index=True)
    policy = pw.CharField(max_length=200)
    kind = pw.CharField(max_length=16)
    severity = pw.CharField(max_length=16)
    threshold = pw.IntegerField()
    window_start = pw.DateTimeField()
    window_end = pw.DateTimeField()
    spent_units = pw.BigIntegerField()
    limit_units = pw.BigIntegerField()
    message = pw.TextField()
    sinks_json = pw.TextField(default="[]")
    triggered_at = pw.DateTimeField()
    acknowledged_by = pw.CharField(max_length=200, null=True)
    acknowledged_at = pw.DateTimeField(null=True)
    resolved_at = pw.DateTimeField(null=True)

    class Meta:
        table_name = "budget_alert"
        indexes = ((("config_id", "window_start"), True),)


class DeliveryRow(BaseModel):
    """Delivery of one alert to one sink, retried with backoff; claimed by one evaluator at a time."""

    alert_id = pw.IntegerField()
    sink = pw.CharField(max_length=100)
    status = pw.CharField(max_length=16, default="pending")
    attempts = pw.IntegerField(default=0)
    last_error = pw.TextField(null=True)
    next_attempt_at = pw.DateTimeField(index=True)
    claimed_until = pw.DateTimeField(null=True)
    delivered_at = pw.DateTimeField(null=True)

    class Meta:
        table_name = "budget_delivery"
        indexes = ((("alert_id", "sink"), True),)


class AuditEntry(BaseModel):
    tenant = pw.CharField(max_length=200, index=True)
    actor = pw.CharField(max_length=200)
    action = pw.CharField(max_length=50)
    object_type = pw.CharField(max_length=50)
    object_id = pw.CharField(max_length=200)
    before_json = pw.TextField(null=True)
    after_json = pw.TextField(null=True)
    at = pw.DateTimeField()

    class Meta:
        table_name = "budget_audit"


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
]
