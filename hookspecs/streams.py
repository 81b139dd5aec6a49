"""Host-side reading of provider responses: SDK objects to plain dicts, and usage merged from stream chunks.

No budget logic lives here. A stream's usage is merged into a small body shaped
like the provider's final (non-streaming) response, e.g. ``{"object":
"chat.completion", "model": ..., "usage": {...}}``; a plugin reads it from
``LLMUsage.response`` exactly as it reads a JSON response, so every detail the
provider reports (cached reads, 5-minute and 1-hour cache writes, reasoning
tokens, the service tier) reaches the pricer unchanged.

Understood, as dicts or SDK objects:

* OpenAI chat completion chunks: the last chunk carries ``usage`` when the request
  had ``stream_options={"include_usage": True}``; without it no chunk has usage;
* OpenAI Responses API events: ``response.completed`` (and ``response.incomplete``,
  ``response.failed``) carry ``response.usage``;
* Anthropic Messages events: ``message_start`` carries the input, cache tokens and
  the first output count, ``message_delta`` the cumulative ``usage.output_tokens``
  (and, on newer API versions, cumulative input counts), the SDK helper's
  ``message_stop`` the final message;
* Google Gemini chunks: ``usage_metadata`` / ``usageMetadata``, cumulative, so the
  last one wins.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = ["StreamUsage", "plain"]

_SCALARS = (str, int, float, bool, Decimal)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _camel_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel(k): _camel_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel_keys(v) for v in value]
    return value


def _gemini_spelling(body: dict[str, Any]) -> dict[str, Any]:
    """Gemini's REST field names (camelCase) for a body dumped by field name (``usage_metadata``)."""
    if "usage_metadata" in body and "usageMetadata" not in body:
        body["usageMetadata"] = _camel_keys(body.pop("usage_metadata"))
        if "model_version" in body and "modelVersion" not in body:
            body["modelVersion"] = body.pop("model_version")
    return body


def _dump(obj: Any) -> Any:
    """``model_dump`` of a pydantic SDK object; google-genai's models need ``by_alias`` for the REST names."""
    by_alias = type(obj).__module__.startswith("google.")
    try:
        return obj.model_dump(mode="json", by_alias=by_alias, exclude_none=True)
    except Exception:  # a field JSON mode cannot render: the python form still has the counts
        return obj.model_dump(by_alias=by_alias, exclude_none=True)


def plain(obj: Any) -> Any:
    """A plain JSON-like copy (dicts, lists, scalars) of a provider response, chunk or event.

    Accepts dicts and SDK objects: pydantic models (``model_dump``, by alias for
    google-genai), objects with ``to_dict()``, or plain objects (their public
    ``__dict__``). A Gemini body dumped with snake_case names is given its REST
    camelCase names, so both spellings read the same.
    """
    if obj is None or isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, Mapping):
        return _gemini_spelling({str(k): plain(v) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if callable(getattr(obj, "model_dump", None)):
        return plain(_dump(obj))
    if callable(getattr(obj, "to_dict", None)):
        return plain(obj.to_dict())
    if hasattr(obj, "__dict__"):
        return plain({k: v for k, v in vars(obj).items() if not k.startswith("_")})
    raise TypeError(f"cannot read a provider response from {type(obj).__name__} {obj!r:.80}")


def _get(obj: Any, *names: str) -> Any:
    """The first of ``names`` present on ``obj`` (a key of a dict or an attribute), else None."""
    for name in names:
        value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
        if value is not None:
            return value
    return None


_ANTHROPIC_TERMINAL = {"message_stop"}
_RESPONSES_USAGE = re.compile(r"^response\.(completed|incomplete|failed)$")


class StreamUsage:
    """Merges the usage a stream reports, chunk by chunk, into one final response-shaped body.

    ``observe`` is cheap for chunks without usage (no copy is made of them); only
    chunks and events that carry usage are turned into dicts.
    """

    def __init__(self) -> None:
        self.chunks = 0
        self.kind: str | None = None
        self.model: str | None = None
        self.service_tier: str | None = None
        self.usage: dict[str, Any] | None = None
        self.finished = False

    @property
    def started(self) -> bool:
        """True once any chunk or event arrived: the provider started answering (and billing)."""
        return self.chunks > 0

    @property
    def known(self) -> bool:
        """True when some usage was reported."""
        return self.usage is not None

    def observe(self, item: Any) -> None:
        """Take one chunk or event (a dict or an SDK object) into account."""
        if item is None or isinstance(item, (str, bytes, int, float)):
            raise TypeError(
                f"observe() takes a stream chunk or event (a dict or an SDK object), got {type(item).__name__} "
                f"{item!r:.60}"
            )
        self.chunks += 1
        kind = _get(item, "type", "object")
        if kind == "chunk" and _get(item, "chunk") is not None:  # openai's ChatCompletionStreamManager event
            self.chunks -= 1
            self.observe(_get(item, "chunk"))
            return
        if isinstance(kind, str) and kind.startswith(("message_", "content_block")):
            self._anthropic(kind, item)
        elif isinstance(kind, str) and kind.startswith("response."):
            self._responses(kind, item)
        elif _get(item, "usage_metadata", "usageMetadata") is not None or _get(item, "candidates") is not None:
            self._gemini(item)
        elif _get(item, "choices") is not None or kind == "chat.completion.chunk":
            self._chat(item)

    def _note(self, kind: str, model: Any, tier: Any = None) -> None:
        self.kind = kind
        if isinstance(model, str) and model:
            self.model = model
        if isinstance(tier, str) and tier:
            self.service_tier = tier

    def _chat(self, item: Any) -> None:
        self._note("openai-chat", _get(item, "model"), _get(item, "service_tier"))
        usage = _get(item, "usage")
        if usage is not None:
            self.usage = plain(usage)  # the final chunk's usage covers the whole stream
        choices = _get(item, "choices") or []
        if any(_get(choice, "finish_reason") for choice in choices):
            self.finished = True

    def _responses(self, kind: str, item: Any) -> None:
        response = _get(item, "response")
        if response is None:
            return
        self._note("openai-responses", _get(response, "model"), _get(response, "service_tier"))
        if _RESPONSES_USAGE.match(kind):
            self.finished = True
            usage = _get(response, "usage")
            if usage is not None:
                self.usage = plain(usage)

    def _anthropic(self, kind: str, item: Any) -> None:
        message = _get(item, "message")
        if kind == "message_start" or (kind in _ANTHROPIC_TERMINAL and message is not None):
            if message is not None:
                self._note("anthropic", _get(message, "model"))
                usage = _get(message, "usage")
                if usage is not None:
                    self._merge(plain(usage))
        elif kind == "message_delta":
            self.kind = self.kind or "anthropic"
            usage = _get(item, "usage")
            if usage is not None:
                self._merge(plain(usage))
        if kind in _ANTHROPIC_TERMINAL:
            self.finished = True

    def _merge(self, usage: dict[str, Any]) -> None:
        """Anthropic counts are cumulative: a later event's non-null counts replace earlier ones."""
        merged = dict(self.usage or {})
        merged.update({k: v for k, v in usage.items() if v is not None})
        self.usage = merged

    def _gemini(self, item: Any) -> None:
        self._note("gemini", _get(item, "model_version", "modelVersion"))
        metadata = _get(item, "usage_metadata", "usageMetadata")
        if metadata is not None:
            dumped = plain(metadata)
            self.usage = _camel_keys(dumped) if isinstance(dumped, dict) else dumped  # cumulative: the last wins
        for candidate in _get(item, "candidates") or []:
            if _get(candidate, "finish_reason", "finishReason"):
                self.finished = True

    def body(self) -> dict[str, Any] | None:
        """The merged usage as a final response body of the stream's API, or None when none was reported."""
        if self.usage is None:
            return None
        model = {"model": self.model} if self.model else {}
        tier = {"service_tier": self.service_tier} if self.service_tier else {}
        if self.kind == "openai-chat":
            return {"object": "chat.completion", **model, **tier, "usage": self.usage}
        if self.kind == "openai-responses":
            return {"object": "response", **model, **tier, "usage": self.usage}
        if self.kind == "gemini":
            return {**({"modelVersion": self.model} if self.model else {}), "usageMetadata": self.usage}
        return {"type": "message", **model, "usage": self.usage}
