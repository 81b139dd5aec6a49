"""Budget domain types: actors, scopes, policies, usage records, reports, alerts and events."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hookspecs import LLMCall

from .money import Money
from .periods import parse_period, parse_timezone

Enforcement = Literal["block", "soft_block", "warn", "degrade"]
Role = Literal["budget:read", "budget:write", "budget:admin"]

#: Scope keys that are read from the call's tags (the host puts them there).
TAG_DIMENSIONS = ("team", "project", "session", "persona")
#: Call fields a scope, a report breakdown and an hourly rollup can be keyed by.
CALL_DIMENSIONS = ("actor", "provider", "model", "operation", "category")
#: The token counts of an LLMUsage, as stored with each usage record.
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
SCOPE_KEYS = CALL_DIMENSIONS + TAG_DIMENSIONS


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Actor(_Frozen):
    """Who is acting: a user id within one tenant, with roles. ``system`` is the host itself."""

    id: str
    tenant: str = "default"
    roles: frozenset[Role] = frozenset()

    SYSTEM_ID: ClassVar[str] = "system"

    @classmethod
    def system(cls, tenant: str = "default") -> Actor:
        return cls(id=cls.SYSTEM_ID, tenant=tenant, roles=frozenset({"budget:admin"}))

    @property
    def is_system(self) -> bool:
        return self.id == self.SYSTEM_ID


class Scope(_Frozen):
    """Which calls a policy covers; an empty scope is the whole tenant.

    Written in settings as ``{ actor = "alice", "tag.env" = "prod" }``.
    """

    actor: str | None = None
    provider: str | None = None
    model: str | None = None
    operation: str | None = None
    category: str | None = None
    team: str | None = None
    project: str | None = None
    session: str | None = None
    persona: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _split_tag_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        tags = dict(data.pop("tags", {}) or {})
        for key in [k for k in data if isinstance(k, str) and k.startswith("tag.")]:
            name = key[4:]
            if not name:
                raise ValueError("scope key 'tag.' needs a tag name, e.g. 'tag.env'")
            tags[name] = data.pop(key)
        unknown = [k for k in data if k not in SCOPE_KEYS]
        if unknown:
            raise ValueError(f"unknown scope key {unknown[0]!r}; allowed: {', '.join(SCOPE_KEYS)}, tag.<name>")
        data["tags"] = tags
        return data

    def matches(self, call: LLMCall) -> bool:
        """True when ``call`` falls inside this scope."""
        for key in CALL_DIMENSIONS:
            wanted = getattr(self, key)
            if wanted is not None and getattr(call, key) != wanted:
                return False
        for key in TAG_DIMENSIONS:
            wanted = getattr(self, key)
            if wanted is not None and call.tags.get(key) != wanted:
                return False
        return all(call.tags.get(k) == v for k, v in self.tags.items())

    def has(self, other: Scope) -> bool:
        """True when this scope sets every key ``other`` sets, to the same value (``Scope()`` is in all)."""
        mine = self.as_dict()
        return all(mine.get(k) == v for k, v in other.as_dict().items())

    def as_dict(self) -> dict[str, str]:
        """Flat form, as written in settings (``tag.<k>`` keys for tags)."""
        flat = {k: v for k in SCOPE_KEYS if (v := getattr(self, k)) is not None}
        flat.update({f"tag.{k}": v for k, v in sorted(self.tags.items())})
        return flat

    def key(self) -> str:
        """Canonical text of the scope, for duplicate detection."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.as_dict().items()))


class Policy(BaseModel):
    """A budget limit on a scope for a period."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: int | None = None
    name: str = Field(min_length=1, max_length=200)
    tenant: str = Field(default="default", min_length=1)
    scope: Scope = Field(default_factory=Scope)
    period: str = "month"
    timezone: str = "UTC"
    limit: Money
    currency: str = Field(default="USD", min_length=3, max_length=3)
    enforcement: Enforcement | None = None
    thresholds: list[int] = Field(default_factory=lambda: [50, 80, 100])
    rollover_cap: Money = Decimal(0)
    alternatives: list[str] = Field(default_factory=list)
    enabled: bool = True
    priority: int = 0
    version: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @field_validator("period")
    @classmethod
    def _period(cls, value: str) -> str:
        return parse_period(value).name

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        parse_timezone(value)
        return value

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: Decimal) -> Decimal:
        if value <= 0:
            raise ValueError(f"limit must be greater than 0, got {value}")
        return value

    @field_validator("rollover_cap")
    @classmethod
    def _cap(cls, value: Decimal) -> Decimal:
        if value < 0:
            raise ValueError(f"rollover_cap must not be negative, got {value}")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        return value.upper()

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: list[int]) -> list[int]:
        for pct in value:
            if not 0 < pct <= 1000:
                raise ValueError(f"thresholds are percents between 1 and 1000, got {pct}")
        return sorted(set(value))


class Reservation(_Frozen):
    """What ``check_budget`` held for one call on one policy."""

    policy_id: int
    amount: Decimal


class PolicyStanding(_Frozen):
    """A policy's state for one call: spend, holds and limit in its current window."""

    policy_id: int
    policy_name: str
    enforcement: Enforcement
    window_start: datetime
    window_end: datetime
    limit: Decimal
    spent: Decimal
    reserved: Decimal
    requested: Decimal

    @property
    def remaining_after(self) -> Decimal:
        return self.limit - self.spent - self.reserved - self.requested

    @property
    def fits(self) -> bool:
        return self.remaining_after >= 0


class BudgetDecision(_Frozen):
    """The result of ``check_budget``: allowed or not, and why."""

    allowed: bool
    reason: str
    estimated_cost: Decimal
    price_source: str
    deciding_policy: str | None = None
    warnings: tuple[str, ...] = ()
    standings: tuple[PolicyStanding, ...] = ()
    reserved: bool = False
    alternative_model: str | None = None
    alternative_estimate: Decimal | None = None


class UsageRecord(_Frozen):
    """One recorded call, as stored."""

    call_id: str
    tenant: str
    actor: str | None
    provider: str
    model: str
    operation: str
    category: str | None
    tags: dict[str, str]
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost: Decimal
    price_source: str
    units: dict[str, Decimal] = Field(default_factory=dict)
    error: str | None = None
    recorded_at: datetime


class UsageSummary(_Frozen):
    """Totals over a scope and period (money fields are exact Decimals)."""

    tenant: str
    period: str
    start: datetime
    end: datetime
    total_cost: Decimal
    calls: int
    input_tokens: int
    output_tokens: int
    policy: str | None = None
    limit: Decimal | None = None
    percent_used: Decimal | None = None

    @property
    def average_cost(self) -> Decimal:
        """Mean cost per call (exact quotient, rounded to the store's precision)."""
        return (self.total_cost / self.calls).quantize(Decimal("1e-9")) if self.calls else Decimal(0)


class SpendRow(_Frozen):
    """One group of a breakdown, e.g. one provider."""

    key: str | None
    total_cost: Decimal
    calls: int
    input_tokens: int = 0
    output_tokens: int = 0


class PeriodComparison(_Frozen):
    """The current period so far next to the previous one."""

    current: UsageSummary
    previous: UsageSummary
    change: Decimal
    change_percent: Decimal | None


class Projection(_Frozen):
    """The current period's spend so far, extrapolated linearly to its end."""

    summary: UsageSummary
    elapsed_fraction: Decimal
    projected_cost: Decimal
    projected_percent: Decimal | None


class TrendPoint(_Frozen):
    start: datetime
    end: datetime
    total_cost: Decimal
    calls: int


AlertKind = Literal["actual", "forecast", "anomaly"]
Severity = Literal["info", "warning", "critical", "emergency"]


class AlertConfig(BaseModel):
    """When to raise an alert on a policy, and where to send it.

    ``actual``: spend reached ``threshold`` percent of the effective limit.
    ``forecast``: the period's spend so far, projected to its end, reaches it.
    ``anomaly``: spend in the last ``anomaly_window`` (hour or day) is at least
    ``threshold`` percent of its trailing average (e.g. 300 = three times usual),
    and at least ``anomaly_minimum``.
    """

    model_config = ConfigDict(extra="forbid")

    id: int | None = None
    policy: str = Field(min_length=1)
    tenant: str = "default"
    threshold: int = Field(gt=0, le=100_000)
    kind: AlertKind = "actual"
    severity: Severity = "warning"
    sinks: list[str] = Field(default_factory=list)
    cooldown: int = Field(default=0, ge=0, description="seconds after an alert before this config may fire again")
    anomaly_window: Literal["hour", "day"] = "hour"
    anomaly_baseline: int = Field(default=24, ge=1, le=1000, description="trailing windows averaged")
    anomaly_minimum: Money = Decimal("0.01")
    snoozed_until: datetime | None = None
    enabled: bool = True


class Alert(_Frozen):
    """A triggered alert, as handed to sinks."""

    id: int
    config_id: int
    tenant: str
    policy: str
    kind: str
    severity: str
    threshold: int
    window_start: datetime
    spent: Decimal
    limit: Decimal
    message: str
    sinks: tuple[str, ...] = ()
    triggered_at: datetime
    window_end: datetime | None = None
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.resolved_at is None and self.acknowledged_at is None


class Delivery(_Frozen):
    """One alert's delivery to one sink: pending, delivered, or failed after every retry."""

    alert_id: int
    sink: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None


# --- events on the bus (topic -> payload type) --------------------------------------------


class BudgetEvent(_Frozen):
    topic: str
    tenant: str
    at: datetime = Field(default_factory=utcnow)


class BudgetPolicyEvent(BudgetEvent):
    policy: Policy
    actor: str


class BudgetUsageEvent(BudgetEvent):
    record: UsageRecord


class BudgetThresholdEvent(BudgetEvent):
    policy_id: int
    policy_name: str
    threshold: int
    window_start: datetime
    spent: Decimal
    limit: Decimal


class BudgetAlertEvent(BudgetEvent):
    alert: Alert
    actor: str | None = None


class BudgetLimitEvent(BudgetEvent):
    policy_id: int
    policy_name: str
    call_id: str | None = None
    spent: Decimal
    limit: Decimal
    requested: Decimal
