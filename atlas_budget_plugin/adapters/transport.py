"""An httpx transport that budgets every LLM request of an SDK client built on httpx, without call-site changes.

::

    client = openai.OpenAI(http_client=httpx.Client(transport=BudgetTransport(actor="alice")))

For each generation request (OpenAI chat completions, completions, Responses and
embeddings; Anthropic Messages; Gemini ``generateContent`` / ``streamGenerateContent``)
the transport builds an :class:`~hookspecs.LLMCall` from the request (provider from
the host or path, model and output cap from the JSON body, an input count from the
prompt), runs ``pre_llm_call`` before anything is sent, and settles with exactly one
``post_llm_call`` once the response body has been read: from the JSON body, or from
the SSE events observed as the SDK reads them (``CallGuard.observe``). A stream the
SDK closes early, one that fails midway, and one that is dropped without being closed
are settled by the rule of :meth:`hookspecs.CallGuard.settled_usage`: with what is
known, never silently as zero. Other requests (listing models, files, token counts)
pass through unbudgeted.

A denied call sends no request: the SDK gets a ``403`` answer shaped like its
provider's own errors, with ``x-should-retry: false`` so it does not retry, and the
verdict's reason as the message (``openai.PermissionDeniedError``,
``anthropic.PermissionDeniedError``, ``google.genai.errors.ClientError``);
:func:`blocked_by` gets the :class:`~hookspecs.CallBlocked` back from that error. An
exception would not do: anthropic's client wraps any transport exception as a
connection error and retries it.

Works with ``httpx`` and ``httpx2`` alike (the SDKs here use ``httpx2``): everything
module-specific is taken from the module of the request the client sends.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from hookspecs import CallBlocked, LLMCall, LLMUsage, OpenCall, approx_tokens, async_open_call, open_call
from hookspecs.aio import hook_executor

__all__ = ["BudgetTransport", "ProviderError", "StreamAbandoned", "blocked_by"]

log = logging.getLogger(__name__)

#: Largest JSON body kept to read its usage; a larger one is settled as billed at the estimate.
MAX_JSON_BODY = 32 * 1024 * 1024
#: ``LLMCall`` fields a ``call_info`` callable may set.
CALL_FIELDS = frozenset(
    {
        "call_id",
        "provider",
        "model",
        "operation",
        "tenant",
        "actor",
        "category",
        "tags",
        "input_tokens",
        "max_output_tokens",
        "estimated_cost",
    }
)
#: Key of ``response.extensions`` that carries the ``CallBlocked`` of a denied request.
BLOCKED_EXTENSION = "atlas_budget_blocked"

_HOSTS = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "google",
}
_HOST_SUFFIXES = (
    (".openai.azure.com", "azure"),
    ("aiplatform.googleapis.com", "google"),  # Vertex AI, regional hosts included
)
_GEMINI_PATH = re.compile(r"/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$")
_AZURE_DEPLOYMENT = re.compile(r"/deployments/(?P<deployment>[^/]+)/")


class ProviderError(Exception):
    """The provider answered a budgeted request with an error status: nothing was billed, the hold is released."""


class StreamAbandoned(Exception):
    """A budgeted response was closed before its body ended, or dropped without ever being closed."""


@dataclass(frozen=True)
class _Route:
    """What kind of LLM request this is, and what its body says."""

    api: str  # openai-chat | openai-completions | openai-responses | openai-embeddings | anthropic | gemini
    provider: str
    model: str | None
    body: dict[str, Any]


def _bytes(decoded: Any) -> bytes:
    """A decoder's output: bytes (httpx) or an iterator of bytes (httpx2)."""
    return decoded if isinstance(decoded, bytes) else b"".join(decoded)


def _module_of(obj: Any) -> ModuleType:
    """The httpx-like module (``httpx`` or ``httpx2``) an object of the client comes from."""
    return sys.modules[type(obj).__module__.split(".", 1)[0]]


def _provider_of(host: str) -> str | None:
    if host in _HOSTS:
        return _HOSTS[host]
    return next((name for suffix, name in _HOST_SUFFIXES if host.endswith(suffix)), None)


def _api_of(path: str) -> tuple[str, str | None] | None:
    """(api, model from the path) for a generation endpoint, else None."""
    found = _GEMINI_PATH.search(path)
    if found:
        return "gemini", found["model"]
    for suffix, api in (
        ("/chat/completions", "openai-chat"),
        ("/responses", "openai-responses"),
        ("/completions", "openai-completions"),
        ("/embeddings", "openai-embeddings"),
        ("/messages", "anthropic"),
    ):
        if path.endswith(suffix):
            deployment = _AZURE_DEPLOYMENT.search(path)
            return api, deployment["deployment"] if deployment else None
    return None


_DEFAULT_PROVIDER = {"gemini": "google", "anthropic": "anthropic"}


def _budgeted(request: Any) -> bool:
    """Whether a request is one the transport budgets, told from its method and path alone."""
    return request.method == "POST" and _api_of(request.url.path) is not None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _prompt_tokens(*parts: Any) -> int | None:
    """A heuristic count of the prompt's tokens (``approx_tokens``), or None when its shape is not text."""
    total = 0
    for part in parts:
        if part is None:
            continue
        try:
            total += approx_tokens([part] if isinstance(part, Mapping) else part)  # a Gemini systemInstruction
        except TypeError:
            return None
    return total


def _sizes(api: str, body: Mapping[str, Any]) -> tuple[int | None, int | None, str | None]:
    """(input tokens, output cap, operation) the request body gives, for the pre-flight estimate."""
    if api == "openai-chat":
        cap = _count(body.get("max_completion_tokens")) or _count(body.get("max_tokens"))
        choices = _count(body.get("n")) or 1
        return _prompt_tokens(body.get("messages")), cap * choices if cap else None, None
    if api == "openai-completions":
        return _prompt_tokens(body.get("prompt")), _count(body.get("max_tokens")), "completion"
    if api == "openai-responses":
        return _prompt_tokens(body.get("instructions"), body.get("input")), _count(body.get("max_output_tokens")), None
    if api == "openai-embeddings":
        return _prompt_tokens(body.get("input")), 0, "embedding"
    if api == "anthropic":
        return _prompt_tokens(body.get("system"), body.get("messages")), _count(body.get("max_tokens")), None
    config = body.get("generationConfig") or body.get("generation_config") or {}
    cap = _count(config.get("maxOutputTokens", config.get("max_output_tokens"))) if isinstance(config, dict) else None
    candidates = _count(config.get("candidateCount")) if isinstance(config, dict) else None
    system = body.get("systemInstruction") or body.get("system_instruction")
    return _prompt_tokens(system, body.get("contents")), cap * (candidates or 1) if cap else None, None


def blocked_by(error: BaseException | None) -> CallBlocked | None:
    """The :class:`CallBlocked` behind an SDK error raised for a request the transport denied, else None.

    Follows the error's ``response`` (SDK status errors carry the httpx response)
    and its ``__cause__`` / ``__context__`` chain.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, CallBlocked):
            return error
        response = getattr(error, "response", None)
        found = getattr(response, "extensions", {}).get(BLOCKED_EXTENSION) if response is not None else None
        if isinstance(found, CallBlocked):
            return found
        error = error.__cause__ or error.__context__
    return None


def _blocked_response(module: ModuleType, request: Any, route: _Route, blocked: CallBlocked) -> Any:
    """A 403 shaped like the provider's own errors, which its SDK raises with the reason and does not retry."""
    message = f"atlas-budget: call blocked: {blocked.verdict.reason}"
    if route.api == "anthropic":
        body: dict[str, Any] = {"type": "error", "error": {"type": "permission_error", "message": message}}
    elif route.api == "gemini":
        body = {"error": {"code": 403, "message": message, "status": "PERMISSION_DENIED"}}
    else:
        body = {"error": {"message": message, "type": "budget_blocked", "param": None, "code": "budget_blocked"}}
    return module.Response(
        403,
        headers={"x-should-retry": "false"},
        json=body,
        request=request,
        extensions={BLOCKED_EXTENSION: blocked},
    )


class _Exchange:
    """One budgeted request after its check: reads the response body as it passes and settles the call once.

    Holds no reference to the response, so a finalizer can settle a response that
    was dropped without being closed.
    """

    def __init__(self, opened: OpenCall, response: Any, module: ModuleType) -> None:
        self.opened = opened
        self.status = int(response.status_code)
        self.ok = 200 <= self.status < 300
        self.sse = "text/event-stream" in response.headers.get("content-type", "")
        self.decoder = module.Response(self.status, headers=response.headers)._get_content_decoder()
        self.buffer = bytearray()
        self.ended = False  # the body was read to its end
        self.done = False  # an SSE stream sent its [DONE]
        self.unreadable: str | None = None
        self.stream_error: str | None = None
        if self.ok and not self.sse:
            # the provider answered: if its body is never read, the call is billed at its estimate
            opened.guard.usage = LLMUsage(billed=True)

    def feed(self, raw: bytes) -> None:
        """Take a raw (possibly compressed) piece of the body; never raises into the SDK's read."""
        if not self.ok or self.unreadable or not raw:
            return
        try:
            self._take(_bytes(self.decoder.decode(raw)))
        except Exception as exc:
            self.unreadable = f"{type(exc).__name__}: {exc}"
            log.warning("cannot read the body of call %s: %s", self.opened.guard.call.call_id, self.unreadable)

    def _take(self, data: bytes) -> None:
        if not data:
            return
        self.buffer += data
        if not self.sse:
            if len(self.buffer) > MAX_JSON_BODY:
                self.unreadable = f"JSON body larger than {MAX_JSON_BODY} bytes"
                self.buffer.clear()
            return
        # SSE events end with a blank line; a \r\n split across two pieces is joined by now
        text = bytes(self.buffer).replace(b"\r\n", b"\n")
        *events, rest = text.split(b"\n\n")
        self.buffer = bytearray(rest)
        for event in events:
            self._event(event)

    def _event(self, event: bytes) -> None:
        data = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        if data == [b"[DONE]"]:
            self.done = True
            return
        if not data:
            return
        try:
            item = json.loads(b"\n".join(data))
        except ValueError:
            return  # not JSON: no usage in it
        if not isinstance(item, dict):
            return
        if item.get("type") == "error":  # Anthropic reports a failure midway as an error event
            self.stream_error = json.dumps(item.get("error"))[:500]
        self.opened.guard.observe(item)

    def _end(self) -> None:
        """The body was read to its end: flush the decoder and read what is left."""
        if self.ended:
            return
        self.ended = True
        if not self.ok or self.unreadable:
            return
        try:
            self._take(_bytes(self.decoder.flush()))
            if self.sse:
                if self.buffer.strip():
                    self._event(bytes(self.buffer).replace(b"\r\n", b"\n").rstrip(b"\n"))
                return
            body = json.loads(bytes(self.buffer)) if self.buffer else None
        except Exception as exc:
            self.unreadable = f"{type(exc).__name__}: {exc}"
            return
        if isinstance(body, dict):
            self.opened.guard.usage = LLMUsage(response=body)

    def outcome(self, error: BaseException | None) -> BaseException | None:
        """The error ``post_llm_call`` is told, given how the body ended (``error``: what interrupted reading)."""
        if not self.ok:
            failure = ProviderError(f"the provider answered HTTP {self.status}")
            failure.__cause__ = error
            return failure
        if error is None and self.stream_error:
            return ProviderError(f"the provider reported an error in the stream: {self.stream_error}")
        if error is None and not self.complete:
            return StreamAbandoned("the response was closed before its body ended")
        return error

    @property
    def complete(self) -> bool:
        """The whole answer arrived: the body was read to its end, or the stream's last event was seen.

        SDKs stop reading at the last event (OpenAI's ``[DONE]``, Anthropic's ``message_stop``) and close.
        An OpenAI chat stream's finish_reason comes before its usage chunk, so only ``[DONE]`` ends it.
        """
        stream = self.opened.guard.stream
        return self.ended or self.done or (stream.finished and stream.kind != "openai-chat")

    def interrupted(self, error: BaseException) -> BaseException | None:
        """What reading the body failed with; None once the whole answer is in (SDKs that drain the rest of a
        finished stream read it a second time, which httpx refuses)."""
        return None if self.complete else error

    def finish(self, error: BaseException | None) -> None:
        self.opened.finish(self.outcome(error))

    async def afinish(self, error: BaseException | None) -> None:
        await self.opened.afinish(self.outcome(error))

    def dropped(self) -> None:
        """Finalizer of a response dropped unclosed. Settles on the hook threads: a finalizer can run at any
        point of any thread, perhaps one that holds a lock the settling needs."""
        if self.opened.finished:
            return
        abandoned = StreamAbandoned("the response was dropped without being read to its end or closed")
        try:
            hook_executor().submit(self.opened.finish, self.outcome(abandoned))
        except RuntimeError:  # interpreter shutdown: the pool takes no more work
            self.opened.finish(self.outcome(abandoned))


class _SyncBody:
    """The response body as the client reads it: every piece passes through the exchange first."""

    def __init__(self, inner: Any, exchange: _Exchange) -> None:
        self.inner = inner
        self.exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.inner:
                self.exchange.feed(chunk)
                yield chunk
        except GeneratorExit:  # the reader stopped iterating: close() settles
            raise
        except BaseException as exc:
            self.exchange.finish(self.exchange.interrupted(exc))
            raise
        self.exchange._end()
        self.exchange.finish(None)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.exchange.finish(None)


class _AsyncBody:
    """Async form of :class:`_SyncBody`; settling runs off the event loop."""

    def __init__(self, inner: Any, exchange: _Exchange) -> None:
        self.inner = inner
        self.exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.inner:
                self.exchange.feed(chunk)
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            await self.exchange.afinish(self.exchange.interrupted(exc))
            raise
        self.exchange._end()
        await self.exchange.afinish(None)

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            await self.exchange.afinish(None)


_BODY_TYPES: dict[tuple[str, bool], type] = {}


def _body_type(module: ModuleType, asynchronous: bool) -> type:
    """The body wrapper as a subclass of the module's own stream type, which its client asserts."""
    key = (module.__name__, asynchronous)
    if key not in _BODY_TYPES:
        base = module.AsyncByteStream if asynchronous else module.SyncByteStream
        mixin = _AsyncBody if asynchronous else _SyncBody
        _BODY_TYPES[key] = type(f"Budget{mixin.__name__[1:]}", (mixin, base), {})
    return _BODY_TYPES[key]


def _transport_bases() -> tuple[type, ...]:
    """The transport base classes of every httpx-like module installed, so either kind of client (and its
    type checker) takes the transport."""
    bases: list[type] = []
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        bases += [module.BaseTransport, module.AsyncBaseTransport]
    return tuple(bases) or (object,)


if TYPE_CHECKING:
    import httpx
    import httpx2

    # the two modules' request and response types differ; BudgetTransport takes either
    class _TransportBase(  # type: ignore[misc]
        httpx2.BaseTransport, httpx2.AsyncBaseTransport, httpx.BaseTransport, httpx.AsyncBaseTransport
    ):
        pass

else:
    _TransportBase = type("_TransportBase", _transport_bases(), {})


class BudgetTransport(_TransportBase):
    """An httpx transport (sync and async) that budgets the LLM requests passing through it.

    ``inner``: the transport that really sends (default: the client module's
    ``HTTPTransport`` / ``AsyncHTTPTransport``, made on first use). ``pm``: the
    host's plugin manager (default: :func:`hookspecs.load_plugins`, every plugin
    installed under ``atlas``). ``tenant``, ``actor``, ``category``, ``tags``:
    what every call carries. ``provider``: the provider of an endpoint the host
    name does not tell (an OpenAI-compatible gateway: ``provider="groq"``).
    ``call_info``: a callable given each request, returning any :class:`~hookspecs.LLMCall`
    fields to set for it (``actor`` from a context variable, ``model`` for an Azure
    deployment, ``input_tokens`` from a real tokenizer...); ``tags`` it returns are
    added to the constructor's.
    """

    def __init__(
        self,
        inner: Any = None,
        pm: pluggy.PluginManager | None = None,
        *,
        tenant: str = "default",
        actor: str | None = None,
        category: str | None = None,
        tags: Mapping[str, str] | None = None,
        provider: str | None = None,
        call_info: Callable[[Any], Mapping[str, Any]] | None = None,
    ) -> None:
        if call_info is not None and not callable(call_info):
            raise TypeError(f"call_info must be a callable taking the request, got {call_info!r}")
        if pm is None:
            from hookspecs import load_plugins

            pm = load_plugins()
        self.pm = pm
        self.defaults: dict[str, Any] = {"tenant": tenant, "actor": actor, "category": category}
        self.tags = dict(tags or {})
        self.provider = provider
        self.call_info = call_info
        # fail now, not on the first request, when a label is not what LLMCall accepts
        self._call(_Route("openai-chat", provider or "openai", "m", {}), {})
        self._inner = inner
        self._made: dict[tuple[str, bool], Any] = {}
        self._lock = threading.Lock()

    # -- requests --------------------------------------------------------------------------------------------

    def _route(self, request: Any, content: bytes) -> _Route | None:
        if request.method != "POST":
            return None
        found = _api_of(request.url.path)
        if found is None:
            return None
        api, path_model = found
        try:
            body = json.loads(content) if content else {}
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        provider = self.provider or _provider_of(request.url.host) or _DEFAULT_PROVIDER.get(api, "openai")
        model = body.get("model") if isinstance(body.get("model"), str) and body.get("model") else path_model
        return _Route(api, provider, model, body)

    def _call(self, route: _Route, extra: Mapping[str, Any]) -> LLMCall:
        unknown = set(extra) - CALL_FIELDS
        if unknown:
            raise ValueError(
                f"call_info returned unknown LLMCall fields {sorted(unknown)}; allowed: {sorted(CALL_FIELDS)}"
            )
        input_tokens, cap, operation = _sizes(route.api, route.body)
        tags = {**self.tags, **dict(extra.get("tags") or {})}
        tier = route.body.get("service_tier")
        if isinstance(tier, str) and tier in ("priority", "flex") and "service_tier" not in tags:
            tags["service_tier"] = tier  # the estimate is priced at the tier the request asks for
        fields: dict[str, Any] = {
            "call_id": f"httpx-{uuid.uuid4().hex}",
            "provider": route.provider,
            "model": route.model,
            "operation": operation or "chat",
            **self.defaults,
            "input_tokens": input_tokens,
            "max_output_tokens": cap,
            **{k: v for k, v in extra.items() if k != "tags"},
            "tags": tags,
        }
        if isinstance(fields.get("estimated_cost"), float):
            fields["estimated_cost"] = Decimal(str(fields["estimated_cost"]))  # LLMCall refuses floats
        if not fields["model"]:
            raise ValueError(
                f"cannot tell the model of a {route.api} request: its body names none; return "
                "{'model': ...} from call_info"
            )
        return LLMCall(**fields)

    def _prepare(self, request: Any, content: bytes) -> tuple[_Route, LLMCall] | None:
        route = self._route(request, content)
        if route is None:
            return None
        extra = self.call_info(request) if self.call_info is not None else {}
        if not isinstance(extra, Mapping):
            raise TypeError(f"call_info must return a mapping of LLMCall fields, got {extra!r}")
        return route, self._call(route, extra)

    def _inner_for(self, module: ModuleType, asynchronous: bool) -> Any:
        if self._inner is not None:
            return self._inner
        key = (module.__name__, asynchronous)
        with self._lock:
            if key not in self._made:
                self._made[key] = module.AsyncHTTPTransport() if asynchronous else module.HTTPTransport()
            return self._made[key]

    @staticmethod
    def _wrapped(module: ModuleType, request: Any, response: Any, exchange: _Exchange, asynchronous: bool) -> Any:
        body = _body_type(module, asynchronous)(response.stream, exchange)
        weakref.finalize(body, exchange.dropped)
        return module.Response(
            response.status_code,
            headers=response.headers,
            stream=body,
            request=request,
            extensions=response.extensions,
        )

    def handle_request(self, request: Any) -> Any:
        """Send ``request`` (httpx ``BaseTransport``): checked before, settled when its body has been read."""
        module = _module_of(request)
        inner = self._inner_for(module, asynchronous=False)
        if not _budgeted(request):  # not read: a file upload streams on untouched
            return inner.handle_request(request)
        prepared = self._prepare(request, request.read())
        if prepared is None:
            return inner.handle_request(request)
        route, call = prepared
        try:
            opened = open_call(self.pm, call)
        except CallBlocked as blocked:
            return _blocked_response(module, request, route, blocked)
        try:
            response = inner.handle_request(request)
        except BaseException as exc:
            opened.finish(exc)
            raise
        return self._wrapped(module, request, response, _Exchange(opened, response, module), asynchronous=False)

    async def handle_async_request(self, request: Any) -> Any:
        """Send ``request`` (httpx ``AsyncBaseTransport``); hooks run off the event loop."""
        module = _module_of(request)
        inner = self._inner_for(module, asynchronous=True)
        if not callable(getattr(inner, "handle_async_request", None)):
            raise TypeError(f"inner transport {inner!r} is not async; pass an AsyncHTTPTransport for an AsyncClient")
        if not _budgeted(request):
            return await inner.handle_async_request(request)
        prepared = self._prepare(request, await request.aread())
        if prepared is None:
            return await inner.handle_async_request(request)
        route, call = prepared
        try:
            opened = await async_open_call(self.pm, call)
        except CallBlocked as blocked:
            return _blocked_response(module, request, route, blocked)
        try:
            response = await inner.handle_async_request(request)
        except BaseException as exc:
            await opened.afinish(exc)
            raise
        return self._wrapped(module, request, response, _Exchange(opened, response, module), asynchronous=True)

    # -- lifetime --------------------------------------------------------------------------------------------

    def _inners(self) -> list[Any]:
        return [self._inner] if self._inner is not None else list(self._made.values())

    def close(self) -> None:
        for inner in self._inners():
            if callable(getattr(inner, "close", None)):
                inner.close()

    async def aclose(self) -> None:
        for inner in self._inners():
            if callable(getattr(inner, "aclose", None)):
                await inner.aclose()

    def __enter__(self) -> BudgetTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> BudgetTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
