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
    assert markdown.startswith("## By category") and "<script>\\|x" in markdown
    page = render(rows, "html", title="A & B")
    assert "<script>" not in page and "&lt;script&gt;|x" in page and "<caption>A &amp; B</caption>" in page
    assert "(no rows)" in render([], "markdown")
    records = render(filled.tracking.list_usage(admin), "csv")
    assert records.splitlines()[0].startswith("call_id,tenant")
    with pytest.raises(ValidationError, match="unknown export format"):
        render(rows, "xml")
