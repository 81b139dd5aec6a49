"""Usage read from real provider response bodies, priced as genai-prices prices the same tokens."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.exceptions import UnknownPriceError
from atlas_budget_plugin.pricing import Pricer
from atlas_budget_plugin.settings import BudgetSettings
from hookspecs import LLMCall, LLMUsage

FIXTURES = Path(__file__).parents[1] / "fixtures" / "responses"

CASES = [
    # file, provider, model, expected (input incl. cache, output, cache read, cache write)
    ("openai_chat.json", "openai", "gpt-4o", (2006, 300, 1920, 0)),
    ("openai_responses.json", "openai", "gpt-4o-mini", (3600, 812, 2048, 0)),
    ("anthropic_messages.json", "anthropic", "claude-3-5-sonnet-latest", (24 + 1650 + 3200, 410, 3200, 1650)),
    ("gemini_generate_content.json", "google", "gemini-1.5-pro", (4210, 95, 4096, 0)),
]


@pytest.mark.parametrize(("name", "provider", "model", "tokens"), CASES)
def test_usage_from_response_is_priced_like_genai_prices(
    services: BudgetServices, name: str, provider: str, model: str, tokens: tuple[int, int, int, int]
) -> None:
    body = json.loads((FIXTURES / name).read_text())
    call = LLMCall(call_id=name, provider=provider, model=model)
    record = services.tracking.record_call(call, LLMUsage(response=body))
    assert record is not None
    assert (record.input_tokens, record.output_tokens, record.cache_read_tokens, record.cache_write_tokens) == tokens
    independent = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=tokens[0], output_tokens=tokens[1], cache_read_tokens=tokens[2], cache_write_tokens=tokens[3]
        ),
        model,
        provider_id=provider,
    ).total_price
    assert record.cost == independent and record.cost > 0
    assert record.price_source.startswith("genai-prices")


def test_explicit_counts_win_over_response(services: BudgetServices) -> None:
    body = json.loads((FIXTURES / "openai_chat.json").read_text())
    record = services.tracking.record_call(
        LLMCall(call_id="x", provider="openai", model="gpt-4o"),
        LLMUsage(input_tokens=10, output_tokens=1, response=body),
    )
    assert record is not None and record.input_tokens == 10


def test_unreadable_response_is_recorded_at_the_estimate_and_says_why(
    services: BudgetServices, caplog: pytest.LogCaptureFixture
) -> None:
    call = LLMCall(call_id="y", provider="openai", model="gpt-4o", estimated_cost=Decimal("0.05"))
    record = services.tracking.record_call(call, LLMUsage(response={"nothing": "here"}))
    assert record is not None and record.cost == Decimal("0.05")
    assert "cannot read usage from the openai response" in record.price_source
    assert "recorded at its estimate" in caplog.text


def pricer(tmp_path: Path, **kw: Any) -> Pricer:
    return Pricer(BudgetSettings.load(None, **kw))


def test_images_are_priced_per_unit_by_override(tmp_path: Path) -> None:
    p = pricer(
        tmp_path, prices={"openai/dall-e-3": {"per_unit": {"image:1024x1024:hd": "0.08", "image:1024x1024": "0.04"}}}
    )
    call = LLMCall(call_id="i", provider="openai", model="dall-e-3", operation="image")
    price = p.price(call, LLMUsage(units={"image:1024x1024:hd": 2, "image:1024x1024": 1}))
    assert price.cost == Decimal("0.20")
    with pytest.raises(UnknownPriceError, match="no per_unit price for it"):
        p.price(call, LLMUsage(units={"image:1792x1024:hd": 1}))


def test_audio_seconds_from_catalogue(tmp_path: Path) -> None:
    call = LLMCall(call_id="a", provider="openai", model="whisper-1", operation="audio")
    price = pricer(tmp_path).price(call, LLMUsage(units={"audio_seconds": Decimal("90")}))
    expected = genai_prices.calc_price(genai_prices.Usage(audio_seconds=90), "whisper-1", provider_id="openai")
    assert price.cost == expected.total_price > 0


def test_units_nobody_prices_need_an_override(tmp_path: Path) -> None:
    call = LLMCall(call_id="c", provider="local", model="voice-9", operation="audio")
    with pytest.raises(UnknownPriceError, match=r"with units \['characters'\]"):
        pricer(tmp_path, unknown_model="1.00").price(call, LLMUsage(units={"characters": 1200}))
    p = pricer(tmp_path, prices={"local/voice-9": {"per_unit": {"characters": "0.000015"}}})
    assert p.price(call, LLMUsage(units={"characters": 1200})).cost == Decimal("0.018")


def test_units_are_stored_for_repricing(services: BudgetServices) -> None:
    call = LLMCall(call_id="w", provider="openai", model="whisper-1", operation="audio")
    record = services.tracking.record_call(call, LLMUsage(units={"audio_seconds": Decimal("12.5")}))
    assert record is not None and record.units == {"audio_seconds": Decimal("12.5")}
    assert services.tracking.list_usage(services_admin())[0].units == {"audio_seconds": Decimal("12.5")}


def services_admin() -> Any:
    from atlas_budget_plugin.types import Actor

    return Actor.system()


@pytest.mark.parametrize(
    ("units", "error"),
    [({"x": -1}, ValueError), ({"x": 1.5}, TypeError), ({"": 1}, TypeError), ({"x": Decimal("NaN")}, ValueError)],
)
def test_units_validation(units: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        LLMUsage(units=units)
    assert not LLMUsage(units={"images": 1}).is_empty
