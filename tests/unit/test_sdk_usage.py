"""Usage from the real openai, anthropic and google-genai SDKs (mock transports): every provider, form and mode.

Every case settles to the cost summed in the test from genai-prices' per-token
prices, and leaves no hold. Also: the recipes page runs, SDK objects read like
their JSON, zero provider costs are not trusted, estimates say when defaults were used.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.plugin import BudgetPlugin
from atlas_budget_plugin.pricing import Pricer
from atlas_budget_plugin.settings import BudgetSettings
from atlas_budget_plugin.types import Actor
from hookspecs import LLMCall, LLMUsage, async_guarded_call, guarded_call, plain, specs

from .sdk_mocks import CALL_TOKENS, PROVIDERS, Provider, async_client, cost, request, sync_client

pytest.importorskip("openai")
pytest.importorskip("anthropic")
pytest.importorskip("google.genai")

POLICY = [{"name": "all", "period": "day", "limit": "100", "enforcement": "block"}]


class ConsumerGaveUp(Exception):
    """Raised inside the guarded block after the first chunk: an abandoned stream."""


def as_form(item: Any, form: str) -> Any:
    """The SDK object itself, or the dict a host gets from it with a plain ``model_dump()`` (snake_case)."""
    return item if form == "object" else item.model_dump()


def host_for(services: BudgetServices) -> Any:
    import pluggy

    pm = pluggy.PluginManager(specs.PROJECT)
    pm.add_hookspecs(specs)
    pm.register(BudgetPlugin(services), name="budget")
    return pm


def make_call(p: Provider, case: str) -> LLMCall:
    return LLMCall(call_id=case, provider=p.provider, model=p.model, tags=dict(p.tags), **CALL_TOKENS)


def sync_run(p: Provider, pm: Any, call: LLMCall, form: str, mode: str) -> None:
    client = sync_client(p)
    try:
        with guarded_call(pm, call) as guard:
            if mode == "json":
                guard.usage = LLMUsage(response=as_form(request(p, client, stream=False), form))
                return
            for chunk in request(p, client, stream=True):
                guard.observe(as_form(chunk, form))
                if mode == "abandoned":
                    raise ConsumerGaveUp
    except ConsumerGaveUp:
        assert mode == "abandoned"


async def async_run(p: Provider, pm: Any, call: LLMCall, form: str, mode: str) -> None:
    client = async_client(p)
    try:
        async with async_guarded_call(pm, call) as guard:
            if mode == "json":
                guard.usage = LLMUsage(response=as_form(await request(p, client, stream=False), form))
                return
            async for chunk in await request(p, client, stream=True):
                guard.observe(as_form(chunk, form))
                if mode == "abandoned":
                    raise ConsumerGaveUp
    except ConsumerGaveUp:
        assert mode == "abandoned"


@pytest.mark.parametrize("mode", ["json", "stream", "abandoned"])
@pytest.mark.parametrize("flow", ["sync", "async"])
@pytest.mark.parametrize("form", ["object", "dict"])
@pytest.mark.parametrize("p", PROVIDERS, ids=lambda p: p.name)
def test_every_provider_form_flow_and_mode_settles_exactly(
    make_services: Any, admin: Actor, p: Provider, form: str, flow: str, mode: str
) -> None:
    services = make_services(policies=POLICY)
    pm = host_for(services)
    call = make_call(p, f"{p.name}-{form}-{flow}-{mode}")
    if flow == "sync":
        sync_run(p, pm, call, form, mode)
    else:
        asyncio.run(async_run(p, pm, call, form, mode))
    expected = p.abandoned_cost if mode == "abandoned" else p.json_cost
    (record,) = services.tracking.list_usage(admin)
    assert record.call_id == call.call_id
    assert record.cost == expected > 0, record.price_source
    assert services.ledger.outstanding_units() == 0
    if mode == "abandoned" and p.provider == "openai":
        assert "billed, but no usage reported" in record.price_source  # nothing known: the estimate, flagged
    else:
        assert record.price_source.startswith("genai-prices")


def test_cost_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The per-provider costs the matrix above settles to (printed for the report)."""
    lines = [f"{'provider':18} {'model':18} {'JSON / stream':>14} {'abandoned':>12}"]
    for p in PROVIDERS:
        lines.append(f"{p.name:18} {p.model:18} {p.json_cost:>14} {p.abandoned_cost:>12}")
    print("\n".join(lines))
    assert all(p.json_cost > 0 for p in PROVIDERS)


# --- SDK objects read like their JSON -------------------------------------------------------------------------


@pytest.mark.parametrize("p", PROVIDERS, ids=lambda p: p.name)
def test_sdk_object_dict_and_raw_json_resolve_alike(p: Provider) -> None:
    client = sync_client(p)
    response = request(p, client, stream=False)
    raw = p.handler(_fake_request(p)).json()
    call = make_call(p, "x")
    resolved = [
        replace(Pricer.resolve_usage(call, LLMUsage(response=r)), response=None)
        for r in (response, response.model_dump(), raw)
    ]
    assert resolved[0] == resolved[1] == resolved[2]
    assert resolved[0].input_tokens > 0 and resolved[0].output_tokens > 0


def _fake_request(p: Provider) -> Any:
    import httpx2 as httpx

    path = {"gemini": "/v1/models/m:generateContent"}.get(p.name, "/v1/x")
    return httpx.Request("POST", f"https://example.test{path}", json={"model": p.model})


def test_anthropic_one_hour_cache_writes_count(services: BudgetServices) -> None:
    p = next(p for p in PROVIDERS if p.provider == "anthropic")
    message = request(p, sync_client(p), stream=False)
    usage = Pricer.resolve_usage(make_call(p, "a"), LLMUsage(response=message))
    assert usage.cache_write_tokens == 3000 and usage.units["cache_write_1h_tokens"] == 2000
    # typed in by hand: the 1-hour part goes in units, the total in cache_write_tokens
    by_hand = LLMUsage(
        input_tokens=3600,
        output_tokens=250,
        cache_read_tokens=500,
        cache_write_tokens=3000,
        units={"cache_write_1h_tokens": 2000},
    )
    record = services.tracking.record_call(make_call(p, "b"), by_hand)
    assert record is not None and record.cost == p.json_cost
    without = services.tracking.record_call(make_call(p, "c"), LLMUsage(**{**by_hand.__dict__, "units": {}}))
    assert without is not None and without.cost < p.json_cost  # all writes at the 5-minute price: too low


@pytest.mark.parametrize(("tier", "factor"), [("priority", Decimal(2)), ("flex", Decimal("0.5")), (None, Decimal(1))])
def test_service_tier_prices_the_call(services: BudgetServices, tier: str | None, factor: Decimal) -> None:
    body = {
        "object": "chat.completion",
        "model": "gpt-5",
        "usage": {"prompt_tokens": 1000, "completion_tokens": 100},
        **({"service_tier": tier} if tier else {}),
    }
    record = services.tracking.record_call(
        LLMCall(call_id=f"t-{tier}", provider="openai", model="gpt-5"), LLMUsage(response=body)
    )
    standard = cost("openai", "gpt-5", plain_input=1000, output=100)
    assert record is not None and record.cost == standard * factor
    assert record.cost == cost("openai", "gpt-5", tier, plain_input=1000, output=100)


def test_zero_reported_cost_of_a_priced_model_is_not_trusted(services: BudgetServices) -> None:
    call = LLMCall(call_id="z", provider="openai", model="gpt-4o")
    record = services.tracking.record_call(call, LLMUsage(input_tokens=1000, output_tokens=100, cost=Decimal(0)))
    assert record is not None and record.cost == cost("openai", "gpt-4o", plain_input=1000, output=100)
    assert "provider reported cost 0, not trusted" in record.price_source
    # a zero for a call without tokens, or for a model nobody prices, stands
    empty = services.tracking.record_call(
        LLMCall(call_id="z2", provider="openai", model="gpt-4o"), LLMUsage(cost=Decimal(0))
    )
    assert empty is not None and empty.cost == 0 and empty.price_source == "provider"
    local = services.tracking.record_call(
        LLMCall(call_id="z3", provider="local", model="llama"), LLMUsage(input_tokens=10, cost=Decimal(0))
    )
    assert local is not None and local.cost == 0 and local.price_source == "provider"
    # a non-zero provider cost still wins
    paid = services.tracking.record_call(
        LLMCall(call_id="z4", provider="openai", model="gpt-4o"), LLMUsage(input_tokens=10, cost=Decimal("0.5"))
    )
    assert paid is not None and paid.cost == Decimal("0.5")


def test_override_prices_token_details_at_their_totals_price(make_services: Any) -> None:
    services = make_services(prices={"openai/gpt-5": {"input": "1", "output": "2", "cache_read": "0.5"}})
    p = PROVIDERS[0]
    response = request(p, sync_client(p), stream=False)
    record = services.tracking.record_call(make_call(p, "o"), LLMUsage(response=response))
    # 800 plain input at 1, 200 cached at 0.5, 300 output (100 of them reasoning) at 2, per million
    assert record is not None and record.cost == Decimal(800 + 100 + 600) / 1_000_000
    assert record.price_source == "settings prices.openai/gpt-5"


def test_unreadable_sdk_object_is_recorded_at_the_estimate(services: BudgetServices) -> None:
    class Opaque:
        __slots__ = ()

    call = LLMCall(call_id="u", provider="openai", model="gpt-4o", estimated_cost=Decimal("0.07"))
    record = services.tracking.record_call(call, LLMUsage(response=Opaque()))
    assert (
        record is not None
        and record.cost == Decimal("0.07")
        and "cannot read a provider response" in (record.price_source)
    )


def test_plain_reads_to_dict_and_attribute_objects() -> None:
    class WithToDict:
        def to_dict(self) -> dict[str, Any]:
            return {"usage": {"prompt_tokens": 3}}

    class Attrs:
        def __init__(self) -> None:
            self.usage = {"prompt_tokens": 4}
            self._private = 1

    assert plain(WithToDict()) == {"usage": {"prompt_tokens": 3}}
    assert plain(Attrs()) == {"usage": {"prompt_tokens": 4}}
    assert plain({"usage_metadata": {"prompt_token_count": 5}, "model_version": "g"}) == {
        "usageMetadata": {"promptTokenCount": 5},
        "modelVersion": "g",
    }


# --- estimates -------------------------------------------------------------------------------------------------


def test_verdict_says_when_the_estimate_used_default_token_counts(host: Any) -> None:
    (verdict,) = host.hook.pre_llm_call(call=LLMCall(call_id="d1", provider="openai", model="gpt-4o"))
    assert verdict.details["estimate_basis"] == "default token counts: input 1024, output 1024"
    assert any("estimated from default token counts" in w for w in verdict.warnings)
    (partial,) = host.hook.pre_llm_call(call=LLMCall(call_id="d2", provider="openai", model="gpt-4o", input_tokens=50))
    assert partial.details["estimate_basis"] == "default token counts: output 1024"
    (given,) = host.hook.pre_llm_call(
        call=LLMCall(call_id="d3", provider="openai", model="gpt-4o", input_tokens=50, max_output_tokens=10)
    )
    assert given.details["estimate_basis"] == "host token counts" and not given.warnings
    (fixed,) = host.hook.pre_llm_call(
        call=LLMCall(call_id="d4", provider="openai", model="gpt-4o", estimated_cost=Decimal("0.01"))
    )
    assert fixed.details["estimate_basis"] == "host estimate" and not fixed.warnings
    assert given.details["estimated_cost"] == cost("openai", "gpt-4o", plain_input=50, output=10)


def test_estimate_at_a_tagged_service_tier() -> None:
    pricer = Pricer(BudgetSettings.load(None))
    call = LLMCall(call_id="e", provider="openai", model="gpt-5", input_tokens=1000, max_output_tokens=100)
    tagged = LLMCall(**{**call.__dict__, "tags": {"service_tier": "priority"}})
    assert pricer.estimate(tagged).cost == 2 * pricer.estimate(call).cost


def test_approx_tokens() -> None:
    from hookspecs import approx_tokens

    assert approx_tokens("abcdefgh") == 2
    assert approx_tokens("日本語") == 3  # non-Latin characters count high
    messages = [{"role": "user", "content": "abcd"}, {"role": "user", "content": [{"type": "text", "text": "abcd"}]}]
    assert approx_tokens(messages) == 2 * (4 + 1)
    assert approx_tokens("a b c", tokenizer=str.split) == 3
    assert approx_tokens("a b c", tokenizer=lambda text: 7) == 7
    with pytest.raises(TypeError, match="prompt must be a string or a list"):
        approx_tokens({"content": "x"})
    with pytest.raises(TypeError, match="tokenizer must be a callable"):
        approx_tokens("x", tokenizer="cl100k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per_message"):
        approx_tokens([], per_message=-1)


# --- the recipes page runs -----------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
RECIPES = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "using-it-from-your-code.md").read_text(), re.S)


def test_recipes_page_has_recipes() -> None:
    assert len(RECIPES) >= 4


@pytest.mark.parametrize("index", range(len(RECIPES)))
def test_recipe_runs(index: int, tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("ATLAS_BUDGET_")}
    result = subprocess.run(
        [sys.executable, "-c", RECIPES[index]], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_api_flavour_follows_the_body_shape() -> None:
    from atlas_budget_plugin.pricing import _flavor

    assert _flavor("openai", {"object": "chat.completion", "usage": {"prompt_tokens": 1}}) == "chat"
    assert _flavor("openai", {"object": "response", "usage": {"input_tokens": 1}}) == "responses"
    assert _flavor("openai", {"object": "list", "data": [], "usage": {"prompt_tokens": 1}}) == "embeddings"
    # an OpenAI-shaped body from another provider (a compatible endpoint, a proxy) is read as its chat flavour
    assert _flavor("anthropic", {"usage": {"prompt_tokens": 1, "completion_tokens": 1}}) == "chat"
    assert _flavor("anthropic", {"type": "message", "usage": {"input_tokens": 1}}) == "default"
    assert _flavor("openai", ["not", "a", "body"]) == "default"


def test_inconsistent_cache_details_are_refused_clearly() -> None:
    from atlas_budget_plugin.exceptions import ValidationError

    pricer = Pricer(BudgetSettings.load(None))
    call = LLMCall(call_id="i", provider="anthropic", model="claude-haiku-4-5")
    with pytest.raises(ValidationError, match="inconsistent.*cache_write_tokens"):
        pricer.price(call, LLMUsage(input_tokens=100, output_tokens=1, units={"cache_write_1h_tokens": 10}))


def test_estimate_basis_of_other_sources_is_none() -> None:
    from atlas_budget_plugin.pricing import estimate_basis

    assert estimate_basis("genai-prices 0.2.3: openai/gpt-4o") is None
    assert estimate_basis("caller estimate") == "host estimate"
