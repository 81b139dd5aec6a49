"""BudgetTransport under the real openai, anthropic and google-genai SDKs, over mock transports (no network).

Every provider x {sync, async} x {JSON, stream, abandoned stream} settles to the
cost summed in sdk_mocks from genai-prices' per-token prices, and leaves no hold; a
denied call sends no request and surfaces as the SDK's own permission error.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx2 as httpx
import pluggy
import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.adapters import BudgetTransport, blocked_by
from atlas_budget_plugin.adapters.transport import ProviderError, StreamAbandoned
from atlas_budget_plugin.plugin import BudgetPlugin
from atlas_budget_plugin.types import Actor
from hookspecs import CallBlocked, LLMCall, LLMUsage, Verdict, hookimpl, specs

from .sdk_mocks import CALL_TOKENS, MESSAGES, PROVIDERS, Provider, cost, request

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
genai = pytest.importorskip("google.genai")

CHAT, RESPONSES, ANTHROPIC, GEMINI = PROVIDERS
POLICY = [{"name": "all", "period": "day", "limit": "100", "enforcement": "block"}]


class Sent:
    """A mock provider that records every request it receives and streams SSE one event per piece.

    Streaming piece by piece means an SDK that stops after the first event has read only that event.
    """

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response], gzip_json: bool = False) -> None:
        self.handler = handler
        self.gzip_json = gzip_json
        self.requests: list[httpx.Request] = []

    def _answer(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        answer = self.handler(req)
        if answer.headers.get("content-type") == "text/event-stream":
            pieces = [piece + b"\n\n" for piece in answer.content.split(b"\n\n") if piece]
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=iter(pieces))
        if self.gzip_json:
            return httpx.Response(
                answer.status_code,
                headers={"content-type": "application/json", "content-encoding": "gzip"},
                content=gzip.compress(answer.content),
            )
        return answer

    def sync(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._answer)

    def asynchronous(self) -> httpx.MockTransport:
        async def answer(req: httpx.Request) -> httpx.Response:
            response = self._answer(req)
            if isinstance(response.stream, httpx.SyncByteStream) and not hasattr(response, "_content"):
                pieces = list(response.stream)  # an async client needs an async body

                async def body() -> Any:
                    for piece in pieces:
                        yield piece

                return httpx.Response(response.status_code, headers=response.headers, content=body())
            return response

        return httpx.MockTransport(answer)


def host_for(services: BudgetServices, *plugins: Any) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(specs.PROJECT)
    pm.add_hookspecs(specs)
    pm.register(BudgetPlugin(services), name="budget")
    for plugin in plugins:
        pm.register(plugin)
    return pm


def client_for(p: Provider, transport: BudgetTransport, asynchronous: bool) -> Any:
    """The provider's SDK client with the budget transport in its http client: the two lines a user adds."""
    if asynchronous:
        http: Any = httpx.AsyncClient(transport=transport)
    else:
        http = httpx.Client(transport=transport)
    if p.provider == "openai":
        kind = openai.AsyncOpenAI if asynchronous else openai.OpenAI
        return kind(api_key="test", http_client=http, max_retries=0)
    if p.provider == "anthropic":
        kind = anthropic.AsyncAnthropic if asynchronous else anthropic.Anthropic
        return kind(api_key="test", http_client=http, max_retries=0)
    key = "httpx_async_client" if asynchronous else "httpx_client"
    made = genai.Client(api_key="test", http_options=genai.types.HttpOptions(**{key: http}))
    return made.aio if asynchronous else made


def settled(services: BudgetServices, count: int = 1, timeout: float = 5.0) -> list[Any]:
    """The usage records once ``count`` exist (a dropped response settles on the hook threads)."""
    deadline = time.monotonic() + timeout
    while True:
        records = services.tracking.list_usage(Actor.system())
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.01)


def close_sync(stream: Any) -> None:
    stream.close()  # an SDK Stream's close(), or a generator's (google-genai)


async def close_async(stream: Any) -> None:
    closer = getattr(stream, "aclose", None) or stream.close
    await closer()


def run_sync(p: Provider, transport: BudgetTransport, mode: str) -> None:
    client = client_for(p, transport, asynchronous=False)
    if mode == "json":
        request(p, client, stream=False)
        return
    stream = request(p, client, stream=True)
    for _ in stream:
        if mode == "abandoned":
            break  # the consumer has what it wanted after the first chunk
    close_sync(stream)


async def run_async(p: Provider, transport: BudgetTransport, mode: str) -> None:
    client = client_for(p, transport, asynchronous=True)
    if mode == "json":
        await request(p, client, stream=False)
        return
    stream = await request(p, client, stream=True)
    async for _ in stream:
        if mode == "abandoned":
            break
    await close_async(stream)


@pytest.mark.parametrize("mode", ["json", "stream", "abandoned"])
@pytest.mark.parametrize("flow", ["sync", "async"])
@pytest.mark.parametrize("p", PROVIDERS, ids=lambda p: p.name)
def test_every_provider_flow_and_mode_settles_exactly(make_services: Any, p: Provider, flow: str, mode: str) -> None:
    services = make_services(policies=POLICY)
    sent = Sent(p.handler)
    inner = sent.sync() if flow == "sync" else sent.asynchronous()
    # the call's counts as sdk_mocks prices the estimate of an abandoned stream with no usage yet
    transport = BudgetTransport(inner, host_for(services), tags=dict(p.tags), call_info=lambda _: CALL_TOKENS)
    if flow == "sync":
        run_sync(p, transport, mode)
    else:
        asyncio.run(run_async(p, transport, mode))
    (record,) = settled(services)
    expected = p.abandoned_cost if mode == "abandoned" else p.json_cost
    assert record.cost == expected > 0, record.price_source
    assert record.model == p.model and record.provider == p.provider
    assert services.ledger.outstanding_units() == 0
    assert len(sent.requests) == 1
    if mode == "abandoned":
        assert "StreamAbandoned" in (record.error or "")
        if p.provider == "openai":  # no usage before the last event: the estimate, flagged
            assert "billed, but no usage reported" in record.price_source
    else:
        assert record.error is None and record.price_source.startswith("genai-prices")


def test_cost_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The costs the matrix above settles to through the transport (printed for the report)."""
    lines = [f"{'provider':18} {'model':18} {'JSON / stream':>14} {'abandoned':>12}"]
    lines += [f"{p.name:18} {p.model:18} {p.json_cost:>14} {p.abandoned_cost:>12}" for p in PROVIDERS]
    print("\n".join(lines))
    assert len(lines) == 1 + len(PROVIDERS)


# --- the call built from the request ---------------------------------------------------------------------------


class Recorder:
    """Records the calls the host contract sees; denies when told to."""

    def __init__(self, deny: bool = False) -> None:
        self.deny = deny
        self.calls: list[LLMCall] = []
        self.posts: list[tuple[str, LLMUsage, BaseException | None]] = []

    @hookimpl
    def pre_llm_call(self, call: LLMCall) -> Verdict:
        self.calls.append(call)
        return Verdict.deny("budget 'team' (block) would be exceeded", "rec") if self.deny else Verdict.allow("rec")

    @hookimpl
    def post_llm_call(self, call: LLMCall, usage: LLMUsage, error: BaseException | None) -> None:
        self.posts.append((call.call_id, usage, error))


def recorder_host(*plugins: Any) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(specs.PROJECT)
    pm.add_hookspecs(specs)
    for plugin in plugins:
        pm.register(plugin)
    return pm


def test_the_call_comes_from_the_request() -> None:
    rec = Recorder()
    sent = Sent(ANTHROPIC.handler)
    transport = BudgetTransport(
        sent.sync(),
        recorder_host(rec),
        tenant="acme",
        actor="alice",
        tags={"team": "search"},
        call_info=lambda req: {"category": "summaries", "tags": {"route": req.url.path}},
    )
    client = client_for(ANTHROPIC, transport, asynchronous=False)
    client.messages.create(model="claude-haiku-4-5", max_tokens=321, system="Be terse.", messages=MESSAGES)
    gemini = client_for(GEMINI, BudgetTransport(Sent(GEMINI.handler).sync(), recorder_host(rec)), False)
    gemini.models.generate_content(
        model="gemini-2.5-flash", contents="Say hello", config={"max_output_tokens": 77, "candidate_count": 2}
    )
    chat = client_for(CHAT, BudgetTransport(Sent(CHAT.handler).sync(), recorder_host(rec)), False)
    chat.chat.completions.create(model="gpt-5", messages=MESSAGES, max_completion_tokens=50, service_tier="priority")
    claude, flash, gpt = rec.calls
    assert (claude.provider, claude.model, claude.max_output_tokens) == ("anthropic", "claude-haiku-4-5", 321)
    assert (claude.tenant, claude.actor, claude.category) == ("acme", "alice", "summaries")
    assert claude.tags == {"team": "search", "route": "/v1/messages"}
    assert claude.input_tokens == 3 + (4 + 3)  # "Be terse.", and one message "Say hello": ~4 chars a token, 4 a message
    assert (flash.provider, flash.model, flash.max_output_tokens) == ("google", "gemini-2.5-flash", 154)
    assert (gpt.provider, gpt.model, gpt.max_output_tokens, gpt.tags) == (
        "openai",
        "gpt-5",
        50,
        {"service_tier": "priority"},
    )
    assert len({c.call_id for c in rec.calls}) == 3 and all(c.call_id.startswith("httpx-") for c in rec.calls)
    assert [error for _, _, error in rec.posts] == [None, None, None]


def test_other_requests_pass_through_unbudgeted() -> None:
    rec = Recorder(deny=True)  # would deny anything it was asked about

    def models(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"object": "list", "data": []})

    sent = Sent(models)
    client = client_for(CHAT, BudgetTransport(sent.sync(), recorder_host(rec)), asynchronous=False)
    assert list(client.models.list()) == []
    assert rec.calls == [] and len(sent.requests) == 1


# --- denied calls ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flow", ["sync", "async"])
@pytest.mark.parametrize("p", [CHAT, ANTHROPIC, GEMINI], ids=lambda p: p.name)
def test_a_denied_call_sends_nothing_and_the_sdk_says_why(p: Provider, flow: str) -> None:
    rec = Recorder(deny=True)
    sent = Sent(p.handler)
    inner = sent.sync() if flow == "sync" else sent.asynchronous()
    transport = BudgetTransport(inner, recorder_host(rec))
    errors = {"openai": openai.PermissionDeniedError, "anthropic": anthropic.PermissionDeniedError}
    expected = errors.get(p.provider, genai.errors.ClientError)
    with pytest.raises(expected, match="budget 'team' \\(block\\) would be exceeded") as raised:
        if flow == "sync":
            request(p, client_for(p, transport, asynchronous=False), stream=False)
        else:
            asyncio.run(request(p, client_for(p, transport, asynchronous=True), stream=False))
    assert sent.requests == []  # nothing reached the provider, and the SDK did not retry
    assert len(rec.calls) == 1
    blocked = blocked_by(raised.value)
    assert isinstance(blocked, CallBlocked) and blocked.verdict.source == "rec"
    assert [type(error) for _, _, error in rec.posts] == [CallBlocked]  # the others release


def test_a_budget_that_is_spent_blocks_through_the_transport(make_services: Any) -> None:
    services = make_services(policies=[{"name": "tiny", "period": "day", "limit": "0.001", "enforcement": "block"}])
    sent = Sent(CHAT.handler)
    client = client_for(CHAT, BudgetTransport(sent.sync(), host_for(services)), asynchronous=False)
    with pytest.raises(openai.PermissionDeniedError, match="tiny"):
        client.chat.completions.create(model="gpt-5", messages=MESSAGES, max_completion_tokens=100_000)
    assert sent.requests == [] and services.ledger.outstanding_units() == 0
    assert blocked_by(None) is None and blocked_by(ValueError("x")) is None


# --- how a body ends -------------------------------------------------------------------------------------------


def test_an_error_status_is_released(make_services: Any) -> None:
    services = make_services(policies=POLICY)
    rec = Recorder()

    def overloaded(req: httpx.Request) -> httpx.Response:
        return httpx.Response(529, json={"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})

    client = client_for(ANTHROPIC, BudgetTransport(Sent(overloaded).sync(), host_for(services, rec)), False)
    with pytest.raises(anthropic.APIStatusError):
        client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES)
    assert services.tracking.list_usage(Actor.system()) == [] and services.ledger.outstanding_units() == 0
    (post,) = rec.posts
    assert isinstance(post[2], ProviderError) and "529" in str(post[2])


def test_a_gzipped_json_body_is_read(make_services: Any) -> None:
    services = make_services(policies=POLICY)
    client = client_for(CHAT, BudgetTransport(Sent(CHAT.handler, gzip_json=True).sync(), host_for(services)), False)
    assert client.chat.completions.create(model="gpt-5", messages=MESSAGES).usage.prompt_tokens == 1000
    (record,) = settled(services)
    assert record.cost == CHAT.json_cost


def test_a_stream_that_fails_midway_keeps_what_it_reported(make_services: Any) -> None:
    services = make_services(policies=POLICY)
    first = ANTHROPIC.handler(httpx.Request("POST", "https://api.anthropic.com/v1/messages", json={"stream": True}))
    start = first.content.split(b"\n\n")[0] + b"\n\n"

    def broken(req: httpx.Request) -> httpx.Response:
        def pieces() -> Iterator[bytes]:
            yield start
            raise httpx.ReadError("connection reset")

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=pieces())

    client = client_for(ANTHROPIC, BudgetTransport(httpx.MockTransport(broken), host_for(services)), False)
    with pytest.raises(httpx.ReadError):
        for _ in client.messages.create(model="claude-haiku-4-5", max_tokens=400, messages=MESSAGES, stream=True):
            pass
    (record,) = settled(services)
    assert record.cost == ANTHROPIC.abandoned_cost and "ReadError" in (record.error or "")
    assert services.ledger.outstanding_units() == 0


def test_an_error_event_in_a_stream_is_kept(make_services: Any) -> None:
    services = make_services(policies=POLICY)
    events = ANTHROPIC.handler(
        httpx.Request("POST", "https://api.anthropic.com/v1/messages", json={"stream": True})
    ).content.split(b"\n\n")
    error = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}'

    def failing(req: httpx.Request) -> httpx.Response:
        body = b"\n\n".join([events[0], error]) + b"\n\n"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client = client_for(ANTHROPIC, BudgetTransport(httpx.MockTransport(failing), host_for(services)), False)
    with pytest.raises(anthropic.APIStatusError, match="busy"):
        for _ in client.messages.create(model="claude-haiku-4-5", max_tokens=400, messages=MESSAGES, stream=True):
            pass
    (record,) = settled(services)
    assert record.cost == ANTHROPIC.abandoned_cost and "overloaded_error" in (record.error or "")


def test_a_response_dropped_without_being_closed_is_settled(make_services: Any) -> None:
    services = make_services(policies=POLICY)
    sent = Sent(CHAT.handler)
    http = httpx.Client(transport=BudgetTransport(sent.sync(), host_for(services), call_info=lambda _: CALL_TOKENS))

    def leave_it_open() -> None:
        response = http.send(
            http.build_request(
                "POST",
                "https://api.openai.com/v1/chat/completions",
                json={"model": "gpt-5", "messages": MESSAGES, "stream": True},
            ),
            stream=True,
        )
        next(response.iter_bytes())  # read the first event, then forget the response

    leave_it_open()
    gc.collect()
    (record,) = settled(services)
    assert "StreamAbandoned" in (record.error or "")  # closed by the collector, or dropped unclosed
    assert record.cost == cost("openai", "gpt-5", plain_input=1000, output=400)  # the estimate: billed, no usage
    assert services.ledger.outstanding_units() == 0


def test_a_connection_that_fails_before_an_answer_is_released(make_services: Any) -> None:
    services = make_services(policies=POLICY)

    def unreachable(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no route to host")

    client = client_for(CHAT, BudgetTransport(httpx.MockTransport(unreachable), host_for(services)), False)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-5", messages=MESSAGES)
    assert services.tracking.list_usage(Actor.system()) == [] and services.ledger.outstanding_units() == 0


# --- construction and both httpx modules -----------------------------------------------------------------------


def test_plain_httpx_clients_work_too(make_services: Any) -> None:
    legacy = pytest.importorskip("httpx")
    services = make_services(policies=POLICY)
    transport = BudgetTransport(
        legacy.MockTransport(
            lambda req: legacy.Response(
                200,
                json=CHAT.handler(httpx.Request("POST", "https://api.openai.com/v1/chat/completions", json={})).json(),
            )
        ),
        host_for(services),
    )
    with legacy.Client(transport=transport) as http:
        answer = http.post("https://api.openai.com/v1/chat/completions", json={"model": "gpt-5", "messages": MESSAGES})
    assert answer.json()["usage"]["prompt_tokens"] == 1000
    (record,) = settled(services)
    assert record.cost == CHAT.json_cost


def test_bad_arguments_are_refused_clearly() -> None:
    pm = recorder_host(Recorder())
    with pytest.raises(TypeError, match="call_info must be a callable"):
        BudgetTransport(pm=pm, call_info="alice")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="LLMCall.tenant must be a non-empty string"):
        BudgetTransport(pm=pm, tenant="")
    transport = BudgetTransport(Sent(CHAT.handler).sync(), pm, call_info=lambda req: {"user": "x"})
    with pytest.raises(ValueError, match="unknown LLMCall fields \\['user'\\]"):
        httpx.Client(transport=transport).post("https://api.openai.com/v1/chat/completions", json={"model": "m"})
    nameless = BudgetTransport(Sent(CHAT.handler).sync(), pm)
    with pytest.raises(ValueError, match="cannot tell the model"):
        httpx.Client(transport=nameless).post("https://api.openai.com/v1/chat/completions", json={"messages": []})

    class SyncOnly:
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            raise AssertionError("not called")

    sync_inner = BudgetTransport(SyncOnly(), pm)

    async def use_async() -> None:
        async with httpx.AsyncClient(transport=sync_inner) as http:
            await http.post("https://api.openai.com/v1/chat/completions", json={"model": "m"})

    with pytest.raises(TypeError, match="not async"):
        asyncio.run(use_async())


def test_estimated_cost_from_call_info_is_exact() -> None:
    rec = Recorder()
    transport = BudgetTransport(
        Sent(CHAT.handler).sync(), recorder_host(rec), call_info=lambda req: {"estimated_cost": 0.25}
    )
    httpx.Client(transport=transport).post("https://api.openai.com/v1/chat/completions", json={"model": "gpt-5"})
    assert rec.calls[0].estimated_cost == Decimal("0.25")
    assert isinstance(rec.posts[0][1].response, dict) and rec.posts[0][2] is None
    assert StreamAbandoned.__doc__


def test_an_open_call_finishes_exactly_once() -> None:
    from hookspecs import async_open_call, open_call

    rec = Recorder()
    pm = recorder_host(rec)
    opened = open_call(pm, LLMCall(call_id="o1", provider="openai", model="gpt-5"))
    assert opened.finish() and not opened.finish(RuntimeError("late")) and opened.finished

    async def twice() -> list[bool]:
        aopened = await async_open_call(pm, LLMCall(call_id="o2", provider="openai", model="gpt-5"))
        return [await aopened.afinish(), await aopened.afinish(), aopened.finish()]

    assert asyncio.run(twice()) == [True, False, False]
    assert [(call_id, error) for call_id, _, error in rec.posts] == [("o1", None), ("o2", None)]
    denier = recorder_host(Recorder(deny=True))
    with pytest.raises(CallBlocked):
        asyncio.run(async_open_call(denier, LLMCall(call_id="o3", provider="openai", model="gpt-5")))


def one_call(transport_kwargs: dict[str, Any], url: str, body: Any, answer: httpx.Response | None = None) -> Any:
    """The call a request makes, and what its post was told."""
    rec = Recorder()

    def provider(req: httpx.Request) -> httpx.Response:
        return answer if answer is not None else httpx.Response(200, json={"usage": {"prompt_tokens": 1}})

    transport = BudgetTransport(httpx.MockTransport(provider), recorder_host(rec), **transport_kwargs)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.Client(transport=transport).post(url, content=content)
    response.close()
    return rec


@pytest.mark.parametrize(
    ("url", "body", "expected"),
    [
        (
            "https://api.openai.com/v1/completions",
            {"model": "gpt-3.5-turbo-instruct", "prompt": "abcd", "max_tokens": 9},
            ("openai", "gpt-3.5-turbo-instruct", "completion", 1, 9),
        ),
        (
            "https://api.openai.com/v1/embeddings",
            {"model": "text-embedding-3-small", "input": ["abcd", "efgh"]},
            ("openai", "text-embedding-3-small", "embedding", 10, 0),
        ),
        (
            "https://api.openai.com/v1/responses",
            {"model": "gpt-5", "instructions": "abcd", "input": "efgh", "max_output_tokens": 5},
            ("openai", "gpt-5", "chat", 2, 5),
        ),
        (
            "https://acme.openai.azure.com/openai/deployments/prod-4o/chat/completions?api-version=1",
            {"messages": [{"role": "user", "content": "abcd"}]},
            ("azure", "prod-4o", "chat", 5, None),
        ),
        (
            "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/l/publishers/google/models/"
            "gemini-2.5-flash:generateContent",
            {"contents": [{"parts": [{"text": "abcd"}]}]},
            ("google", "gemini-2.5-flash", "chat", 5, None),
        ),
        (
            "https://gateway.example/v1/messages",
            {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": {"weird": 1}}], "max_tokens": 3},
            ("anthropic", "claude-haiku-4-5", "chat", 4, 3),
        ),
    ],
    ids=["completions", "embeddings", "responses", "azure", "vertex", "unknown-host"],
)
def test_every_endpoint_kind_makes_its_call(url: str, body: Any, expected: tuple[Any, ...]) -> None:
    (call,) = one_call({}, url, body).calls
    assert (call.provider, call.model, call.operation, call.input_tokens, call.max_output_tokens) == expected


def test_provider_override_and_unreadable_bodies() -> None:
    (call,) = one_call(
        {"provider": "groq"},
        "https://api.groq.com/openai/v1/chat/completions",
        {"model": "llama-3.3-70b-versatile", "messages": 7},
    ).calls
    assert (call.provider, call.input_tokens) == ("groq", None)  # a prompt that is not text: the default count
    with pytest.raises(ValueError, match="cannot tell the model"):
        one_call({}, "https://api.openai.com/v1/chat/completions", b"not json")
    broken = one_call(
        {},
        "https://api.openai.com/v1/chat/completions",
        {"model": "gpt-5"},
        httpx.Response(200, content=b"{not json", headers={"content-type": "application/json"}),
    )
    (_, usage, error) = broken.posts[0]
    assert usage.billed is True and usage.response is None and error is None  # answered, unreadable: the estimate
    odd = b'data: {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 5}}}\n\ndata: junk'
    streamed = one_call(
        {},
        "https://api.anthropic.com/v1/messages",
        {"model": "claude-haiku-4-5"},
        httpx.Response(
            200,
            content=odd + b'\n\ndata: [1]\n\ndata: {"type": "message_stop"}',
            headers={"content-type": "text/event-stream"},
        ),
    )
    (_, usage, error) = streamed.posts[0]
    assert usage.response["usage"] == {"input_tokens": 5} and error is None  # last event without a blank line


def test_a_body_too_large_to_keep_is_billed_at_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    from atlas_budget_plugin.adapters import transport as module

    monkeypatch.setattr(module, "MAX_JSON_BODY", 10)
    rec = one_call(
        {},
        "https://api.openai.com/v1/chat/completions",
        {"model": "gpt-5"},
        httpx.Response(200, json={"usage": {"prompt_tokens": 1000}}),
    )
    (_, usage, _) = rec.posts[0]
    assert usage.billed is True and usage.response is None


def test_a_dropped_exchange_settles_on_the_hook_threads() -> None:
    from atlas_budget_plugin.adapters.transport import _Exchange
    from hookspecs import open_call

    rec = Recorder()
    opened = open_call(recorder_host(rec), LLMCall(call_id="d1", provider="openai", model="gpt-5"))
    exchange = _Exchange(opened, httpx.Response(200, json={}), httpx)
    exchange.dropped()
    deadline = time.monotonic() + 5
    while not rec.posts and time.monotonic() < deadline:
        time.sleep(0.01)
    (_, usage, error) = rec.posts[0]
    assert isinstance(error, StreamAbandoned) and usage.billed is True
    exchange.dropped()  # already settled: nothing more
    assert len(rec.posts) == 1


def test_the_default_inner_transport_is_the_clients_own() -> None:
    transport = BudgetTransport(pm=recorder_host(Recorder()))
    assert isinstance(transport._inner_for(httpx, asynchronous=False), httpx.HTTPTransport)
    assert isinstance(transport._inner_for(httpx, asynchronous=True), httpx.AsyncHTTPTransport)
    assert transport._inner_for(httpx, asynchronous=False) is transport._inner_for(httpx, asynchronous=False)
    with transport:
        pass

    async def close() -> None:
        async with transport:
            pass

    asyncio.run(close())
    with pytest.raises(TypeError, match="must return a mapping"):
        one_call({"call_info": lambda req: ["actor"]}, "https://api.openai.com/v1/chat/completions", {"model": "m"})


def test_an_upload_that_is_not_an_llm_call_streams_on_unread() -> None:
    seen: list[bool] = []

    class Inner:
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(hasattr(request, "_content"))  # True once someone buffered the body
            return httpx.Response(200, json={"id": "file-1"})

    transport = BudgetTransport(Inner(), recorder_host(Recorder(deny=True)))
    upload = httpx.Client(transport=transport).post("https://api.openai.com/v1/files", content=iter([b"a" * 10]))
    assert upload.json() == {"id": "file-1"} and seen == [False]
