"""Report details (#14 item 6): remaining and over budget, averages, several dimensions, trend direction,
titles in JSON, the styled HTML report, and ``changed_fields`` on policy updates."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.exceptions import ValidationError
from atlas_budget_plugin.export import html_report, render, summary_items
from atlas_budget_plugin.types import (
    Actor,
    BudgetEvent,
    BudgetPolicyEvent,
    SpendRow,
    UsageSummary,
    trend_change,
)
from hookspecs import LLMCall

from ..conftest import FakeClock

n = 0


def record(services: BudgetServices, cost: str, **call: Any) -> None:
    global n
    n += 1
    data: dict[str, Any] = {"provider": "openai", "model": "gpt-4o", "actor": "alice", **call}
    services.tracking.record_usage(LLMCall(call_id=f"d{n}", **data), Decimal(cost))


# -- summaries ------------------------------------------------------------------------------------


def test_remaining_and_over_budget(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, {"name": "a", "scope": {"actor": "alice"}, "period": "day", "limit": "10"})
    record(services, "4")
    summary = services.tracking.get_usage_summary({"actor": "alice"}, "day", actor=admin)
    assert summary.remaining == Decimal("6") and summary.is_over_budget is False
    record(services, "6")
    at_limit = services.tracking.get_usage_summary({"actor": "alice"}, "day", actor=admin)
    assert at_limit.remaining == 0 and at_limit.is_over_budget is False  # exactly at the limit is not over
    record(services, "2.5")
    over = services.tracking.get_usage_summary({"actor": "alice"}, "day", actor=admin)
    assert over.remaining == 0 and over.is_over_budget is True and over.total_cost == Decimal("12.5")
    assert over.average_cost == Decimal("4.166666667")  # 12.5 / 3, half-even to 10**-9
    unlimited = services.tracking.get_usage_summary(None, "day", actor=admin)
    assert unlimited.limit is None and unlimited.remaining is None and unlimited.is_over_budget is False


def test_remaining_uses_the_effective_limit_with_rollover(
    services: BudgetServices, admin: Actor, clock: FakeClock
) -> None:
    services.policies.create_policy(
        admin, {"name": "r", "scope": {"actor": "alice"}, "period": "day", "limit": "10", "rollover_cap": "5"}
    )
    record(services, "7")  # 3 unused today carry over to tomorrow
    clock.advance(days=1)
    record(services, "11")
    summary = services.tracking.get_usage_summary({"actor": "alice"}, "day", actor=admin)
    assert summary.limit == Decimal("13") and summary.remaining == Decimal("2") and not summary.is_over_budget


def test_derived_fields_cannot_disagree() -> None:
    summary = UsageSummary.model_validate(
        {
            "tenant": "t",
            "period": "day",
            "start": "2026-03-10T00:00:00+00:00",
            "end": "2026-03-11T00:00:00+00:00",
            "total_cost": "3.00",
            "calls": 2,
            "input_tokens": 0,
            "output_tokens": 0,
            "limit": "2.00",
            "remaining": "99",  # whatever a JSON export says, the values follow the cost and limit
            "is_over_budget": False,
        }
    )
    assert summary.remaining == 0 and summary.is_over_budget and summary.average_cost == Decimal("1.5")
    assert SpendRow(key="x", total_cost=Decimal("1"), calls=3).average_cost == Decimal("0.333333333")
    assert SpendRow(key="x", total_cost=Decimal("1"), calls=0).average_cost == 0


# -- breakdowns -----------------------------------------------------------------------------------


def test_average_cost_per_call_on_breakdown_rows(services: BudgetServices, admin: Actor) -> None:
    record(services, "1")
    record(services, "2")
    record(services, "0.5", provider="google")
    rows = services.tracking.get_spend_by_provider(None, "day", actor=admin)
    assert [(r.key, r.calls, r.average_cost) for r in rows] == [
        ("openai", 2, Decimal("1.5")),
        ("google", 1, Decimal("0.5")),
    ]
    assert rows[0].keys == {"provider": "openai"}


def test_grouping_by_several_dimensions(services: BudgetServices, admin: Actor, clock: FakeClock) -> None:
    clock.advance(minutes=-90)  # some rows in a whole hour the rollups hold, some in the current one
    record(services, "1", model="gpt-4o")
    record(services, "2", model="gpt-4o-mini")
    clock.advance(minutes=90)
    record(services, "3", model="gpt-4o")
    record(services, "0.25", provider="google", model="gemini", category="code")
    record(services, "0.25", provider="google", model="gemini")
    rows = services.tracking.get_spend_by(("provider", "model"), None, "day", actor=admin)
    assert [(r.keys, r.total_cost, r.calls) for r in rows] == [
        ({"provider": "openai", "model": "gpt-4o"}, Decimal("4"), 2),
        ({"provider": "openai", "model": "gpt-4o-mini"}, Decimal("2"), 1),
        ({"provider": "google", "model": "gemini"}, Decimal("0.5"), 2),
    ]
    assert rows[0].key == "openai / gpt-4o" and rows[0].average_cost == Decimal("2")
    # the combined groups add up to the single-dimension report from the rollups, exactly
    single = services.tracking.get_spend_by("provider", None, "day", actor=admin)
    assert sum(r.total_cost for r in rows) == sum(r.total_cost for r in single) == Decimal("6.5")
    by_category = services.tracking.get_spend_by_dimensions(
        ["provider", "category"], {"tag.x": "y"}, "day", actor=admin
    )
    assert by_category == []  # a tag filter is applied to the raw rows too
    three = services.tracking.get_spend_by(
        ["provider", "category", "actor"], {"provider": "google"}, "day", actor=admin
    )
    assert {r.key for r in three} == {"google / code / alice", "google / - / alice"}
    for bad, message in [
        (("provider", "colour"), "unknown report dimension 'colour'"),
        ((), "report dimension must be one of"),
        (("model", "model"), "repeat a name: model, model"),
        (42, "report dimension must be one of"),
    ]:
        with pytest.raises(ValidationError, match=re.escape(message)):
            services.tracking.get_spend_by(bad, None, "day", actor=admin)  # type: ignore[arg-type]


# -- trend ----------------------------------------------------------------------------------------


def test_trend_direction_and_percent_change(services: BudgetServices, admin: Actor, clock: FakeClock) -> None:
    today = clock.now
    for days_ago, cost in [(4, "10"), (3, "10.40"), (2, "20"), (1, "5")]:
        clock.now = today - timedelta(days=days_ago)
        record(services, cost)
    clock.now = today
    points = services.tracking.get_spend_trend(None, 6, actor=admin)
    assert [(p.direction, p.change_percent) for p in points] == [
        (None, None),  # the first bucket has nothing to compare with
        ("up", None),  # from nothing to 10: up, but not a finite percent
        ("stable", Decimal("4.00")),  # +4% is within the 5% band
        ("up", Decimal("92.31")),
        ("down", Decimal("-75.00")),
        ("down", Decimal("-100.00")),
    ]


def test_trend_change_rule() -> None:
    assert trend_change(None, Decimal(1)) == (None, None)
    assert trend_change(Decimal(0), Decimal(0)) == ("stable", None)
    assert trend_change(Decimal(100), Decimal(105)) == ("stable", Decimal("5.00"))
    assert trend_change(Decimal(100), Decimal("105.01")) == ("up", Decimal("5.01"))
    assert trend_change(Decimal(100), Decimal(95)) == ("stable", Decimal("-5.00"))
    assert trend_change(Decimal(100), Decimal("94.99")) == ("down", Decimal("-5.01"))


# -- exports --------------------------------------------------------------------------------------


def test_json_export_carries_the_title(services: BudgetServices, admin: Actor) -> None:
    record(services, "1")
    summary = services.tracking.get_usage_summary(None, "day", actor=admin)
    data = json.loads(render(summary, "json", title="spend this day"))
    assert data["title"] == "spend this day" and data["total_cost"] == "1.00" and data["is_over_budget"] is False
    assert "title" not in json.loads(render(summary, "json"))
    rows = services.tracking.get_spend_by_provider(None, "day", actor=admin)
    assert json.loads(render(rows, "json", title="by provider"))[0]["average_cost"] == "1.000000000"
    wrapped = json.loads(render(rows, "json", title="by provider", envelope=True))
    assert wrapped["title"] == "by provider" and wrapped["rows"][0]["key"] == "openai"


def test_multi_dimension_rows_export_a_column_per_dimension(services: BudgetServices, admin: Actor) -> None:
    record(services, "1")
    rows = services.tracking.get_spend_by(("provider", "model"), None, "day", actor=admin)
    (row,) = json.loads(render(rows, "json"))
    assert row["provider"] == "openai" and row["model"] == "gpt-4o" and "keys" not in row
    header = render(rows, "csv").splitlines()[0]
    assert header.startswith("provider,model,key,total_cost,calls")


def test_html_report_is_styled_self_contained_and_escaped(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, {"name": "all", "period": "day", "limit": "1"})
    record(services, "1.5", category="<script>alert(1)</script>")
    summary = services.tracking.get_usage_summary(None, "day", actor=admin)
    page = render(summary, "html", title="<b>Spend</b> & more")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and "Content-Security-Policy" in page
    assert "<h1>&lt;b&gt;Spend&lt;/b&gt; &amp; more</h1>" in page
    summary_section = page[page.index('id="summary"') : page.index("</section>")]
    assert "total cost" in summary_section and "<dd>1.50</dd>" in summary_section
    assert '<div class="bad"><dt>over budget</dt><dd>yes</dd></div>' in summary_section
    # nothing is fetched: no script, no link, no image, no url() or @import in the CSS
    for forbidden in ("<script", "<link", "<img", "src=", "href=", "url(", "@import", "http://", "https://"):
        assert forbidden not in page.lower(), forbidden
    rows = services.tracking.get_spend_by_category(None, "day", actor=admin)
    table = render(rows, "html", title="by category")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in table and "<script>" not in table
    assert '<td class="num">1.50</td>' in table
    items = dict((label, value) for label, value, _ in summary_items(rows))
    assert items == {"rows": "1", "total cost": "1.50", "calls": "1", "average per call": "1.500000000"}


def test_html_report_with_several_sections(services: BudgetServices, admin: Actor) -> None:
    record(services, "2")
    record(services, "1", provider="google")
    summary = services.tracking.get_usage_summary(None, "day", actor=admin)
    page = html_report(
        "March",
        [
            ("By provider", services.tracking.get_spend_by_provider(None, "day", actor=admin)),
            ("Trend", services.tracking.get_spend_trend(None, 2, actor=admin)),
            ("Nothing", []),
        ],
        summary=summary,
    )
    assert page.count("<section") == 4 and ">By provider</h2>" in page and "(no rows)" in page
    # the summary section is the given summary's (period, total), not the first table's (row count)
    assert "<dt>period</dt><dd>day</dd>" in page and "<dd>3.00</dd>" in page and "<dt>rows</dt>" not in page
    assert "<td>up</td>" in page  # trend direction is a column


# -- policy updates -------------------------------------------------------------------------------


def test_policy_updated_event_names_the_changed_fields(services: BudgetServices, admin: Actor) -> None:
    seen: list[BudgetEvent] = []
    services.bus.subscribe("budget.policy_*", seen.append)
    policy: Any = services.policies.create_policy(admin, {"name": "p", "period": "day", "limit": "10"})
    services.policies.update_policy(admin, policy.id, {"limit": "12", "thresholds": [80, 100], "priority": 0})
    created, updated = seen
    assert isinstance(created, BudgetPolicyEvent) and created.changed_fields == ()
    assert isinstance(updated, BudgetPolicyEvent) and updated.topic == "budget.policy_updated"
    assert updated.changed_fields == ("limit", "thresholds")  # priority was given but did not change
    services.policies.update_policy(admin, policy.id, {"limit": "12"})
    assert seen[-1].changed_fields == ()  # type: ignore[attr-defined]
