"""Budget domain types: actors, scopes, policies, usage records, reports, alerts and events."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, ClassVar, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from hookspecs import LLMCall

from .exceptions import ValidationError
from .money import MAX_AMOUNT, Money, parse_money
from .periods import Period, parse_period, parse_timezone

Enforcement = Literal["block", "soft_block", "warn", "degrade", "throttle"]
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


# --- bounds of what enters through the API -------------------------------------------------
# Checked where a value enters (model validators, service entry points), so a value the store
# cannot hold is refused with one clear message before anything is written, never by the
# database halfway through a change. Text lengths mirror the columns in store/models.py.

#: Longest tenant, actor id, policy name and call id (VARCHAR(200) columns).
MAX_TEXT = 200
#: Longest value of each call field, as the usage table stores it.
CALL_FIELD_LENGTHS = {"actor": 200, "provider": 100, "model": 200, "operation": 50, "category": 100}
#: Longest canonical scope text (the policy table's ``scope_key`` column).
MAX_SCOPE_KEY = 500
#: Longest tag name and tag value, and most tags, on a call or in a scope (kept as JSON text).
MAX_TAG_NAME, MAX_TAG_VALUE, MAX_TAGS, MAX_TAGS_JSON = 100, 1000, 50, 16_000
#: Policy priorities: enough room to order any set of policies, far inside a 32-bit column.
MAX_PRIORITY = 1_000_000
#: Largest id the store hands out (signed 64-bit); larger or negative ids cannot exist.
MAX_ID = 2**63 - 1
#: Longest rolling window: a leap year of hourly counters.
MAX_ROLLING_HOURS = 366 * 24
#: Most token or unit count one call may report (a trillion); sums of many still fit 64 bits.
MAX_COUNT = 10**12
#: Longest error text and price source kept with a usage record.
MAX_ERROR, MAX_PRICE_SOURCE = 2000, 200
#: Most buckets one trend report returns, and most records one ``list_usage`` page returns.
MAX_TREND_PERIODS, MAX_LIST_LIMIT = 1000, 10_000
#: Moments the reports accept for ``now`` and ranges (window arithmetic must stay inside datetime's range).
MIN_MOMENT = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_MOMENT = datetime(9000, 1, 1, tzinfo=timezone.utc)


def check_text(value: str, field: str, max_length: int, min_length: int = 0) -> str:
    """``value`` if the store can keep it: no NUL, no lone surrogate, ``min_length``..``max_length`` characters."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be text, got {type(value).__name__} {value!r}"[:300])
    if "\x00" in value:
        raise ValueError(f"{field} contains a NUL character (\\x00), which the store cannot keep; remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{field} contains a lone surrogate ({value[exc.start]!r} at position {exc.start}), which is not "
            "valid Unicode text; pass well-formed text"
        ) from None
    if not min_length <= len(value) <= max_length:
        size = str(max_length) if min_length == max_length else f"{min_length} to {max_length}"
        raise ValueError(
            f"{field} must have {size} characters, got {len(value)}"
            + (f" ({value[:40]!r}...)" if len(value) > 40 else f" ({value!r})")
        )
    return value


def check_count(value: Any, field: str, maximum: int = MAX_COUNT) -> int:
    """A whole number from 0 to ``maximum`` (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be a whole number from 0 to {maximum:,}, got {value!r}"[:300])
    if not 0 <= value <= maximum:
        raise ValueError(f"{field} must be a whole number from 0 to {maximum:,}, got {value}"[:300])
    return value


def bounded_period(value: str) -> Period:
    """Parse a period name, refusing rolling windows longer than :data:`MAX_ROLLING_HOURS`."""
    check_text(value, "period", 64, min_length=1)
    text = value.strip().lower()
    match = _ROLLING_COUNT.match(text)
    # The count is checked before parsing so a 30-digit count cannot overflow window arithmetic.
    if match and (
        len(match.group(1)) > 7 or int(match.group(1)) * (24 if match.group(2) == "d" else 1) > MAX_ROLLING_HOURS
    ):
        raise ValueError(
            f"rolling window {value!r} is too long; allowed: 1h to {MAX_ROLLING_HOURS}h ({MAX_ROLLING_HOURS // 24}d)"
        )
    return parse_period(value)


_ROLLING_COUNT = re.compile(r"^(?:rolling[:_])?(\d+)([hd])$")  # ATLAS writes rolling_30d


def is_store_id(value: Any, what: str) -> bool:
    """True when ``value`` can be an id in the store (1..2**63-1); a non-integer is a ValidationError.

    Out-of-range ids are simply not found: the services answer NotFoundError, as for any missing id.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{what} must be a whole number, got {type(value).__name__} {value!r}"[:300])
    return 1 <= value <= MAX_ID


def check_moment(value: Any, field: str) -> datetime:
    """A timezone-aware datetime from 1970 to 9000 (reports and ranges)."""
    if not isinstance(value, datetime):
        raise ValidationError(f"{field} must be a datetime, got {type(value).__name__} {value!r}"[:300])
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{field} must be timezone-aware, e.g. 2026-03-01T00:00+00:00, got {value}")
    if not MIN_MOMENT <= value < MAX_MOMENT:
        raise ValidationError(
            f"{field} must be from {MIN_MOMENT:%Y-%m-%d} to before {MAX_MOMENT:%Y-%m-%d}, got {value}"
        )
    return value


def scope_arg(scope: Any, what: str = "scope") -> Scope:
    """A scope given to a service (Scope, dict or None) as a Scope; a bad one is one ValidationError."""
    if isinstance(scope, Scope):
        return scope
    try:
        return Scope.model_validate(scope or {})
    except pydantic.ValidationError as exc:
        raise ValidationError.from_pydantic(exc, what) from None


def policy_filters(filters: dict[str, Any] | None) -> dict[str, Any]:
    """``list_policies`` filters with each value validated (and normalised) as the policy field it names."""
    if not filters:
        return {}
    allowed = ", ".join(Policy.model_fields)
    template = Policy(name="filter", limit=Decimal(1))
    checked = {}
    for key, value in filters.items():
        if key not in Policy.model_fields:
            raise ValidationError(f"unknown policy filter {str(key)[:100]!r}; allowed: {allowed}")
        try:
            setattr(template, key, value)  # validate_assignment runs the field's own checks
        except pydantic.ValidationError as exc:
            raise ValidationError.from_pydantic(exc, "policy filter") from None
        checked[key] = getattr(template, key)
    return checked


def check_zone(name: Any) -> str:
    """An IANA timezone name given to a report (ValidationError naming the fix otherwise)."""
    try:
        parse_timezone(check_text(name, "timezone", 64, min_length=1))
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    return str(name)


def check_number(value: Any, field: str, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high`` given to a service (ValidationError with the range otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"{field} must be a whole number from {low:,} to {high:,}, got {value!r}"[:300])
    return value


def _tags(tags: Any, what: str) -> None:
    if len(tags) > MAX_TAGS:
        raise ValueError(f"{what} has {len(tags)} tags; at most {MAX_TAGS} are allowed")
    for name, tag in tags.items():
        check_text(name, f"{what} tag name", MAX_TAG_NAME, min_length=1)
        check_text(tag, f"{what} tag {name!r}", MAX_TAG_VALUE)
    # Tags are kept as JSON text (\\u-escaped), which must fit a MySQL TEXT column (64 KiB).
    written = len(json.dumps(dict(tags), sort_keys=True))
    if written > MAX_TAGS_JSON:
        raise ValueError(f"{what} tags take {written} characters as JSON; at most {MAX_TAGS_JSON} are allowed")


def check_call(call: LLMCall) -> None:
    """Refuse a call the store cannot record: NUL, lone surrogates, too-long fields, absurd token counts.

    Raises ValidationError naming the field; the host contract (``hookspecs``) checks types and signs.
    """
    try:
        check_text(call.call_id, "LLMCall.call_id", MAX_TEXT, min_length=1)
        check_text(call.tenant, "LLMCall.tenant", MAX_TEXT, min_length=1)
        for name, length in CALL_FIELD_LENGTHS.items():
            value = getattr(call, name)
            if value is not None:
                check_text(value, f"LLMCall.{name}", length)
        _tags(call.tags, "LLMCall")
        for name in ("input_tokens", "max_output_tokens"):
            if getattr(call, name) is not None:
                check_count(getattr(call, name), f"LLMCall.{name}")
        if call.estimated_cost is not None:
            parse_money(call.estimated_cost, "LLMCall.estimated_cost")
    except ValueError as exc:
        raise ValidationError(f"{exc} (call {call.call_id[:80]!r})") from None


def check_cost(amount: Any, field: str = "cost") -> Decimal:
    """A cost or estimate as a Decimal from 0 to below MAX_AMOUNT (NaN, Infinity, negative and huge are refused)."""
    try:
        value = parse_money(amount, field)
    except (ValueError, ArithmeticError) as exc:
        raise ValidationError(f"{exc}; allowed: 0 to below {MAX_AMOUNT:,}") from None
    if value < 0:
        raise ValidationError(f"{field} must not be negative, got {value}; allowed: 0 to below {MAX_AMOUNT:,}")
    return value


def usage_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Checked usage metadata for ``record_usage``: every field bounded, units as Decimals.

    Everything is checked before anything is written, so a refused record leaves no row.
    """
    data = dict(metadata or {})
    unknown = set(data) - set(TOKEN_FIELDS) - {"price_source", "error", "units"}
    if unknown:
        raise ValidationError(
            f"unknown usage metadata {sorted(map(str, unknown))}; allowed: {', '.join(TOKEN_FIELDS)}, "
            "price_source, error, units"[:500]
        )
    try:
        checked: dict[str, Any] = {name: check_count(data.get(name, 0), name) for name in TOKEN_FIELDS}
        checked["price_source"] = check_text(data.get("price_source", "caller"), "price_source", MAX_PRICE_SOURCE, 1)
        error = data.get("error")
        checked["error"] = None if error is None else check_text(error, "error", MAX_ERROR)
        units = data.get("units") or {}
        if not isinstance(units, dict) or len(units) > MAX_TAGS:
            raise ValueError(f"units must map at most {MAX_TAGS} unit names to amounts, got {units!r}"[:300])
        checked["units"] = {
            check_text(name, "unit name", MAX_TAG_NAME, min_length=1): _unit_amount(name, amount)
            for name, amount in units.items()
        }
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    return checked


def _unit_amount(name: str, amount: Any) -> Decimal:
    if isinstance(amount, bool) or not isinstance(amount, (int, Decimal)):
        raise ValueError(f"units[{name!r}] must be an int or a Decimal, got {amount!r}"[:300])
    value = Decimal(amount)
    if not value.is_finite() or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"units[{name!r}] must be a finite amount from 0 to {MAX_COUNT:,}, got {amount}")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Actor(_Frozen):
    """Who is acting: a user id within one tenant, with roles. ``system`` is the host itself."""

    id: str
    tenant: str = "default"
    roles: frozenset[Role] = frozenset()

    SYSTEM_ID: ClassVar[str] = "system"

    @field_validator("id", "tenant")
    @classmethod
    def _text(cls, value: str, info: ValidationInfo) -> str:
        # The actor's id is written to the audit trail and its tenant to every row it touches.
        return check_text(value, f"actor {info.field_name}", MAX_TEXT, min_length=1)

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
            raise ValueError(
                f"unknown scope key {str(unknown[0])[:100]!r}; allowed: {', '.join(SCOPE_KEYS)}, tag.<name>"
            )
        data["tags"] = tags
        return data

    @model_validator(mode="after")
    def _bounded(self) -> Scope:
        # A scope key longer than its usage column could never match a call; the whole scope's
        # canonical text is a column of its own.
        for key in SCOPE_KEYS:
            value = getattr(self, key)
            if value is not None:
                check_text(value, f"scope {key}", CALL_FIELD_LENGTHS.get(key, MAX_TAG_VALUE))
        _tags(self.tags, "scope")
        if len(self.key()) > MAX_SCOPE_KEY:
            raise ValueError(f"the scope is {len(self.key())} characters written out; at most {MAX_SCOPE_KEY} allowed")
        return self

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

    id: int | None = Field(default=None, ge=1, le=MAX_ID)
    name: str = Field(min_length=1, max_length=MAX_TEXT)
    tenant: str = Field(default="default", min_length=1, max_length=MAX_TEXT)
    scope: Scope = Field(default_factory=Scope)
    period: str = "month"
    timezone: str = "UTC"
    limit: Money
    currency: str = Field(default="USD", min_length=3, max_length=3)
    enforcement: Enforcement | None = None
    thresholds: list[int] = Field(default_factory=lambda: [50, 80, 100], max_length=20)
    rollover_cap: Money = Decimal(0)
    alternatives: list[str] = Field(default_factory=list, max_length=20)
    enabled: bool = True
    priority: int = Field(default=0, ge=-MAX_PRIORITY, le=MAX_PRIORITY)
    #: Sub-limits inside the policy's limit, per provider and per model, enforced in the same step.
    provider_limits: dict[str, Money] = Field(default_factory=dict, max_length=50)
    model_limits: dict[str, Money] = Field(default_factory=dict, max_length=200)
    #: ``throttle`` enforcement: from this percent of the limit on, calls are admitted at most at these rates.
    throttle_after: int = Field(default=80, ge=1, le=100)
    calls_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    spend_per_minute: Money | None = None
    version: int = Field(default=0, ge=0, le=2**31 - 1)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @field_validator("provider_limits", "model_limits")
    @classmethod
    def _sub_limits(cls, value: dict[str, Decimal], info: ValidationInfo) -> dict[str, Decimal]:
        kind = "provider" if info.field_name == "provider_limits" else "model"
        for name, amount in value.items():
            check_text(name, f"{info.field_name} {kind} name", CALL_FIELD_LENGTHS[kind], min_length=1)
            if amount <= 0:
                raise ValueError(f"{info.field_name}[{name!r}] must be greater than 0, got {amount}")
        return value

    @field_validator("spend_per_minute")
    @classmethod
    def _rate(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and value <= 0:
            raise ValueError(f"spend_per_minute must be greater than 0, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        for field in ("provider_limits", "model_limits"):
            for name, amount in getattr(self, field).items():
                if amount > self.limit:
                    raise ValueError(
                        f"{field}[{name!r}] = {amount} is above the policy's own limit {self.limit}; a sub-limit "
                        "can only be tighter"
                    )
        if self.enforcement == "throttle" and self.calls_per_minute is None and self.spend_per_minute is None:
            raise ValueError("enforcement 'throttle' needs calls_per_minute or spend_per_minute (or both)")
        return self

    @field_validator("name", "tenant", "currency", mode="before")
    @classmethod
    def _text(cls, value: Any, info: ValidationInfo) -> Any:
        low, high = (3, 3) if info.field_name == "currency" else (1, MAX_TEXT)
        return check_text(value, info.field_name or "text", high, low) if isinstance(value, str) else value

    @field_validator("alternatives")
    @classmethod
    def _alternatives(cls, value: list[str]) -> list[str]:
        for model in value:
            check_text(model, "alternative model", CALL_FIELD_LENGTHS["model"], min_length=1)
        return value

    @field_validator("period", mode="before")
    @classmethod
    def _period(cls, value: Any) -> Any:
        return bounded_period(value).name if isinstance(value, str) else value

    @field_validator("timezone", mode="before")
    @classmethod
    def _timezone(cls, value: Any) -> Any:
        if isinstance(value, str):
            check_text(value, "timezone", 64, min_length=1)
            parse_timezone(value)
        return value

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: Decimal) -> Decimal:
        if value <= 0:
            raise ValueError(f"limit must be greater than 0 and below {MAX_AMOUNT:,}, got {value}")
        return value

    @field_validator("rollover_cap")
    @classmethod
    def _cap(cls, value: Decimal) -> Decimal:
        if value < 0:
            raise ValueError(f"rollover_cap must not be negative (allowed: 0 to below {MAX_AMOUNT:,}), got {value}")
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
    retry_after: int | None = None  # seconds until a throttle admits calls again


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
    id: int | None = None  # the store's row id, for keyset pages (None on a record just written)


class UsageSummary(_Frozen):
    """Totals over a scope and period (money fields are exact Decimals).

    ``limit`` is the effective limit of the policy that limits exactly this scope and
    period (its limit plus what the last window carried over), None when no policy does.
    ``remaining``, ``is_over_budget`` and ``average_cost`` are derived from the other
    fields whenever a summary is built, so they can never disagree with them.
    """

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
    #: What is left of ``limit`` (never negative: an overspent budget has 0 left); None without a limit.
    remaining: Decimal | None = None
    #: True when spend is above ``limit`` (spend exactly at the limit is not over it).
    is_over_budget: bool = False
    #: Mean cost per call (exact quotient, rounded half-even to the store's precision, 10**-9).
    average_cost: Decimal = Decimal(0)

    @model_validator(mode="before")
    @classmethod
    def _derived(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        cost, limit = _decimal_or_none(data.get("total_cost")), _decimal_or_none(data.get("limit"))
        if cost is not None:
            data["average_cost"] = average(cost, data.get("calls"))
            if limit is not None:
                data["remaining"] = max(limit - cost, Decimal(0))
                data["is_over_budget"] = cost > limit
            else:
                data["remaining"], data["is_over_budget"] = None, False
        return data


def _decimal_or_none(value: Any) -> Decimal | None:
    """A finite Decimal from a Decimal, int or decimal text (as in a JSON export); None otherwise.

    Floats are refused like everywhere else in the API: the field validators then say so.
    """
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
        return None
    try:
        number = Decimal(value)
    except ArithmeticError:
        return None
    return number if number.is_finite() else None


def average(total: Decimal, calls: Any) -> Decimal:
    """``total / calls`` rounded half-even to 10**-9 (the store's precision); 0 for no calls."""
    if isinstance(calls, bool) or not isinstance(calls, int) or calls <= 0:
        return Decimal(0)
    return (total / calls).quantize(Decimal("1e-9"))


class SpendRow(_Frozen):
    """One group of a breakdown, e.g. one provider, or one provider and model.

    ``keys`` names the value of every dimension the breakdown groups by (None for a call
    without an actor or category); ``key`` is the same as display text: the single value,
    or the values joined by " / " (a missing one written "-") for several dimensions.
    """

    key: str | None
    total_cost: Decimal
    calls: int
    input_tokens: int = 0
    output_tokens: int = 0
    #: Mean cost per call of the group, rounded half-even to 10**-9 (derived, never stored).
    average_cost: Decimal = Decimal(0)
    keys: dict[str, str | None] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _derived(cls, data: Any) -> Any:
        if isinstance(data, dict) and (cost := _decimal_or_none(data.get("total_cost"))) is not None:
            data = {**data, "average_cost": average(cost, data.get("calls"))}
        return data


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


#: A bucket whose spend moved by at most this many percent from the bucket before is "stable".
TREND_STABLE_PERCENT = Decimal(5)

TrendDirection = Literal["up", "down", "stable"]


def trend_change(previous: Decimal | None, current: Decimal) -> tuple[TrendDirection | None, Decimal | None]:
    """Direction and percent change of ``current`` against ``previous`` spend.

    ``up`` / ``down`` when spend moved by more than :data:`TREND_STABLE_PERCENT` percent,
    ``stable`` otherwise. From nothing to something is ``up`` with no percent (it is
    not a finite change); no previous bucket gives ``(None, None)``.
    """
    if previous is None:
        return None, None
    if previous == 0:
        return ("up" if current > 0 else "stable"), None
    percent = ((current - previous) * 100 / previous).quantize(Decimal("0.01"))
    if abs(percent) <= TREND_STABLE_PERCENT:
        return "stable", percent
    return ("up" if percent > 0 else "down"), percent


class TrendPoint(_Frozen):
    """Spend in one bucket of a trend, and how it moved from the bucket before it."""

    start: datetime
    end: datetime
    total_cost: Decimal
    calls: int
    #: Percent change from the previous bucket (2 decimals); None for the first, or when that spent nothing.
    change_percent: Decimal | None = None
    #: up / down / stable against the previous bucket (see :func:`trend_change`); None for the first.
    direction: TrendDirection | None = None


AlertKind = Literal["actual", "forecast", "anomaly"]
Severity = Literal["info", "warning", "critical", "emergency"]
#: Most severe first: the order active alerts are listed in (ATLAS's order; emergency is above critical).
SEVERITY_ORDER: tuple[str, ...] = ("emergency", "critical", "warning", "info")

#: ATLAS alert channel names and the sink that delivers the same way here. ATLAS's ``email`` and
#: ``slack`` went through its own mailer and Slack client; here both are Apprise URLs (``mailto://``,
#: ``slack://``) under ``[sinks.apprise]``. ``in_app`` and ``message_bus`` showed the alert inside
#: ATLAS: every alert is already published on the bus (``budget.alert_triggered``, the
#: ``budget_event`` hook), so they map to the ``log`` sink, which keeps a visible record.
ATLAS_CHANNELS: dict[str, str] = {
    "email": "apprise",
    "slack": "apprise",
    "teams": "apprise",
    "discord": "apprise",
    "sms": "apprise",
    "webhook": "webhook",
    "in_app": "log",
    "message_bus": "log",
    "log": "log",
}


def map_channels(names: list[str]) -> list[str]:
    """Sink names with ATLAS channel names replaced by the sink that delivers them (order kept, no repeats).

    A name that is already a sink (``webhook``, ``log``, ``apprise`` or an installed third-party
    sink) is kept as it is.
    """
    return list(dict.fromkeys(ATLAS_CHANNELS.get(name, name) if isinstance(name, str) else name for name in names))


class AlertConfig(BaseModel):
    """When to raise an alert on a policy, and where to send it.

    ``actual``: spend reached ``threshold`` percent of the effective limit.
    ``forecast``: the period's spend so far, projected to its end, reaches it.
    ``anomaly``: spend in the last ``anomaly_window`` (hour or day) is at least
    ``threshold`` percent of its trailing average (e.g. 300 = three times usual),
    and at least ``anomaly_minimum``.
    """

    model_config = ConfigDict(extra="forbid")

    #: Longest cooldown: a year (a longer one is an alert that never fires again; remove it instead).
    MAX_COOLDOWN: ClassVar[int] = 365 * 24 * 3600
    #: Largest id a store holds (signed 64-bit).
    MAX_ID: ClassVar[int] = 2**63 - 1

    id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    policy: str = Field(min_length=1, max_length=200)
    tenant: str = Field(default="default", min_length=1, max_length=200)
    threshold: int = Field(gt=0, le=100_000)
    kind: AlertKind = "actual"
    severity: Severity = "warning"
    sinks: list[str] = Field(default_factory=list, max_length=50)
    cooldown: int = Field(default=0, description="seconds after an alert before this config may fire again")
    anomaly_window: Literal["hour", "day"] = "hour"
    anomaly_baseline: int = Field(default=24, ge=1, le=1000, description="trailing windows averaged")
    anomaly_minimum: Money = Decimal("0.01")
    snoozed_until: datetime | None = None
    enabled: bool = True

    @field_validator("cooldown")
    @classmethod
    def _cooldown(cls, value: int) -> int:
        if not 0 <= value <= cls.MAX_COOLDOWN:
            raise ValueError(f"cooldown is a number of seconds from 0 to {cls.MAX_COOLDOWN} (365 days), got {value}")
        return value

    @field_validator("policy", "tenant")
    @classmethod
    def _text(cls, value: str, info: ValidationInfo) -> str:
        return check_text(value, str(info.field_name), 200, min_length=1)

    @field_validator("sinks")
    @classmethod
    def _sinks(cls, value: list[str]) -> list[str]:
        for name in value:
            check_text(name, "sink name", 100, min_length=1)
        # ATLAS channel names (email, slack, in_app...) are accepted and stored as the sink they map to.
        return map_channels(value)

    @field_validator("anomaly_minimum")
    @classmethod
    def _minimum(cls, value: Decimal) -> Decimal:
        if value < 0:
            raise ValueError(f"anomaly_minimum must not be negative, got {value}")
        return value


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
    #: On ``budget.policy_updated``: the policy fields whose value changed (in field order); empty otherwise.
    changed_fields: tuple[str, ...] = ()

    #: Fields that change on every update, so naming them says nothing.
    BOOKKEEPING: ClassVar[tuple[str, ...]] = ("version", "updated_at")

    @classmethod
    def updated(cls, before: Policy, after: Policy, actor: str) -> BudgetPolicyEvent:
        """The ``budget.policy_updated`` event of a change from ``before`` to ``after``."""
        changed = tuple(
            name
            for name in Policy.model_fields
            if name not in cls.BOOKKEEPING and getattr(before, name) != getattr(after, name)
        )
        return cls(
            topic="budget.policy_updated", tenant=after.tenant, policy=after, actor=actor, changed_fields=changed
        )


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
    """``budget.alert_triggered``, ``budget.alert_acknowledged`` and ``budget.alert_resolved``
    (``actor`` is who acknowledged or resolved it by hand; None when the plugin itself did)."""

    alert: Alert
    actor: str | None = None


class BudgetLimitEvent(BudgetEvent):
    policy_id: int
    policy_name: str
    call_id: str | None = None
    spent: Decimal
    limit: Decimal
    requested: Decimal
