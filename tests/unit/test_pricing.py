"""Pricing order: provider cost, budget_price hook, settings override, genai-prices, unknown_model."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest

from atlas_budget_plugin.exceptions import UnknownPriceError
from atlas_budget_plugin.extensions import Extensions, get_plugin_manager
from atlas_budget_plugin.hookspecs import hookimpl
from atlas_budget_plugin.pricing import Pricer
from atlas_budget_plugin.settings import BudgetSettings
from hookspecs import LLMCall, LLMUsage


def settings(tmp_path: Path, **kw: Any) -> BudgetSettings:
    return BudgetSettings.load(None, **kw)


def call(model: str = "gpt-4o", provider: str = "openai", **kw: Any) -> LLMCall:
    return LLMCall(call_id="c", provider=provider, model=model, **kw)


USAGE = LLMUsage(input_tokens=1000, output_tokens=200, cache_read_tokens=400)


def test_catalogue_price_matches_genai_prices(tmp_path: Path) -> None:
    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1000, output_tokens=200, cache_read_tokens=400), "gpt-4o", provider_id="openai"
    ).total_price
    price = Pricer(settings(tmp_path)).price(call(), USAGE)
    assert price.cost == expected
    assert price.source.startswith("genai-prices") and "openai/gpt-4o" in price.source


def test_provider_cost_wins(tmp_path: Path) -> None:
    price = Pricer(settings(tmp_path)).price(call(), LLMUsage(input_tokens=5, cost=Decimal("0.123")))
    assert (price.cost, price.source) == (Decimal("0.123"), "provider")


def test_override_beats_catalogue_with_cache_prices(tmp_path: Path) -> None:
    s = settings(
        tmp_path, prices={"openai/gpt-4o": {"input": "1", "output": "2", "cache_read": "0.5", "per_call": "0.001"}}
    )
    price = Pricer(s).price(call(), USAGE)
    # 600 plain input at 1/M + 400 cached at 0.5/M + 200 output at 2/M + 0.001 per call
    assert price.cost == Decimal("0.0006") + Decimal("0.0002") + Decimal("0.0004") + Decimal("0.001")
    assert price.source == "settings prices.openai/gpt-4o"


def test_override_by_model_name_only(tmp_path: Path) -> None:
    s = settings(tmp_path, prices={"llama-3-8b": {"input": "0.10", "output": "0.20"}})
    price = Pricer(s).price(call("llama-3-8b", "local"), LLMUsage(input_tokens=1_000_000, output_tokens=1_000_000))
    assert price.cost == Decimal("0.30")


class FlatPrice:
    def __init__(self, amount: Any) -> None:
        self.amount = amount

    @hookimpl
    def budget_price(self, call: LLMCall, usage: LLMUsage) -> Any:
        return self.amount if call.provider == "local" else None


def test_hook_beats_override_and_catalogue(tmp_path: Path) -> None:
    pm = get_plugin_manager(load=False)
    pm.register(FlatPrice(Decimal("0.5")))
    s = settings(tmp_path, prices={"local/m": {"input": "9", "output": "9"}})
    pricer = Pricer(s, Extensions(pm))
    assert pricer.price(call("m", "local"), USAGE).cost == Decimal("0.5")
    assert pricer.price(call("m", "local"), USAGE).source == "budget_price hook"
    assert pricer.price(call(), USAGE).source.startswith("genai-prices")  # hook said None


def test_hook_returning_float_is_an_error(tmp_path: Path) -> None:
    pm = get_plugin_manager(load=False)
    pm.register(FlatPrice(0.5))
    with pytest.raises(TypeError, match="must return a Decimal"):
        Pricer(settings(tmp_path), Extensions(pm)).price(call("m", "local"), USAGE)


def test_negative_hook_price_is_refused(tmp_path: Path) -> None:
    pm = get_plugin_manager(load=False)
    pm.register(FlatPrice(Decimal("-1")))
    with pytest.raises(ValueError, match="cannot be negative"):
        Pricer(settings(tmp_path), Extensions(pm)).price(call("m", "local"), USAGE)


def test_unknown_model_modes(tmp_path: Path) -> None:
    with pytest.raises(UnknownPriceError, match=r'\[prices."local/mystery"\]'):
        Pricer(settings(tmp_path)).price(call("mystery", "local"), USAGE)
    unpriced = Pricer(settings(tmp_path, unknown_model="allow_unpriced")).price(call("mystery", "local"), USAGE)
    assert (unpriced.cost, unpriced.source) == (Decimal(0), "unpriced")
    default = Pricer(settings(tmp_path, unknown_model="1.00")).price(call("mystery", "local"), USAGE)
    assert default.cost == Decimal("0.0012") and "default price" in default.source


def test_estimates(tmp_path: Path) -> None:
    pricer = Pricer(settings(tmp_path, default_input_tokens=100, default_max_output_tokens=10))
    assert pricer.estimate(call(estimated_cost=Decimal("0.2"))).source == "host estimate"
    usage = pricer.estimate_usage(call())
    assert (usage.input_tokens, usage.output_tokens) == (100, 10)
    usage = pricer.estimate_usage(call(input_tokens=7, max_output_tokens=3))
    assert (usage.input_tokens, usage.output_tokens) == (7, 3)
    est = pricer.estimate(call(input_tokens=7, max_output_tokens=3))
    assert est.cost == Pricer(settings(tmp_path)).price(call(), LLMUsage(input_tokens=7, output_tokens=3)).cost
    assert est.source.startswith("estimate from genai-prices")


def test_implausible_amounts_are_refused_clearly(tmp_path: Path) -> None:
    pricer = Pricer(settings(tmp_path))
    with pytest.raises(ValueError, match="not a plausible cost"):
        pricer.price(call(), LLMUsage(cost=Decimal("1e30")))
    with pytest.raises(ValueError, match="not plausible"):
        pricer.estimate(call(estimated_cost=Decimal("1e15")))
