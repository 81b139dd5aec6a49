"""Streams settled through the guard: merged usage, include_usage, abandoned streams, SDK stream helpers."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import pluggy
import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.types import Actor
from hookspecs import LLMCall, LLMUsage, StreamUsage, guarded_call, hookimpl, specs

from .sdk_mocks import CALL_TOKENS, MESSAGES, PROVIDERS, cost, request, sync_client

pytest.importorskip("openai")
pytest.importorskip("anthropic")

CHAT, RESPONSES, ANTHROPIC, GEMINI = PROVIDERS


@pytest.fixture
def budget(make_services: Any) -> BudgetServices:
    services: BudgetServices = make_services(policies=[{"name": "all", "period": "day", "limit": "100"}])
    return services


@pytest.fixture
def pm(budget: BudgetServices) -> pluggy.PluginManager:
    from atlas_budget_plugin.plugin import BudgetPlugin

    manager = pluggy.PluginManager(specs.PROJECT)
    manager.add_hookspecs(specs)
    manager.register(BudgetPlugin(budget), name="budget")
    return manager


def only_record(services: BudgetServices) -> Any:
    records = services.tracking.list_usage(Actor.system())
    assert len(records) == 1, records
    return records[0]


def call_for(p: Any, call_id: str = "s1") -> LLMCall:
    return LLMCall(call_id=call_id, provider=p.provider, model=p.model, tags=dict(p.tags), **CALL_TOKENS)


def test_openai_stream_without_include_usage_is_recorded_at_its_estimate_and_says_so(
    pm: pluggy.PluginManager, budget: BudgetServices, caplog: pytest.LogCaptureFixture
) -> None:
    client = sync_client(CHAT)
    with guarded_call(pm, call_for(CHAT)) as guard:
        for chunk in client.chat.completions.create(model="gpt-5", messages=MESSAGES, stream=True):
            guard.observe(chunk)
    record = only_record(budget)
    assert record.cost == CHAT.abandoned_cost  # the pre-flight estimate: 1000 in, 400 out at the priority tier
    assert "billed, but no usage reported" in record.price_source
    assert "include_usage" in caplog.text
    assert budget.ledger.outstanding_units() == 0


def test_breaking_out_of_a_stream_settles_with_what_is_known(pm: pluggy.PluginManager, budget: BudgetServices) -> None:
    client = sync_client(ANTHROPIC)
    with guarded_call(pm, call_for(ANTHROPIC)) as guard:
        for event in client.messages.create(model=ANTHROPIC.model, max_tokens=400, messages=MESSAGES, stream=True):
            guard.observe(event)
            if event.type == "content_block_delta":
                break  # the consumer has what it wanted; no exception
    record = only_record(budget)
    assert record.cost == ANTHROPIC.abandoned_cost  # message_start's input and cache counts, 1 output token
    assert record.error is None and budget.ledger.outstanding_units() == 0


def test_a_stream_that_failed_before_its_first_chunk_is_released(
    pm: pluggy.PluginManager, budget: BudgetServices
) -> None:
    with pytest.raises(ConnectionError), guarded_call(pm, call_for(CHAT)):
        raise ConnectionError("provider unreachable")
    assert budget.tracking.list_usage(Actor.system()) == []
    assert budget.ledger.outstanding_units() == 0


def test_an_abandoned_stream_with_no_usage_keeps_its_error_and_is_billed(
    pm: pluggy.PluginManager, budget: BudgetServices
) -> None:
    client = sync_client(RESPONSES)
    with pytest.raises(TimeoutError), guarded_call(pm, call_for(RESPONSES)) as guard:
        for event in client.responses.create(model=RESPONSES.model, input="hi", stream=True):
            guard.observe(event)
            raise TimeoutError("read timed out")
    record = only_record(budget)
    assert record.cost == RESPONSES.abandoned_cost and "TimeoutError" in (record.error or "")


def test_sdk_stream_helpers_are_understood(pm: pluggy.PluginManager, budget: BudgetServices) -> None:
    anthropic = sync_client(ANTHROPIC)
    with guarded_call(pm, call_for(ANTHROPIC, "helper-a")) as guard:
        with anthropic.messages.stream(model=ANTHROPIC.model, max_tokens=400, messages=MESSAGES) as stream:
            for event in stream:  # text events, parsed blocks, and a message_stop with the final message
                guard.observe(event)
    openai = sync_client(CHAT)
    with guarded_call(pm, call_for(CHAT, "helper-o")) as guard:
        with openai.chat.completions.stream(
            model="gpt-5", messages=MESSAGES, stream_options={"include_usage": True}
        ) as chat_stream:
            for chat_event in chat_stream:  # chunk events wrap the raw chunks
                guard.observe(chat_event)
    costs = {r.call_id: r.cost for r in budget.tracking.list_usage(Actor.system())}
    assert costs == {"helper-a": ANTHROPIC.json_cost, "helper-o": CHAT.json_cost}


def test_usage_set_by_the_host_wins_over_observed_chunks(pm: pluggy.PluginManager, budget: BudgetServices) -> None:
    client = sync_client(GEMINI)
    with guarded_call(pm, call_for(GEMINI)) as guard:
        for chunk in request(GEMINI, client, stream=True):
            assert guard.observe(chunk) is chunk
        guard.usage = LLMUsage(input_tokens=10, output_tokens=1)
    assert only_record(budget).cost == cost("google", "gemini-2.5-flash", plain_input=10, output=1)


def test_anthropic_message_delta_counts_are_cumulative() -> None:
    merged = StreamUsage()
    merged.observe(
        {
            "type": "message_start",
            "message": {"model": "claude-haiku-4-5", "usage": {"input_tokens": 10, "output_tokens": 1}},
        }
    )
    merged.observe({"type": "message_delta", "usage": {"output_tokens": 20}})
    merged.observe({"type": "message_delta", "usage": {"output_tokens": 45, "input_tokens": 12}})  # newer APIs
    assert merged.body() == {
        "type": "message",
        "model": "claude-haiku-4-5",
        "usage": {"input_tokens": 12, "output_tokens": 45},
    }
    merged.observe({"type": "message_stop"})
    assert merged.finished


def test_gemini_last_usage_wins_in_either_spelling() -> None:
    merged = StreamUsage()
    merged.observe({"candidates": [], "usage_metadata": {"prompt_token_count": 5}, "model_version": "gemini-x"})
    merged.observe(
        {"candidates": [{"finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 9}}
    )
    assert merged.body() == {
        "modelVersion": "gemini-x",
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 9},
    }
    assert merged.finished


def test_responses_usage_and_tier_come_from_the_completed_event() -> None:
    merged = StreamUsage()
    merged.observe({"type": "response.created", "response": {"model": "gpt-5", "service_tier": "auto", "usage": None}})
    assert merged.started and not merged.known and merged.body() is None
    usage = {"input_tokens": 3, "output_tokens": 4}
    merged.observe(
        {"type": "response.completed", "response": {"model": "gpt-5", "service_tier": "priority", "usage": usage}}
    )
    assert merged.body() == {"object": "response", "model": "gpt-5", "service_tier": "priority", "usage": usage}


def test_observe_refuses_what_is_not_a_chunk() -> None:
    merged = StreamUsage()
    for bad in (None, "data: {}", b"{}", 3):
        with pytest.raises(TypeError, match="observe\\(\\) takes a stream chunk or event"):
            merged.observe(bad)
    assert not merged.started


def test_post_sees_billed_marker_for_a_started_stream_without_usage() -> None:
    seen: list[tuple[LLMUsage, BaseException | None]] = []

    class Recorder:
        @hookimpl
        def post_llm_call(self, call: LLMCall, usage: LLMUsage, error: BaseException | None) -> None:
            seen.append((usage, error))

    manager = pluggy.PluginManager(specs.PROJECT)
    manager.add_hookspecs(specs)
    manager.register(Recorder())
    with pytest.raises(RuntimeError), guarded_call(manager, LLMCall(call_id="b", provider="openai", model="m")) as g:
        g.observe({"object": "chat.completion.chunk", "choices": [{"delta": {"content": "x"}}]})
        raise RuntimeError("gave up")
    ((usage, error),) = seen
    assert usage.billed is True and usage.is_empty and isinstance(error, RuntimeError)


def test_llm_usage_new_fields_are_checked() -> None:
    with pytest.raises(TypeError, match="service_tier"):
        LLMUsage(service_tier="")
    with pytest.raises(TypeError, match="billed"):
        LLMUsage(billed="yes")  # type: ignore[arg-type]
    assert LLMUsage(billed=True).is_empty  # billed says nothing about the counts
    assert LLMUsage(1, 2, 0, 0, Decimal("0.1")).cost == Decimal("0.1")  # positional use unchanged


def test_a_stream_with_no_usage_and_no_chunks_settles_as_before(
    pm: pluggy.PluginManager, budget: BudgetServices, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with guarded_call(pm, call_for(CHAT)):
        pass  # the host reported nothing: recorded at the estimate, as before streams were observed
    record = only_record(budget)
    assert record.price_source.endswith("no usage reported") and "include_usage" not in caplog.text
