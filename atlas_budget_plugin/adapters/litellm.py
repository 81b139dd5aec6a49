"""Budgets for LiteLLM: ``budgeted_completion`` / ``budgeted_acompletion`` wrappers, and a callback for Routers.

Both go through the host contract (``pre_llm_call`` before the request, exactly one
``post_llm_call`` after it), keyed by LiteLLM's own ``litellm_call_id``:

* :func:`budgeted_completion` / :func:`budgeted_acompletion` take ``litellm.completion``'s
  arguments and return what it returns; a denied call raises :class:`~hookspecs.CallBlocked`
  before LiteLLM is called. Streams are returned wrapped: every chunk is observed, and the
  call is settled when the stream ends, is closed, fails or is dropped.
* :class:`BudgetCallback` is a LiteLLM ``CustomLogger`` for call sites that cannot change
  (``litellm.callbacks = [BudgetCallback()]``). ``log_pre_api_call`` cannot stop a call
  (LiteLLM logs and swallows what it raises), so the check runs in
  ``async_pre_call_deployment_hook``: after a Router has picked its deployment, so the
  hold is for the model that will really answer, and before the request; what it raises
  fails the attempt. It settles in the success and failure events. LiteLLM runs that
  hook for ``acompletion`` (``Router.acompletion`` included) only: a sync call cannot be
  checked by a callback, so the callback records it after it ended (tag
  ``budget_check = "after the call"``) and the wrappers are the way to check one.

LiteLLM model strings (``openai/gpt-4o``, ``anthropic/claude-haiku-4-5``, ``gemini/...``)
are resolved with LiteLLM's own ``get_llm_provider`` and its provider names mapped to
the price catalogue's. Usage is read from the ``ModelResponse`` (OpenAI-shaped whatever
the provider) and priced by the plugin from its tokens; LiteLLM's ``response_cost``
(its own estimate, a float, 0.0 for models it does not know) is not used.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

import litellm
import pluggy
from litellm.integrations.custom_logger import CustomLogger

from hookspecs import LLMCall, LLMUsage, OpenCall, approx_tokens, async_open_call, open_call, post_each
from hookspecs.aio import hook_executor

from .transport import CALL_FIELDS, StreamAbandoned

__all__ = ["BudgetCallback", "budgeted_acompletion", "budgeted_completion", "resolve_model", "usage_of"]

log = logging.getLogger(__name__)

#: LiteLLM provider names that the price catalogue (genai-prices) spells differently.
PROVIDERS = {
    "gemini": "google",
    "vertex_ai": "google",
    "vertex_ai_beta": "google",
    "bedrock": "aws",
    "bedrock_converse": "aws",
    "xai": "x-ai",
    "together_ai": "together",
    "fireworks_ai": "fireworks",
    "cohere_chat": "cohere",
    "text-completion-openai": "openai",
    "azure_ai": "azure",
}
#: How many settled call ids the callback remembers, to tell a second event of a settled call from a new call.
SETTLED_KEPT = 10_000
#: Marks a request the wrappers already budget, so a registered BudgetCallback does not budget it twice.
WRAPPED = "atlas_budget_wrapped"


def resolve_model(model: str, custom_llm_provider: str | None = None) -> tuple[str, str]:
    """(provider, model) of a LiteLLM model string, as the budget plugin prices it.

    ``openai/gpt-4o`` -> ``("openai", "gpt-4o")``, ``gpt-4o`` -> ``("openai", "gpt-4o")``,
    ``gemini/gemini-2.5-flash`` -> ``("google", "gemini-2.5-flash")``.
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"a LiteLLM model must be a non-empty string, got {model!r}")
    try:
        name, provider, _, _ = litellm.get_llm_provider(model, custom_llm_provider=custom_llm_provider)
    except Exception:  # a provider LiteLLM does not know: take the prefix as it is
        provider, _, name = model.partition("/") if "/" in model else (custom_llm_provider or "unknown", "", model)
    return PROVIDERS.get(provider, provider), name


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _call(kwargs: Mapping[str, Any], defaults: Mapping[str, Any], extra: Mapping[str, Any]) -> LLMCall:
    """The LLMCall of a LiteLLM request (``completion``'s keyword arguments)."""
    unknown = set(extra) - CALL_FIELDS
    if unknown:
        raise ValueError(f"budget has unknown LLMCall fields {sorted(unknown)}; allowed: {sorted(CALL_FIELDS)}")
    provider, model = resolve_model(kwargs.get("model", ""), kwargs.get("custom_llm_provider"))
    cap = _count(kwargs.get("max_completion_tokens")) or _count(kwargs.get("max_tokens"))
    try:
        input_tokens: int | None = approx_tokens(kwargs.get("messages") or [])
    except TypeError:
        input_tokens = None
    tags = {**dict(defaults.get("tags") or {}), **dict(extra.get("tags") or {})}
    metadata = kwargs.get("metadata") or {}
    group = metadata.get("model_group") if isinstance(metadata, Mapping) else None
    if isinstance(group, str) and group and "model_group" not in tags:
        tags["model_group"] = group  # the Router group the deployment was picked from
    tier = kwargs.get("service_tier")
    if tier in ("priority", "flex") and "service_tier" not in tags:
        tags["service_tier"] = tier
    fields: dict[str, Any] = {
        "call_id": str(kwargs.get("litellm_call_id") or uuid.uuid4()),
        "provider": provider,
        "model": model,
        "input_tokens": input_tokens,
        "max_output_tokens": cap * (_count(kwargs.get("n")) or 1) if cap else None,
        **{k: v for k, v in defaults.items() if k != "tags"},
        **{k: v for k, v in extra.items() if k != "tags"},
        "tags": tags,
    }
    if isinstance(fields.get("estimated_cost"), float):
        fields["estimated_cost"] = Decimal(str(fields["estimated_cost"]))
    return LLMCall(**fields)


def _field(obj: Any, *path: str) -> Any:
    for name in path:
        obj = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def usage_of(usage: Any, tier: Any = None) -> LLMUsage:
    """LLMUsage from LiteLLM's ``Usage`` (OpenAI-shaped for every provider), cache details included.

    Read here rather than by the provider's own extractor: LiteLLM puts an Anthropic or
    Gemini call's counts in OpenAI's names (``prompt_tokens`` counts cached and cache-written
    input too), where the provider's catalogue reader would take them all as plain input.
    """
    prompt = _count(_field(usage, "prompt_tokens")) or 0
    output = _count(_field(usage, "completion_tokens")) or 0
    cached = _count(_field(usage, "prompt_tokens_details", "cached_tokens"))
    read = cached if cached is not None else _count(_field(usage, "cache_read_input_tokens")) or 0
    written = (
        _count(_field(usage, "cache_creation_input_tokens"))
        or _count(_field(usage, "prompt_tokens_details", "cache_creation_tokens"))
        or 0
    )
    hour = _count(_field(usage, "prompt_tokens_details", "cache_creation_token_details", "ephemeral_1h_input_tokens"))
    read, written = min(read, prompt), min(written, max(prompt - read, 0))
    units = {"cache_write_1h_tokens": min(hour, written)} if hour else {}
    tier = tier if tier in ("priority", "flex") else None
    return LLMUsage(
        input_tokens=prompt,
        output_tokens=output,
        cache_read_tokens=read,
        cache_write_tokens=written,
        units=units,
        service_tier=tier,
    )


def _usage(response: Any) -> LLMUsage:
    """What a ModelResponse used; billed at the estimate when it reports no usage."""
    usage = getattr(response, "usage", None)
    if usage is None:
        return LLMUsage(billed=True)
    return usage_of(usage, getattr(response, "service_tier", None))


def _load(pm: pluggy.PluginManager | None) -> pluggy.PluginManager:
    if pm is not None:
        return pm
    from hookspecs import load_plugins

    return load_plugins()


def _prepare(kwargs: dict[str, Any], budget: Mapping[str, Any] | None) -> LLMCall:
    """Give the request its call id, usage in streams, and the wrapped marker; return its LLMCall."""
    if "model" not in kwargs:
        raise TypeError("budgeted_completion needs model= (and messages=) as keyword arguments")
    kwargs.setdefault("litellm_call_id", str(uuid.uuid4()))
    if kwargs.get("stream"):
        # without it no chunk carries usage, and the stream could only be recorded at its estimate
        options = dict(kwargs.get("stream_options") or {})
        options.setdefault("include_usage", True)
        kwargs["stream_options"] = options
    kwargs["metadata"] = {**dict(kwargs.get("metadata") or {}), WRAPPED: True}
    return _call(kwargs, {}, dict(budget or {}))


def _settle_dropped(opened: OpenCall) -> None:
    """Finalizer of a stream dropped unconsumed; settles on the hook threads (see transport._Exchange.dropped)."""
    if opened.finished:
        return
    abandoned = StreamAbandoned("the stream was dropped without being read to its end or closed")
    try:
        hook_executor().submit(opened.finish, abandoned)
    except RuntimeError:
        opened.finish(abandoned)


class _Stream:
    """LiteLLM's stream, passed through chunk by chunk; every chunk is observed, the end settles the call."""

    def __init__(self, inner: Any, opened: OpenCall) -> None:
        self._inner = inner
        self._opened = opened
        self._ended = False
        weakref.finalize(self, _settle_dropped, opened)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _observe(self, chunk: Any) -> None:
        try:
            self._opened.guard.observe(chunk)  # counts the chunk: a stream left after one is billed
            usage = getattr(chunk, "usage", None)
            if usage is not None:  # LiteLLM's last chunk carries the whole call's usage
                self._opened.guard.usage = usage_of(usage, getattr(chunk, "service_tier", None))
        except Exception:  # a chunk we cannot read must not break the host's stream
            log.warning("cannot read a stream chunk of call %s", self._opened.guard.call.call_id, exc_info=True)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self._inner)
        except StopIteration:
            self._ended = True
            self._opened.finish()
            raise
        except BaseException as exc:
            self._opened.finish(exc)
            raise
        self._observe(chunk)
        return chunk

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self._inner.__anext__()
        except StopAsyncIteration:
            self._ended = True
            await self._opened.afinish()
            raise
        except BaseException as exc:
            await self._opened.afinish(exc)
            raise
        self._observe(chunk)
        return chunk

    def _closed(self) -> BaseException | None:
        return None if self._ended else StreamAbandoned("the stream was closed before it ended")

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> _Stream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def close(self) -> None:
        try:
            closer = getattr(self._inner, "close", None)
            if callable(closer):
                closer()
        finally:
            self._opened.finish(self._closed())

    async def aclose(self) -> None:
        try:
            closer = getattr(self._inner, "aclose", None)
            if callable(closer):
                await closer()
        finally:
            await self._opened.afinish(self._closed())


def budgeted_completion(
    *, budget: Mapping[str, Any] | None = None, pm: pluggy.PluginManager | None = None, **kwargs: Any
) -> Any:
    """``litellm.completion(**kwargs)``, checked before and settled after; raises CallBlocked when denied.

    ``budget``: :class:`~hookspecs.LLMCall` fields for the call (``actor``, ``tenant``,
    ``tags``, ``category``...). ``pm``: the host's plugin manager (default: installed plugins).
    """
    call = _prepare(kwargs, budget)
    opened = open_call(_load(pm), call)
    try:
        response = litellm.completion(**kwargs)
    except BaseException as exc:
        opened.finish(exc)
        raise
    if kwargs.get("stream"):
        return _Stream(response, opened)
    opened.guard.usage = _usage(response)
    opened.finish()
    return response


async def budgeted_acompletion(
    *, budget: Mapping[str, Any] | None = None, pm: pluggy.PluginManager | None = None, **kwargs: Any
) -> Any:
    """``await litellm.acompletion(**kwargs)``, checked before and settled after (hooks off the event loop)."""
    call = _prepare(kwargs, budget)
    opened = await async_open_call(_load(pm), call)
    try:
        response = await litellm.acompletion(**kwargs)
    except BaseException as exc:
        await opened.afinish(exc)
        raise
    if kwargs.get("stream"):
        return _Stream(response, opened)
    opened.guard.usage = _usage(response)
    await opened.afinish()
    return response


class BudgetCallback(CustomLogger):
    """A LiteLLM callback that budgets ``acompletion`` and ``Router.acompletion`` calls, streamed or not.

    Register it once: ``litellm.callbacks = [BudgetCallback(actor="alice")]``. A denied
    call raises :class:`~hookspecs.CallBlocked` out of LiteLLM before any request is sent
    (a Router may try another deployment of the group first: each attempt is checked).
    ``call_info``: a callable given the request's keyword arguments, returning LLMCall
    fields to set (``actor`` from ``metadata``, say).
    """

    def __init__(
        self,
        pm: pluggy.PluginManager | None = None,
        *,
        tenant: str = "default",
        actor: str | None = None,
        category: str | None = None,
        tags: Mapping[str, str] | None = None,
        call_info: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if call_info is not None and not callable(call_info):
            raise TypeError(f"call_info must be a callable taking the request's kwargs, got {call_info!r}")
        self.pm = _load(pm)
        self.defaults: dict[str, Any] = {
            "tenant": tenant,
            "actor": actor,
            "category": category,
            "tags": dict(tags or {}),
        }
        self.call_info = call_info
        LLMCall(call_id="check", provider="p", model="m", **{k: v for k, v in self.defaults.items()})
        self.open: dict[str, OpenCall] = {}
        self._warned = False
        self._settled: OrderedDict[str, None] = OrderedDict()

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> dict[str, Any] | None:
        """Check the call after routing, before the request: raising here fails the attempt, unsent."""
        kind = getattr(call_type, "value", call_type)
        metadata = kwargs.get("metadata") or {}
        if kind not in ("acompletion", "completion") or (isinstance(metadata, Mapping) and metadata.get(WRAPPED)):
            return None
        extra = self.call_info(kwargs) if self.call_info is not None else {}
        call = _call(kwargs, self.defaults, extra)
        opened = await async_open_call(self.pm, call)  # CallBlocked propagates: nothing sent
        self.open[call.call_id] = opened
        # LiteLLM fires no event for a stream its consumer leaves early; its logging object lives as long as
        # the stream, so when it is collected with the call still open, the call is settled as abandoned
        logging_obj = kwargs.get("litellm_logging_obj")
        if logging_obj is not None:
            try:
                weakref.finalize(logging_obj, self._abandoned, call.call_id)
            except TypeError:  # not weakly referable: the hold expires with reservation_ttl instead
                pass
        return None

    def _abandoned(self, call_id: str) -> None:
        opened = self.open.pop(call_id, None)
        if opened is not None:
            opened.guard.usage = LLMUsage(billed=True)  # the provider answered; how much is not known
            _settle_dropped(opened)

    def _take(self, kwargs: Mapping[str, Any], response: Any) -> OpenCall | None:
        call_id = str(kwargs.get("litellm_call_id"))
        opened = self.open.pop(call_id, None)
        if opened is not None:  # LiteLLM may fire both the sync and the async event of one call
            self._settled[call_id] = None
            while len(self._settled) > SETTLED_KEPT:
                self._settled.popitem(last=False)
        if opened is not None and response is not None:
            opened.guard.usage = _usage(response)
            model = kwargs.get("model")
            if isinstance(model, str) and model:  # the deployment that answered (a fallback may differ)
                provider, name = resolve_model(model, kwargs.get("custom_llm_provider"))
                opened.guard.call = replace(opened.guard.call, provider=provider, model=name)
        return opened

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        opened = self._take(kwargs, response_obj)
        if opened is not None:
            await opened.afinish()

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        opened = self._take(kwargs, None)
        if opened is not None:
            error = kwargs.get("exception")
            await opened.afinish(error if isinstance(error, BaseException) else RuntimeError(str(error)))

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        opened = self._take(kwargs, response_obj)
        if opened is not None:
            opened.finish()
            return
        self._record_unchecked(kwargs, response_obj)

    def _record_unchecked(self, kwargs: Mapping[str, Any], response: Any) -> None:
        """A sync call LiteLLM ran no pre-call hook for (``completion``, ``Router.completion``): it could not be
        checked before it was sent, but what it spent is recorded, so budgets still count it."""
        params = kwargs.get("litellm_params") or {}
        metadata = params.get("metadata") if isinstance(params, Mapping) else None
        metadata = metadata if isinstance(metadata, Mapping) else {}
        if str(kwargs.get("litellm_call_id")) in self._settled:
            return  # an async call this callback checked, settled by its other event
        if metadata.get(WRAPPED) or kwargs.get("call_type") not in ("completion", None):
            return  # the wrappers settle their own calls; other call types are not budgeted
        if not self._warned:
            self._warned = True
            log.warning(
                "BudgetCallback cannot check sync LiteLLM calls before they are sent (LiteLLM runs no hook that "
                "can stop them); they are recorded after. Use acompletion, or budgeted_completion"
            )
        try:
            extra = self.call_info(kwargs) if self.call_info is not None else {}
            call = _call({**kwargs, "metadata": metadata}, self.defaults, extra)
            call = replace(call, tags={**call.tags, "budget_check": "after the call"})
            post_each(self.pm, call, _usage(response), None)
        except Exception:  # a logging callback must not break the host's call
            log.exception("recording sync LiteLLM call %s failed", kwargs.get("litellm_call_id"))

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        opened = self._take(kwargs, None)
        if opened is not None:
            error = kwargs.get("exception")
            opened.finish(error if isinstance(error, BaseException) else RuntimeError(str(error)))
