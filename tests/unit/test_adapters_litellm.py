"""LiteLLM adapters with the real litellm package over mock transports (no network): wrappers, Router callback.

completion, acompletion, streamed or not, and a Router with two deployments behind
one group settle to the cost summed here from genai-prices' per-token prices; a
denied call sends no request.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pluggy
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of LiteLLM's price map at import
litellm = pytest.importorskip("litellm")
httpx = pytest.importorskip("httpx")  # LiteLLM's own HTTP client

from atlas_budget_plugin import BudgetServices  # noqa: E402
from atlas_budget_plugin.adapters.litellm import (  # noqa: E402
    BudgetCallback,
    budgeted_acompletion,
    budgeted_completion,
    resolve_model,
)
from atlas_budget_plugin.plugin import BudgetPlugin  # noqa: E402
from atlas_budget_plugin.types import Actor  # noqa: E402
from hookspecs import CallBlocked, specs  # noqa: E402

from .sdk_mocks import ANTHROPIC_USAGE, cost  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

POLICY = [{"name": "all", "period": "day", "limit": "100", "enforcement": "block"}]
MESSAGES = [{"role": "user", "content": "Say hello"}]
USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 200,
    "total_tokens": 1200,
    "prompt_tokens_details": {"cached_tokens": 400},
}


def openai_cost(model: str) -> Any:
    return cost("openai", model, plain_input=600, cache_read=400, output=200)


class Provider:
    """A mock OpenAI endpoint that records what it is sent; answers JSON or SSE with USAGE."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def __call__(self, request: Any) -> Any:
        body = json.loads(request.content)
        self.sent.append(body)
        model = body["model"]
        if body.get("stream"):

            def chunk(delta: Any, usage: Any = None, finish: Any = None) -> dict[str, Any]:
                choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
                return {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": model,
                    "choices": choices,
                    "usage": usage,
                }

            chunks = [
                chunk({"role": "assistant", "content": "Hel"}),
                chunk({"content": "lo"}),
                chunk({}, finish="stop"),
            ]
            if (body.get("stream_options") or {}).get("include_usage"):
                chunks.append(chunk(None, USAGE))
            text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})
        return httpx.Response(
            200,
            json={
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}
                ],
                "usage": USAGE,
            },
        )


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[Provider]:
    """LiteLLM's OpenAI calls go to the mock: litellm.client_session / aclient_session are its httpx clients."""
    mock = Provider()

    async def answer(request: Any) -> Any:
        return mock(request)

    litellm.in_memory_llm_clients_cache.flush_cache()  # LiteLLM keeps SDK clients bound to earlier sessions
    litellm.logging_callback_manager._reset_all_callbacks()  # and copies of earlier tests' callbacks
    monkeypatch.setattr(litellm, "client_session", httpx.Client(transport=httpx.MockTransport(mock)))
    monkeypatch.setattr(litellm, "aclient_session", httpx.AsyncClient(transport=httpx.MockTransport(answer)))
    monkeypatch.setattr(litellm, "callbacks", [])
    yield mock
    litellm.in_memory_llm_clients_cache.flush_cache()
    litellm.logging_callback_manager._reset_all_callbacks()


@pytest.fixture
def budget(make_services: Any) -> BudgetServices:
    services: BudgetServices = make_services(policies=POLICY)
    return services


@pytest.fixture
def pm(budget: BudgetServices) -> pluggy.PluginManager:
    manager = pluggy.PluginManager(specs.PROJECT)
    manager.add_hookspecs(specs)
    manager.register(BudgetPlugin(budget), name="budget")
    return manager


def records(services: BudgetServices) -> list[Any]:
    return services.tracking.list_usage(Actor.system())


def test_litellm_model_strings_resolve() -> None:
    assert resolve_model("openai/gpt-4o") == ("openai", "gpt-4o")
    assert resolve_model("gpt-4o-mini") == ("openai", "gpt-4o-mini")
    assert resolve_model("anthropic/claude-haiku-4-5") == ("anthropic", "claude-haiku-4-5")
    assert resolve_model("gemini/gemini-2.5-flash") == ("google", "gemini-2.5-flash")
    assert resolve_model("claude-haiku-4-5", custom_llm_provider="anthropic") == ("anthropic", "claude-haiku-4-5")
    with pytest.raises(ValueError, match="non-empty string"):
        resolve_model("")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_budgeted_completion_settles_exactly(provider: Provider, pm: Any, budget: BudgetServices, stream: bool) -> None:
    response = budgeted_completion(
        pm=pm,
        budget={"actor": "alice"},
        model="openai/gpt-4o",
        messages=MESSAGES,
        api_key="sk-test",
        max_tokens=300,
        stream=stream,
    )
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in response if c.choices) == "Hello"
    else:
        assert response.choices[0].message.content == "Hello"
    (record,) = records(budget)
    assert (record.provider, record.model, record.actor) == ("openai", "gpt-4o", "alice")
    assert record.cost == openai_cost("gpt-4o") and record.price_source.startswith("genai-prices")
    assert budget.ledger.outstanding_units() == 0
    assert len(provider.sent) == 1 and provider.sent[0]["max_tokens"] == 300
    if stream:
        assert provider.sent[0]["stream_options"] == {"include_usage": True}  # asked for, so usage comes back


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_budgeted_acompletion_settles_exactly(
    provider: Provider, pm: Any, budget: BudgetServices, stream: bool
) -> None:
    async def ask() -> str:
        response = await budgeted_acompletion(
            pm=pm, model="gpt-4o-mini", messages=MESSAGES, api_key="sk-test", stream=stream
        )
        if not stream:
            return str(response.choices[0].message.content)
        return "".join([c.choices[0].delta.content or "" async for c in response if c.choices])

    assert asyncio.run(ask()) == "Hello"
    (record,) = records(budget)
    assert record.cost == openai_cost("gpt-4o-mini") and budget.ledger.outstanding_units() == 0


def test_a_stream_left_early_is_settled_with_what_is_known(provider: Provider, pm: Any, budget: BudgetServices) -> None:
    stream = budgeted_completion(
        pm=pm, model="openai/gpt-4o", messages=MESSAGES, api_key="sk-test", max_tokens=300, stream=True
    )
    next(iter(stream))
    stream.close()
    (record,) = records(budget)
    assert "StreamAbandoned" in (record.error or "") and "billed, but no usage reported" in record.price_source
    assert record.cost == cost("openai", "gpt-4o", plain_input=4 + 3, output=300)  # the estimate: nothing known
    assert budget.ledger.outstanding_units() == 0


def test_a_denied_call_sends_no_request(provider: Provider, make_services: Any) -> None:
    services = make_services(policies=[{"name": "tiny", "period": "day", "limit": "0.0001"}])
    manager = pluggy.PluginManager(specs.PROJECT)
    manager.add_hookspecs(specs)
    manager.register(BudgetPlugin(services), name="budget")
    with pytest.raises(CallBlocked, match="tiny"):
        budgeted_completion(pm=manager, model="openai/gpt-4o", messages=MESSAGES, api_key="sk-test", max_tokens=4000)
    with pytest.raises(CallBlocked, match="tiny"):
        asyncio.run(
            budgeted_acompletion(
                pm=manager, model="openai/gpt-4o", messages=MESSAGES, api_key="sk-test", max_tokens=4000
            )
        )
    assert provider.sent == [] and records(services) == [] and services.ledger.outstanding_units() == 0


def test_anthropic_usage_through_litellm_is_priced_exactly(pm: Any, budget: BudgetServices) -> None:
    from litellm.llms.custom_httpx.http_handler import HTTPHandler

    def anthropic_api(request: Any) -> Any:
        return httpx.Response(
            200,
            json={
                "id": "m1",
                "type": "message",
                "role": "assistant",
                "model": "claude-haiku-4-5",
                "content": [{"type": "text", "text": "Hello"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {**ANTHROPIC_USAGE},
            },
        )

    client = HTTPHandler(client=httpx.Client(transport=httpx.MockTransport(anthropic_api)))
    budgeted_completion(
        pm=pm, model="anthropic/claude-haiku-4-5", messages=MESSAGES, api_key="sk-test", max_tokens=400, client=client
    )
    (record,) = records(budget)
    assert record.provider == "anthropic"
    assert record.cost == cost(
        "anthropic",
        "claude-haiku-4-5",
        plain_input=100,
        cache_write_5m=1000,
        cache_write_1h=2000,
        cache_read=500,
        output=250,
    ), record.price_source


# --- the Router callback ---------------------------------------------------------------------------------------


def router() -> Any:
    return litellm.Router(
        model_list=[
            {"model_name": "smart", "litellm_params": {"model": "openai/gpt-4o", "api_key": "sk-test"}},
            {"model_name": "smart", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-test"}},
        ],
        num_retries=0,
    )


def test_router_calls_are_budgeted_per_deployment(
    provider: Provider, pm: Any, budget: BudgetServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(litellm, "callbacks", [BudgetCallback(pm, actor="bob")])
    smart = router()

    async def calls() -> int:
        made = 0  # until both deployments have answered, streamed and not (the pick is random)
        while made < 4 or len({body["model"] for body in provider.sent}) < 2:
            assert made < 40, "the router never picked both deployments"
            stream = made % 2 == 1
            response = await smart.acompletion(
                model="smart",
                messages=MESSAGES,
                max_tokens=300,
                stream=stream,
                **({"stream_options": {"include_usage": True}} if stream else {}),
            )
            if stream:
                async for _ in response:
                    pass
            made += 1
        for _ in range(500):  # LiteLLM runs its success callbacks as tasks after the call returns
            if len(records(budget)) == made:
                break
            await asyncio.sleep(0.01)
        return made

    made = asyncio.run(calls())
    served = [body["model"] for body in provider.sent]
    found = records(budget)
    assert len(found) == made and {r.model for r in found} == set(served) == {"gpt-4o", "gpt-4o-mini"}
    assert {r.tags.get("model_group") for r in found} == {"smart"}
    assert sorted(r.model for r in found) == sorted(served)  # each call charged to the deployment that answered
    assert sum(r.cost for r in found) == sum(openai_cost(model) for model in served)
    assert {r.actor for r in found} == {"bob"} and budget.ledger.outstanding_units() == 0


def test_router_denies_before_any_request(
    provider: Provider, make_services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = make_services(policies=[{"name": "tiny", "period": "day", "limit": "0.0001"}])
    manager = pluggy.PluginManager(specs.PROJECT)
    manager.add_hookspecs(specs)
    manager.register(BudgetPlugin(services), name="budget")
    monkeypatch.setattr(litellm, "callbacks", [BudgetCallback(manager)])
    with pytest.raises(CallBlocked, match="tiny") as raised:
        asyncio.run(router().acompletion(model="smart", messages=MESSAGES, max_tokens=4000))
    assert raised.value.verdict.details
    assert provider.sent == [] and records(services) == [] and services.ledger.outstanding_units() == 0


def test_a_callback_stream_left_early_is_settled_when_collected(
    provider: Provider, pm: Any, budget: BudgetServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc
    import time

    monkeypatch.setattr(litellm, "callbacks", [BudgetCallback(pm)])

    async def leave_early() -> None:
        stream = await litellm.acompletion(
            model="openai/gpt-4o", messages=MESSAGES, api_key="sk-test", max_tokens=300, stream=True
        )
        async for _ in stream:
            break  # LiteLLM fires neither a success nor a failure event for this call

    asyncio.run(leave_early())
    gc.collect()
    for _ in range(500):
        if records(budget):
            break
        time.sleep(0.01)
    (record,) = records(budget)
    assert "StreamAbandoned" in (record.error or "") and "billed, but no usage reported" in record.price_source
    assert record.cost == cost("openai", "gpt-4o", plain_input=4 + 3, output=300)
    assert budget.ledger.outstanding_units() == 0


def test_call_details_and_bad_input(provider: Provider, pm: Any, budget: BudgetServices) -> None:
    from atlas_budget_plugin.adapters.litellm import usage_of

    assert resolve_model("mycorp/llama-3") == ("mycorp", "llama-3")  # a provider LiteLLM does not know
    with pytest.raises(ValueError, match=r"unknown LLMCall fields \['user'\]"):
        budgeted_completion(pm=pm, budget={"user": "x"}, model="openai/gpt-4o", messages=MESSAGES)
    with pytest.raises(TypeError, match="needs model="):
        budgeted_completion(pm=pm, messages=MESSAGES)
    with pytest.raises(TypeError, match="call_info must be a callable"):
        BudgetCallback(pm, call_info="bob")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="LLMCall.tenant"):
        BudgetCallback(pm, tenant="")
    stream = budgeted_completion(
        pm=pm,
        budget={"estimated_cost": 0.5, "tags": {"team": "a"}},
        model="openai/gpt-4o",
        messages=MESSAGES,
        api_key="sk-test",
        stream=True,
        stream_options={"include_usage": True},
        service_tier="flex",
    )
    assert stream.completion_stream is not None  # LiteLLM's own stream attributes are reachable
    with stream:
        next(stream)  # one chunk, then closed: billed, no usage known yet
    (record,) = records(budget)
    assert record.tags == {"team": "a", "service_tier": "flex"} and "StreamAbandoned" in (record.error or "")
    assert provider.sent[0]["stream_options"] == {"include_usage": True}
    tiered = usage_of({"prompt_tokens": 10, "completion_tokens": 2, "cache_read_input_tokens": 4}, "priority")
    assert (tiered.input_tokens, tiered.cache_read_tokens, tiered.service_tier) == (10, 4, "priority")
    assert usage_of({"prompt_tokens": 3, "cache_read_input_tokens": 9}).cache_read_tokens == 3  # never above input


def test_a_failed_call_is_released(
    provider: Provider, pm: Any, budget: BudgetServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(request: Any) -> Any:
        provider.sent.append(json.loads(request.content))
        return httpx.Response(400, json={"error": {"message": "bad request", "type": "invalid_request_error"}})

    async def afailing(request: Any) -> Any:
        return failing(request)

    monkeypatch.setattr(litellm, "client_session", httpx.Client(transport=httpx.MockTransport(failing)))
    monkeypatch.setattr(litellm, "aclient_session", httpx.AsyncClient(transport=httpx.MockTransport(afailing)))
    litellm.in_memory_llm_clients_cache.flush_cache()
    with pytest.raises(litellm.BadRequestError):
        budgeted_completion(pm=pm, model="openai/gpt-4o", messages=MESSAGES, api_key="sk-test", max_retries=0)
    with pytest.raises(litellm.BadRequestError):
        asyncio.run(
            budgeted_acompletion(pm=pm, model="openai/gpt-4o", messages=MESSAGES, api_key="sk-test", max_retries=0)
        )
    callback = BudgetCallback(pm, call_info=lambda kwargs: {"actor": "carol"})
    monkeypatch.setattr(litellm, "callbacks", [callback])

    async def through_callback() -> None:
        with pytest.raises(litellm.BadRequestError):
            await litellm.acompletion(model="openai/gpt-4o", messages=MESSAGES, api_key="sk-test", max_retries=0)
        for _ in range(500):
            if not callback.open:
                break
            await asyncio.sleep(0.01)

    asyncio.run(through_callback())
    assert len(provider.sent) == 3 and callback.open == {}
    assert records(budget) == [] and budget.ledger.outstanding_units() == 0


def test_the_callbacks_sync_events_settle_too(pm: Any, budget: BudgetServices) -> None:
    from hookspecs import LLMCall, open_call

    callback = BudgetCallback(pm)
    response = litellm.ModelResponse(
        model="gpt-4o", usage=litellm.Usage(prompt_tokens=1000, completion_tokens=200, total_tokens=1200)
    )
    for call_id in ("s1", "s2"):
        callback.open[call_id] = open_call(pm, LLMCall(call_id=call_id, provider="openai", model="gpt-4o"))
    callback.log_success_event({"litellm_call_id": "s1", "model": "openai/gpt-4o-mini"}, response, None, None)
    callback.log_failure_event({"litellm_call_id": "s2", "exception": "timed out"}, None, None, None)
    callback.log_success_event({"litellm_call_id": "s1", "call_type": "completion"}, response, None, None)  # again
    callback.log_success_event({"litellm_call_id": "e1", "call_type": "embedding"}, response, None, None)  # not ours
    (record,) = records(budget)
    assert record.model == "gpt-4o-mini"  # charged to the model that answered
    assert record.cost == cost("openai", "gpt-4o-mini", plain_input=1000, output=200)
    assert callback.open == {} and budget.ledger.outstanding_units() == 0


def test_an_async_stream_that_fails_midway_is_settled(pm: Any, budget: BudgetServices) -> None:
    from atlas_budget_plugin.adapters.litellm import _Stream
    from hookspecs import LLMCall, open_call

    class Broken:
        def __init__(self) -> None:
            self.sent = 0

        def __aiter__(self) -> Broken:
            return self

        async def __anext__(self) -> Any:
            self.sent += 1
            if self.sent > 1:
                raise ConnectionError("reset")
            return litellm.ModelResponseStream(model="gpt-4o", choices=[])

        async def aclose(self) -> None:
            pass

    opened = open_call(
        pm, LLMCall(call_id="b1", provider="openai", model="gpt-4o", input_tokens=10, max_output_tokens=10)
    )

    async def read() -> None:
        stream = _Stream(Broken(), opened)
        with pytest.raises(ConnectionError):
            async for _ in stream:
                pass
        await stream.aclose()  # already settled: nothing more

    asyncio.run(read())
    (record,) = records(budget)
    assert "ConnectionError" in (record.error or "") and budget.ledger.outstanding_units() == 0


def test_sync_router_calls_are_recorded_after_the_call(
    provider: Provider, pm: Any, budget: BudgetServices, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    import time

    monkeypatch.setattr(litellm, "callbacks", [BudgetCallback(pm, actor="dan")])
    answer = router().completion(model="smart", messages=MESSAGES, max_tokens=300)
    budgeted_completion(pm=pm, model="openai/gpt-4o", messages=MESSAGES, api_key="sk-test")  # not twice
    for _ in range(500):  # LiteLLM runs sync success callbacks on a thread after the call returns
        if len(records(budget)) == 2:
            break
        time.sleep(0.01)
    time.sleep(0.1)
    wrapped, unchecked = sorted(records(budget), key=lambda r: r.actor or "")
    assert (unchecked.actor, unchecked.model, unchecked.tags["model_group"]) == ("dan", answer.model, "smart")
    assert unchecked.tags["budget_check"] == "after the call" and unchecked.cost == openai_cost(answer.model)
    assert wrapped.actor is None and len(records(budget)) == 2
    assert "cannot check sync LiteLLM calls" in caplog.text
