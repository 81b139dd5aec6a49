"""Mock provider endpoints for the real openai, anthropic and google-genai SDKs (httpx MockTransport, no network).

Each provider answers one JSON response and one stream with known token counts;
``expected_cost`` prices those counts from genai-prices' per-million-token prices,
summed here, independently of the code under test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, TypedDict

import httpx2 as httpx
from genai_prices import data_snapshot

MILLION = Decimal(1_000_000)


def sse(events: Sequence[tuple[str | None, Mapping[str, Any]]], done: bool = False) -> bytes:
    text = "".join((f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n" for name, data in events)
    return (text + ("data: [DONE]\n\n" if done else "")).encode()


def stream_response(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


# --- OpenAI chat completions: gpt-5 at the priority tier -------------------------------------------------------

CHAT_USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 300,
    "total_tokens": 1300,
    "prompt_tokens_details": {"cached_tokens": 200},
    "completion_tokens_details": {"reasoning_tokens": 100},
}


def _chat_chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None, choices: bool = True) -> Any:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-5-2025-08-07",
        "service_tier": "priority",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
        "usage": usage,
    }


def openai_chat(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    if body.get("stream"):
        chunks = [
            _chat_chunk({"role": "assistant", "content": "Hel"}),
            _chat_chunk({"content": "lo"}),
            _chat_chunk({}, finish="stop"),
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append(_chat_chunk({}, usage=CHAT_USAGE, choices=False))
        return stream_response(sse([(None, c) for c in chunks], done=True))
    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-5-2025-08-07",
            "service_tier": "priority",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
            "usage": CHAT_USAGE,
        },
    )


# --- OpenAI Responses API: gpt-5-mini at the flex tier ---------------------------------------------------------

RESPONSES_USAGE = {
    "input_tokens": 2000,
    "input_tokens_details": {"cached_tokens": 500},
    "output_tokens": 600,
    "output_tokens_details": {"reasoning_tokens": 200},
    "total_tokens": 2600,
}


def _response(status: str, usage: Any) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": "gpt-5-mini-2025-08-07",
        "status": status,
        "service_tier": "flex",
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


def openai_responses(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    if body.get("stream"):
        events = [
            (
                "response.created",
                {"type": "response.created", "sequence_number": 0, "response": _response("in_progress", None)},
            ),
            (
                "response.output_text.delta",
                {
                    "type": "response.output_text.delta",
                    "sequence_number": 1,
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": "Hello",
                    "logprobs": [],
                },
            ),
            (
                "response.completed",
                {
                    "type": "response.completed",
                    "sequence_number": 2,
                    "response": _response("completed", RESPONSES_USAGE),
                },
            ),
        ]
        return stream_response(sse(events))
    return httpx.Response(200, json=_response("completed", RESPONSES_USAGE))


# --- Anthropic Messages: claude-haiku-4-5 with 5-minute and 1-hour cache writes ---------------------------------

ANTHROPIC_USAGE = {
    "input_tokens": 100,
    "cache_creation_input_tokens": 3000,
    "cache_read_input_tokens": 500,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
    "output_tokens": 250,
    "service_tier": "standard",
}


def _message(usage: dict[str, Any], stop: str | None) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5-20251001",
        "content": [] if stop is None else [{"type": "text", "text": "Hello"}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }


def anthropic_messages(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    if body.get("stream"):
        events: list[tuple[str | None, dict[str, Any]]] = [
            (
                "message_start",
                {"type": "message_start", "message": _message({**ANTHROPIC_USAGE, "output_tokens": 1}, None)},
            ),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 250},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        return stream_response(sse(events))
    return httpx.Response(200, json=_message(ANTHROPIC_USAGE, "end_turn"))


# --- Google Gemini: gemini-2.5-flash with cached content and thinking tokens ------------------------------------

GEMINI_FINAL = {
    "promptTokenCount": 1200,
    "cachedContentTokenCount": 400,
    "candidatesTokenCount": 300,
    "thoughtsTokenCount": 150,
    "totalTokenCount": 1650,
}
GEMINI_FIRST = {
    "promptTokenCount": 1200,
    "cachedContentTokenCount": 400,
    "candidatesTokenCount": 5,
    "totalTokenCount": 1205,
}


def _gemini(text: str, usage: dict[str, Any], finish: str | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash", "responseId": "r1"}


def gemini(request: httpx.Request) -> httpx.Response:
    if ":streamGenerateContent" in request.url.path:
        chunks = [_gemini("Hel", GEMINI_FIRST, None), _gemini("lo", GEMINI_FINAL, "STOP")]
        return stream_response(sse([(None, c) for c in chunks]))
    return httpx.Response(200, json=_gemini("Hello", GEMINI_FINAL, "STOP"))


# --- prices, summed here ---------------------------------------------------------------------------------------


def mtok(provider: str, model: str, tier: str | None = None) -> Any:
    """genai-prices' per-million-token prices of ``model`` (at ``tier``), as the catalogue lists them."""
    found = next(p for p in data_snapshot.get_snapshot().providers if p.id == provider)
    info = found.find_model(model)
    assert info is not None, model
    return info.get_prices(datetime.now(timezone.utc), {"service_tier": tier} if tier else None)


def cost(provider: str, model: str, tier: str | None = None, **tokens: int) -> Decimal:
    """Sum tokens x price / 1M; ``plain_input`` are input tokens neither read from nor written to a cache."""
    p = mtok(provider, model, tier)
    total = (
        tokens.get("plain_input", 0) * p.input_mtok
        + tokens.get("cache_read", 0) * p.cache_read_mtok
        + tokens.get("cache_write_5m", 0) * (p.cache_write_mtok or p.input_mtok)
        + tokens.get("cache_write_1h", 0) * (p.cache_write_1h_mtok or p.cache_write_mtok or p.input_mtok)
        + tokens.get("output", 0) * p.output_mtok
    )
    return Decimal(total) / MILLION


@dataclass(frozen=True)
class Provider:
    """One provider API as the tests drive it."""

    name: str  # test id
    provider: str  # LLMCall.provider
    model: str
    handler: Callable[[httpx.Request], httpx.Response]
    json_cost: Decimal  # the JSON response and the complete stream
    abandoned_cost: Decimal  # the stream abandoned after its first chunk/event
    tags: tuple[tuple[str, str], ...] = ()


class Tokens(TypedDict):
    input_tokens: int
    max_output_tokens: int


CALL_TOKENS = Tokens(input_tokens=1000, max_output_tokens=400)

PROVIDERS = [
    Provider(
        "openai-chat",
        "openai",
        "gpt-5",
        openai_chat,
        cost("openai", "gpt-5", "priority", plain_input=800, cache_read=200, output=300),
        # no usage before the last chunk: recorded at the pre-flight estimate, priced at the tagged tier
        cost("openai", "gpt-5", "priority", plain_input=1000, output=400),
        (("service_tier", "priority"),),
    ),
    Provider(
        "openai-responses",
        "openai",
        "gpt-5-mini",
        openai_responses,
        cost("openai", "gpt-5-mini", "flex", plain_input=1500, cache_read=500, output=600),
        cost("openai", "gpt-5-mini", "flex", plain_input=1000, output=400),
        (("service_tier", "flex"),),
    ),
    Provider(
        "anthropic",
        "anthropic",
        "claude-haiku-4-5",
        anthropic_messages,
        cost(
            "anthropic",
            "claude-haiku-4-5",
            plain_input=100,
            cache_write_5m=1000,
            cache_write_1h=2000,
            cache_read=500,
            output=250,
        ),
        # message_start told the input and cache counts and one output token
        cost(
            "anthropic",
            "claude-haiku-4-5",
            plain_input=100,
            cache_write_5m=1000,
            cache_write_1h=2000,
            cache_read=500,
            output=1,
        ),
    ),
    Provider(
        "gemini",
        "google",
        "gemini-2.5-flash",
        gemini,
        cost("google", "gemini-2.5-flash", plain_input=800, cache_read=400, output=450),
        cost("google", "gemini-2.5-flash", plain_input=800, cache_read=400, output=5),
    ),
]


def sync_client(p: Provider) -> Any:
    http = httpx.Client(transport=httpx.MockTransport(p.handler))
    if p.provider == "openai":
        import openai

        return openai.OpenAI(api_key="test", http_client=http, max_retries=0)
    if p.provider == "anthropic":
        import anthropic

        return anthropic.Anthropic(api_key="test", http_client=http, max_retries=0)
    from google import genai

    return genai.Client(api_key="test", http_options=genai.types.HttpOptions(httpx_client=http))


def async_client(p: Provider, delay: float = 0.0) -> Any:
    async def handler(request: httpx.Request) -> httpx.Response:
        if delay:
            await asyncio.sleep(delay)
        return p.handler(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    if p.provider == "openai":
        import openai

        return openai.AsyncOpenAI(api_key="test", http_client=http, max_retries=0)
    if p.provider == "anthropic":
        import anthropic

        return anthropic.AsyncAnthropic(api_key="test", http_client=http, max_retries=0)
    from google import genai

    return genai.Client(api_key="test", http_options=genai.types.HttpOptions(httpx_async_client=http)).aio


MESSAGES = [{"role": "user", "content": "Say hello"}]


def request(p: Provider, client: Any, stream: bool) -> Any:
    """The SDK call (sync, or a coroutine for async clients) for provider ``p``."""
    if p.name == "openai-chat":
        extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        return client.chat.completions.create(model=p.model, messages=MESSAGES, **extra)
    if p.name == "openai-responses":
        return client.responses.create(model=p.model, input="Say hello", stream=stream)
    if p.provider == "anthropic":
        return client.messages.create(model=p.model, max_tokens=400, messages=MESSAGES, stream=stream)
    method = client.models.generate_content_stream if stream else client.models.generate_content
    return method(model=p.model, contents="Say hello")
