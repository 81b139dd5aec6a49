"""Hypothesis fuzz of every public service method with well-typed hostile values.

Each method gets right-typed values a user or a buggy caller could pass: huge and
negative ints, NaN/Infinity/huge Decimals, NUL, lone surrogates, 10k-character
strings, Rich markup, control characters, other scripts and SQL/LIKE
metacharacters. Two things must hold for every input:

- only the project's documented errors come out (ValidationError, NotFoundError,
  PermissionDenied, ConflictError, UnknownPriceError), never a raw OverflowError,
  pydantic error or database error;
- a refused call writes nothing (no policy, audit entry, usage row, rollup,
  counter, hold or alert change).

The fixtures run on the backend named by BUDGET_TEST_BACKEND, so tox's postgres and
mysql environments run this file too. ``pytest -s`` prints how many inputs each
method was given and how many undocumented errors came out.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import string
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeVar

import pydantic
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.exceptions import (
    BudgetError,
    ConflictError,
    NotFoundError,
    PermissionDenied,
    UnknownPriceError,
    ValidationError,
)
from atlas_budget_plugin.types import SCOPE_KEYS, Actor, Policy
from hookspecs import LLMCall

T = TypeVar("T")

#: The errors the services document; anything else reaching the caller is a bug.
DOCUMENTED = (ValidationError, NotFoundError, PermissionDenied, ConflictError, UnknownPriceError)
BACKEND = os.environ.get("BUDGET_TEST_BACKEND", "sqlite")

FUZZED: Counter[str] = Counter()
ACCEPTED: Counter[str] = Counter()
UNDOCUMENTED: Counter[str] = Counter()

fuzz = settings(
    max_examples=int(os.environ.get("BUDGET_FUZZ_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)


@pytest.fixture(scope="module", autouse=True)
def fuzz_report() -> Iterator[None]:
    """Print the inputs fuzzed per method and the undocumented errors (visible with ``pytest -s``)."""
    yield
    print(f"\nfuzzed inputs per method on {BACKEND}:")
    for method in sorted(FUZZED):
        print(
            f"  {method:28} {FUZZED[method]:5} inputs ({ACCEPTED[method]} accepted), "
            f"{UNDOCUMENTED[method]} undocumented errors"
        )
    print(f"  {'total':28} {sum(FUZZED.values()):5} inputs, {sum(UNDOCUMENTED.values())} undocumented errors")


def attempt(method: str, work: Callable[[], T]) -> tuple[T | None, BudgetError | None]:
    """Run one fuzzed call: its result, or the documented error it raised; anything else fails the test."""
    FUZZED[method] += 1
    try:
        result = work()
    except DOCUMENTED as exc:
        assert str(exc).strip(), f"{method} raised {type(exc).__name__} without a message"
        return None, exc
    except Exception as exc:
        UNDOCUMENTED[method] += 1
        raise AssertionError(f"{method} leaked {type(exc).__name__}: {str(exc)[:300]!r}") from exc
    ACCEPTED[method] += 1
    return result, None


# -- hostile values ---------------------------------------------------------------------------

HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "x" * 10_000,
    "y" * 201,
    "[/]",
    "[bold red]boss[/bold red]",
    "\x1b[31mred\x1b[0m",
    "\r\n\t\x07\x7f\x9b",
    "%",
    "_",
    "%_'\"\\",
    "'; DROP TABLE budget_policy; --",
    "名前",
    "🙂🙂",
    "\u202eevil",
    "NaN",
    "None",
]
any_char = st.characters(exclude_categories=())  # includes lone surrogates (category Cs)
texts = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.text(any_char, max_size=12),
    st.text(string.ascii_lowercase, min_size=1, max_size=12),
)
HOSTILE_INTS = [
    0,
    -1,
    1,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    10**20,
    -(10**20),
    10**100,
]
ints = st.one_of(st.sampled_from(HOSTILE_INTS), st.integers())
HOSTILE_DECIMALS = [
    Decimal("NaN"),
    Decimal("-NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    Decimal("-0"),
    Decimal("-1"),
    Decimal("1e-30"),
    Decimal("1e30"),
    Decimal("1E+999999"),
    Decimal("999999999.999999999"),
    Decimal("1000000000"),
    Decimal("0.5"),
]
decimals = st.one_of(st.sampled_from(HOSTILE_DECIMALS), st.decimals(allow_nan=True, allow_infinity=True))
money_like = st.one_of(st.just("10.00"), decimals, decimals.map(str), ints, texts)
#: Aware moments over datetime's whole range (the edges overflow window arithmetic) and naive ones.
moments = st.one_of(
    st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1), timezones=st.just(timezone.utc)),
    st.datetimes(
        timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=-23)), timezone(timedelta(hours=23))])
    ),
    st.datetimes(),
    st.sampled_from([datetime.min.replace(tzinfo=timezone.utc), datetime.max.replace(tzinfo=timezone.utc)]),
)
periods = st.one_of(
    st.just("month"),
    st.sampled_from(
        [
            "month",
            "day",
            "hour",
            "week",
            "quarter",
            "year",
            "total",
            "rolling:24h",
            "rolling:0h",
            "rolling:8784h",
            "rolling:100000000h",
            "rolling:99999999999999999999d",
        ]
    ),
    texts,
)
zones = st.one_of(
    st.just("UTC"),
    st.sampled_from(["UTC", "Europe/Paris", "Pacific/Kiritimati", "Mars/Base", "../../etc/passwd", "/etc/passwd"]),
    texts,
)
scope_keys = st.one_of(st.sampled_from([*SCOPE_KEYS, "tag.env", "tag.", "tags", "colour"]), texts)
scopes = st.one_of(
    st.none(),
    st.dictionaries(scope_keys, st.one_of(texts, st.none()), max_size=3),
)
any_value = st.one_of(texts, ints, decimals, st.none(), st.booleans())


def admin_of(tenant: str = "default") -> Actor:
    return Actor(id="root", tenant=tenant, roles=frozenset({"budget:admin"}))


@st.composite
def calls(draw: st.DrawFn) -> LLMCall:
    """A well-formed LLMCall (the host contract checks its own fields) carrying hostile text."""

    def present(value: str) -> str:
        return value if value.strip() else f"x{value}"

    return LLMCall(
        call_id=present(draw(texts)),
        provider=present(draw(st.one_of(st.just("openai"), texts))),
        model=present(draw(st.one_of(st.just("gpt-4o"), texts))),
        operation=present(draw(st.one_of(st.just("chat"), texts))),
        tenant=present(draw(st.one_of(st.just("default"), texts))),
        actor=draw(st.one_of(st.none(), texts)),
        category=draw(st.one_of(st.none(), texts)),
        tags=draw(st.dictionaries(texts, texts, max_size=3)),
        input_tokens=draw(st.one_of(st.none(), st.integers(0, 10**30))),
        max_output_tokens=draw(st.one_of(st.none(), st.integers(0, 10**30))),
        estimated_cost=draw(st.one_of(st.none(), st.decimals(0, 10**12, places=9))),
    )


_serial = itertools.count()


def fresh(call: LLMCall) -> LLMCall:
    """The call under an id no earlier example used (hypothesis replays examples while shrinking)."""
    return dataclasses.replace(call, call_id=f"{call.call_id}#{next(_serial)}")


#: Each policy field's values: a plausible one often, so the hostile value of another field is what decides.
POLICY_FIELDS = {
    "tenant": st.one_of(st.just("default"), texts),
    "scope": scopes,
    "period": periods,
    "timezone": zones,
    "thresholds": st.one_of(st.just([50, 100]), st.lists(ints, max_size=4)),
    "rollover_cap": st.one_of(st.just("1.00"), money_like),
    "priority": st.one_of(st.integers(-5, 5), ints),
    "alternatives": st.lists(texts, max_size=3),
    "currency": st.one_of(st.just("eur"), texts),
    "enforcement": st.sampled_from(["block", "warn", "soft_block", "degrade", "bogus", ""]),
    "enabled": st.booleans(),
}
policy_dicts = st.fixed_dictionaries({"name": texts, "limit": money_like}, optional=POLICY_FIELDS)
#: One or two fields changed at a time, plus now and then a field that cannot be changed or does not exist.
policy_updates = st.one_of(
    st.fixed_dictionaries({}, optional={"name": texts, "limit": money_like, **POLICY_FIELDS}).filter(
        lambda d: 0 < len(d) <= 2
    ),
    st.dictionaries(st.sampled_from([*Policy.model_fields, "bogus"]), any_value, max_size=2),
)


# -- what a refused call must leave untouched -------------------------------------------------


def _rows(services: BudgetServices, sql: str) -> tuple[Any, ...]:
    row = services.db.execute_sql(sql).fetchone()
    return tuple(int(v or 0) for v in row)


def policy_state(services: BudgetServices) -> tuple[Any, ...]:
    """Policies, their audit trail and the generation counter, across all tenants."""
    return (
        _rows(services, "SELECT COUNT(*), COALESCE(SUM(version), 0) FROM budget_policy"),
        _rows(services, "SELECT COUNT(*) FROM budget_audit"),
        _rows(services, "SELECT value FROM budget_meta WHERE name = 'policy_generation'"),
    )


def usage_state(services: BudgetServices) -> tuple[Any, ...]:
    """Usage rows, hourly rollups, spend counters and holds, across all tenants."""
    return (
        _rows(services, "SELECT COUNT(*), COALESCE(SUM(cost_units), 0) FROM budget_usage"),
        _rows(
            services, "SELECT COUNT(*), COALESCE(SUM(calls), 0), COALESCE(SUM(cost_units), 0) FROM budget_usage_hourly"
        ),
        _rows(
            services,
            "SELECT COUNT(*), COALESCE(SUM(spent_units), 0), COALESCE(SUM(reserved_units), 0) "
            "FROM budget_spend_counter",
        ),
        _rows(services, "SELECT COUNT(*), COALESCE(SUM(amount_units), 0) FROM budget_hold"),
    )


def alert_state(services: BudgetServices) -> tuple[Any, ...]:
    return (
        _rows(services, "SELECT COUNT(*) FROM budget_alert_config"),
        _rows(services, "SELECT COUNT(*), COUNT(acknowledged_at) FROM budget_alert"),
    )


def base_policy(services: BudgetServices) -> Policy:
    """The one policy of tenant ``default`` the id-based methods aim at (recreated if an example deleted it)."""
    admin = admin_of()
    for policy in services.policies.list_policies(admin):
        return policy  # an accepted update may have renamed or re-scoped it
    return services.policies.create_policy(admin, {"name": "base", "period": "month", "limit": "100"})


ids_or_base = st.one_of(st.none(), ints)  # None stands for the base policy's real id


# -- BudgetPolicyService ----------------------------------------------------------------------


@fuzz
@given(data=policy_dicts)
def test_create_policy(services: BudgetServices, data: dict[str, Any]) -> None:
    admin = admin_of()
    before = policy_state(services)
    created, error = attempt("create_policy", lambda: services.policies.create_policy(admin, data))
    if error is not None:
        assert policy_state(services) == before
        return
    assert created is not None and created.id is not None
    # What was accepted is stored as given and reads back equal.
    assert created.name == data["name"]
    assert services.policies.get_policy(admin, created.id) == created
    services.policies.delete_policy(admin, created.id)  # keep examples independent


@fuzz
@given(
    policy_id=ids_or_base,
    updates=policy_updates,
    expected=st.one_of(st.none(), st.none(), st.none(), ints),
)
def test_update_policy(
    services: BudgetServices, policy_id: int | None, updates: dict[str, Any], expected: int | None
) -> None:
    admin = admin_of()
    base = base_policy(services)
    target = base.id if policy_id is None else policy_id
    assert target is not None
    before = policy_state(services)
    updated, error = attempt(
        "update_policy", lambda: services.policies.update_policy(admin, target, updates, expected_version=expected)
    )
    if error is not None:
        assert policy_state(services) == before
        assert services.policies.get_policy(admin, base.id or 0) == base
        return
    assert target == base.id, "an update of an id that does not exist succeeded"
    assert updated is not None and updated.version == base.version + 1
    assert services.policies.get_policy(admin, target) == updated


@fuzz
@given(policy_id=ints)
def test_delete_policy(services: BudgetServices, policy_id: int) -> None:
    admin = admin_of()
    base = base_policy(services)
    before = policy_state(services)
    _, error = attempt("delete_policy", lambda: services.policies.delete_policy(admin, policy_id))
    if error is not None:
        assert policy_state(services) == before
    else:
        assert policy_id == base.id


@fuzz
@given(policy_id=ints, tenant=st.one_of(st.just("default"), texts))
def test_get_policy(services: BudgetServices, policy_id: int, tenant: str) -> None:
    base = base_policy(services)
    actor = _actor(tenant)
    if actor is None:
        return
    got, error = attempt("get_policy", lambda: services.policies.get_policy(actor, policy_id))
    if error is None:
        assert got == base and actor.tenant == "default"


@fuzz
@given(
    scope=scopes,
    filters=st.one_of(
        st.none(), st.dictionaries(st.one_of(st.sampled_from([*Policy.model_fields]), texts), any_value, max_size=3)
    ),
)
def test_list_policies(services: BudgetServices, scope: dict[str, Any] | None, filters: dict[str, Any] | None) -> None:
    base_policy(services)
    got, error = attempt("list_policies", lambda: services.policies.list_policies(admin_of(), scope, filters))
    if error is None:
        assert got is not None and all(p.tenant == "default" for p in got)


@fuzz
@given(call=calls(), estimate=st.one_of(st.none(), decimals))
def test_check_budget(services: BudgetServices, call: LLMCall, estimate: Decimal | None) -> None:
    base_policy(services)
    call = fresh(call)
    before = usage_state(services)
    decision, error = attempt("check_budget", lambda: services.policies.check_budget(call, estimate))
    if error is not None or decision is None or not decision.reserved:
        assert usage_state(services) == before  # nothing held for a refused or denied call
        return
    services.ledger.release(call.call_id)  # keep examples independent
    assert usage_state(services)[3] == before[3]


# -- BudgetTrackingService --------------------------------------------------------------------

metadata = st.fixed_dictionaries(
    {},
    optional={
        "input_tokens": ints,
        "output_tokens": ints,
        "cache_read_tokens": ints,
        "cache_write_tokens": ints,
        "price_source": texts,
        "error": st.one_of(st.none(), texts),
        "units": st.dictionaries(texts, st.one_of(ints, decimals, texts), max_size=2),
        "bogus": any_value,
    },
)


_plain = LLMCall(call_id="plain", provider="openai", model="gpt-4o")


@fuzz
@given(call=calls(), cost=st.one_of(st.just(Decimal("0.25")), decimals), meta=st.one_of(st.none(), metadata))
# The cases the issue names: each used to commit a usage row and then raise.
@example(call=_plain, cost=Decimal("0.25"), meta={"units": {"images": "abc"}})
@example(call=_plain, cost=Decimal("0.25"), meta={"units": {"images": Decimal("NaN")}})
@example(call=_plain, cost=Decimal("0.25"), meta={"input_tokens": 10**30})
@example(call=_plain, cost=Decimal("0.25"), meta={"price_source": "p" * 201})
def test_record_usage(services: BudgetServices, call: LLMCall, cost: Decimal, meta: dict[str, Any] | None) -> None:
    base_policy(services)
    call = fresh(call)
    before = usage_state(services)
    record, error = attempt("record_usage", lambda: services.tracking.record_usage(call, cost, meta))
    if error is not None:
        assert usage_state(services) == before, "a refused record_usage wrote something"
        return
    assert record is not None and record.cost == cost and record.call_id == call.call_id
    assert usage_state(services)[0][0] == before[0][0] + 1


report_kwargs = st.fixed_dictionaries(
    {},
    optional={"now": moments, "timezone": zones},
)


def _actor(tenant: str, actor_id: str = "root") -> Actor | None:
    """An admin of ``tenant``; None when the Actor type itself refuses the values (checked at construction)."""
    try:
        return Actor(id=actor_id, tenant=tenant, roles=frozenset({"budget:admin"}))
    except pydantic.ValidationError:
        return None


@pytest.mark.parametrize(
    "method",
    ["get_usage_summary", "get_spend_by_category", "get_spend_by_provider", "compare_periods", "get_projection"],
)
@fuzz
@given(
    scope=scopes,
    period=periods,
    kw=report_kwargs,
)
def test_period_reports(services: BudgetServices, method: str, scope: Any, period: str, kw: dict[str, Any]) -> None:
    before = usage_state(services)
    report = getattr(services.tracking, method)
    attempt(method, lambda: report(scope, period, actor=admin_of(), **kw))
    assert usage_state(services) == before


@fuzz
@given(
    dimension=st.one_of(st.sampled_from(["provider", "model", "actor", "tenant", "id"]), texts),
    scope=scopes,
    period=periods,
    kw=report_kwargs,
)
def test_get_spend_by(services: BudgetServices, dimension: str, scope: Any, period: str, kw: dict[str, Any]) -> None:
    attempt("get_spend_by", lambda: services.tracking.get_spend_by(dimension, scope, period, actor=admin_of(), **kw))


@fuzz
@given(
    scope=scopes,
    count=st.one_of(st.integers(1, 1000), ints),
    granularity=st.one_of(st.sampled_from(["hour", "day", "week", "month", "year"]), texts),
    kw=report_kwargs,
)
def test_get_spend_trend(
    services: BudgetServices, scope: Any, count: int, granularity: str, kw: dict[str, Any]
) -> None:
    attempt(
        "get_spend_trend",
        lambda: services.tracking.get_spend_trend(scope, count, granularity=granularity, actor=admin_of(), **kw),
    )


@fuzz
@given(
    limit=st.one_of(st.integers(1, 10_000), ints),
    filters=st.one_of(
        st.none(),
        st.dictionaries(
            st.one_of(st.sampled_from(["provider", "model", "actor", "tenant"]), texts), any_value, max_size=2
        ),
    ),
    since=st.one_of(st.none(), moments),
    until=st.one_of(st.none(), moments),
)
def test_list_usage(services: BudgetServices, limit: int, filters: Any, since: Any, until: Any) -> None:
    got, error = attempt("list_usage", lambda: services.tracking.list_usage(admin_of(), limit, filters, since, until))
    if error is None:
        assert got is not None and len(got) <= limit


# -- BudgetAlertService -----------------------------------------------------------------------

alert_dicts = st.fixed_dictionaries(
    {"policy": st.one_of(st.just("base"), texts), "threshold": st.one_of(st.just(80), ints)},
    optional={
        "id": st.one_of(st.none(), st.none(), ints),
        "tenant": st.one_of(st.just("default"), texts),
        "kind": st.sampled_from(["actual", "forecast", "anomaly", "bogus"]),
        "severity": st.sampled_from(["info", "warning", "critical", "emergency", "bogus"]),
        "sinks": st.one_of(st.just([]), st.just(["log"]), st.lists(st.one_of(st.just("log"), texts), max_size=2)),
        "cooldown": st.one_of(st.integers(0, 3600), ints),
        "anomaly_window": st.sampled_from(["hour", "day", "week"]),
        "anomaly_baseline": st.one_of(st.integers(1, 1000), ints),
        "anomaly_minimum": st.one_of(st.just("0.01"), money_like),
        "snoozed_until": st.one_of(st.none(), moments),
        "enabled": st.booleans(),
    },
)


@fuzz
@given(data=alert_dicts)
@example(data={"policy": "p\x00", "threshold": 80})
def test_configure_alert(services: BudgetServices, data: dict[str, Any]) -> None:
    base_policy(services)
    admin = admin_of()
    before = alert_state(services)
    config, error = attempt("configure_alert", lambda: services.alerts.configure_alert(admin, data))
    if error is not None:
        assert alert_state(services) == before
        return
    assert config is not None and config.id is not None
    # A stored config must not stop evaluation for anyone (it runs for every tenant).
    _, evaluation_error = attempt("evaluate_alerts", lambda: services.alerts.evaluate_alerts())
    assert evaluation_error is None, f"a stored alert config breaks evaluate_alerts: {evaluation_error}"
    services.alerts.remove_alert(admin, config.id)


@pytest.mark.parametrize("method", ["remove_alert", "acknowledge_alert"])
@fuzz
@given(alert_id=ints)
def test_alert_ids(services: BudgetServices, alert_id: int, method: str) -> None:
    before = alert_state(services)
    _, error = attempt(method, lambda: getattr(services.alerts, method)(admin_of(), alert_id))
    assert isinstance(error, (NotFoundError, ValidationError)), "no alert exists, so nothing can succeed"
    assert alert_state(services) == before


@fuzz
@given(scope=scopes, tenant=st.one_of(st.just("default"), texts))
@example(scope={"colour": "red"}, tenant="default")
def test_list_alerts(services: BudgetServices, scope: Any, tenant: str) -> None:
    actor = _actor(tenant)
    if actor is not None:
        attempt("list_alerts", lambda: services.alerts.list_alerts(actor, scope))


@fuzz
@given(tenant=st.one_of(st.just("default"), texts))
def test_get_active_alerts(services: BudgetServices, tenant: str) -> None:
    actor = _actor(tenant)
    if actor is not None:
        attempt("get_active_alerts", lambda: services.alerts.get_active_alerts(actor))


@fuzz
@given(now=st.one_of(st.none(), moments))
def test_evaluate_alerts(services: BudgetServices, now: datetime | None) -> None:
    if not services.alerts.list_alerts(admin_of()):
        base_policy(services)
        services.alerts.configure_alert(admin_of(), {"policy": "base", "threshold": 1})
        services.alerts.configure_alert(admin_of(), {"policy": "base", "threshold": 50, "kind": "forecast"})
        services.alerts.configure_alert(admin_of(), {"policy": "base", "threshold": 300, "kind": "anomaly"})
    attempt("evaluate_alerts", lambda: services.alerts.evaluate_alerts(now))


# -- hostile actors ---------------------------------------------------------------------------


@fuzz
@given(
    actor_id=texts, tenant=texts, roles=st.frozensets(st.sampled_from(["budget:read", "budget:write", "budget:admin"]))
)
def test_hostile_actors(services: BudgetServices, actor_id: str, tenant: str, roles: frozenset[Any]) -> None:
    try:
        actor = Actor(id=actor_id, tenant=tenant, roles=roles)
    except pydantic.ValidationError as exc:
        # Refused where the value enters, with the field named.
        assert "id" in str(exc) or "tenant" in str(exc)
        return
    before = policy_state(services)
    created, error = attempt(
        "create_policy", lambda: services.policies.create_policy(actor, {"name": "mine", "limit": "5"})
    )
    if error is not None:
        assert policy_state(services) == before
    attempt("list_policies", lambda: services.policies.list_policies(actor))
    attempt("get_usage_summary", lambda: services.tracking.get_usage_summary(actor=actor))
    attempt("list_usage", lambda: services.tracking.list_usage(actor))
    attempt("get_active_alerts", lambda: services.alerts.get_active_alerts(actor))
    if created is not None:
        assert created.tenant == tenant
        services.policies.delete_policy(actor, created.id or 0)
