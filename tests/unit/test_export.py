"""Exports: stable JSON with decimal strings, CSV, Markdown and escaped HTML."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.exceptions import ValidationError
from atlas_budget_plugin.export import render
from atlas_budget_plugin.types import Actor
from hookspecs import LLMCall


@pytest.fixture
def filled(services: BudgetServices) -> BudgetServices:
    services.tracking.record_usage(
        LLMCall(call_id="1", provider="openai", model="m", category="<script>|x"), Decimal("0.000000001")
    )
    services.tracking.record_usage(LLMCall(call_id="2", provider="google", model="m"), Decimal("12.5"))
    return services


def test_json_is_exact_and_stable(filled: BudgetServices, admin: Actor) -> None:
    summary = filled.tracking.get_usage_summary(None, "day", actor=admin)
    data = json.loads(render(summary, "json"))
    assert data["total_cost"] == "12.500000001" and data["calls"] == 2 and data["average_cost"] == "6.250000000"
    assert data["start"].endswith("+00:00")
    rows = json.loads(render(filled.tracking.get_spend_by_provider(None, "day", actor=admin), "json"))
    assert [(r["key"], r["total_cost"]) for r in rows] == [("google", "12.50"), ("openai", "0.000000001")]
    comparison = json.loads(render(filled.tracking.compare_periods(None, "day", actor=admin), "json"))
    assert comparison["current.total_cost"] == "12.500000001" and comparison["previous.calls"] == 0


def test_csv_markdown_html(filled: BudgetServices, admin: Actor) -> None:
    rows = filled.tracking.get_spend_by_category(None, "day", actor=admin)
    parsed = list(csv.DictReader(io.StringIO(render(rows, "csv"))))
    assert {r["key"]: r["total_cost"] for r in parsed} == {"<script>|x": "0.000000001", "": "12.50"}
    markdown = render(rows, "markdown", title="By category")
    assert markdown.startswith("## By category") and "&lt;script&gt;\\|x" in markdown and "<script>" not in markdown
    page = render(rows, "html", title="A & B")
    assert "<script>" not in page and "&lt;script&gt;|x" in page and "<caption>A &amp; B</caption>" in page
    assert "(no rows)" in render([], "markdown")
    records = render(filled.tracking.list_usage(admin), "csv")
    assert records.splitlines()[0].startswith("call_id,tenant")
    with pytest.raises(ValidationError, match="unknown export format"):
        render(rows, "xml")


# -- hostile text: formulas, markup, control characters ------------------------------------------

HOSTILE = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "<script>alert(1)</script>"]


def test_csv_neutralises_formulas_but_keeps_numbers() -> None:
    from atlas_budget_plugin.types import SpendRow

    rows = [SpendRow(key=key, total_cost=Decimal("1.50"), calls=1) for key in HOSTILE]
    rows.append(SpendRow(key="plain", total_cost=Decimal("-1.50"), calls=-1))
    parsed = list(csv.DictReader(io.StringIO(render(rows, "csv"))))
    keys = [r["key"] for r in parsed]
    assert keys[:4] == ['\'=HYPERLINK("http://x")', "'+1+1", "'-2+3", "'@SUM(A1)"]
    assert keys[4:6] == ["\\tx", "\\rx"]  # control characters are written visibly, so never a formula either
    assert all(not k.startswith(("=", "+", "-", "@", "\t", "\r")) for k in keys)
    assert parsed[-1]["key"] == "plain" and parsed[-1]["total_cost"] == "-1.50" and parsed[-1]["calls"] == "-1"


def test_csv_cell_rules() -> None:
    from atlas_budget_plugin.export import csv_cell

    assert csv_cell(Decimal("-0.25")) == "-0.25" and csv_cell(-3) == "-3" and csv_cell(True) == "True"
    assert csv_cell(Decimal("-Infinity")) == "'-Infinity" and csv_cell(float("-inf")) == "'-inf"
    assert csv_cell("-5") == "'-5" and csv_cell("a-b") == "a-b" and csv_cell(None) == ""
    assert csv_cell("\x1b[31mred") == "\\x1b[31mred"


def test_markdown_escapes_html_markup_and_table_breaks() -> None:
    from atlas_budget_plugin.types import SpendRow

    rows = [SpendRow(key=k, total_cost=Decimal(1), calls=1) for k in ("<script>x</script>", "a|b", "`code`", "[l](u)")]
    rows.append(SpendRow(key="*b* _i_ ~s~ & \\ \x1b[31m\nnext", total_cost=Decimal(1), calls=1))
    text = render(rows, "markdown", title="<b>title</b> | x")
    assert "<script>" not in text and "&lt;script&gt;x&lt;/script&gt;" in text and "<b>" not in text
    assert "a\\|b" in text and "\\`code\\`" in text and "\\[l\\](u)" in text
    assert "\\*b\\* \\_i\\_ \\~s\\~ &amp; \\\\ \\\\x1b\\[31m\\\\nnext" in text
    assert "\x1b" not in text and len(text.splitlines()) == 2 + 2 + len(rows)


def test_html_escapes_and_makes_control_characters_visible() -> None:
    from atlas_budget_plugin.types import SpendRow

    page = render([SpendRow(key="<img src=x onerror=alert(1)>\x1b]0;pwn\x07", total_cost=Decimal(1), calls=1)], "html")
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;\\x1b]0;pwn\\x07" in page and "\x1b" not in page


@pytest.mark.parametrize(
    ("granularity", "label"),
    [("hour", "03-10 14:00"), ("day", "2026-03-10"), ("week", "2026-W11"), ("month", "2026-03")],
)
def test_trend_labels_fit_the_granularity(granularity: str, label: str) -> None:
    from datetime import datetime, timezone

    from atlas_budget_plugin.export import bucket_label, trend_svg
    from atlas_budget_plugin.types import TrendPoint

    start = datetime(2026, 3, 10, 14, tzinfo=timezone.utc)
    assert bucket_label(start, granularity) == label
    svg = trend_svg([TrendPoint(start=start, end=start, total_cost=Decimal(1), calls=1)], "t", granularity)
    assert f">{label}</text>" in svg
