"""Value types ATLAS passes to (and gets back from) its LLM-call hooks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any


def _money(name: str, value: Any) -> Decimal | None:
    """Coerce a money field to Decimal, refusing floats (binary floats are not exact)."""
    if value is None or isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool) or isinstance(value, float):
        raise TypeError(
            f"{name} must be a Decimal, an int or a decimal string, not {type(value).__name__} "
            f"({value!r}): floats cannot hold money exactly; pass Decimal({str(value)!r})"
        )
    elif isinstance(value, (int, str)):
        try:
            result = Decimal(value)
        except InvalidOperation:
            raise ValueError(f"{name} must be a decimal number, got {value!r}") from None
    else:
        raise TypeError(f"{name} must be a Decimal, got {type(value).__name__}")
    if result is not None:
        if not result.is_finite():
            raise ValueError(f"{name} must be a finite amount, got {result}")
        if result < 0:
            raise ValueError(f"{name} must not be negative, got {result}")
    return result


def _count(name: str, value: Any, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number of tokens, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")


@dataclass(frozen=True)
class LLMCall:
    """One LLM call the host is about to make.

    ``call_id`` must be unique per call: it is the idempotency key that ties the
    pre-check, the recorded usage and any retried callback together.
    """

    call_id: str
    provider: str
    model: str
    operation: str = "chat"
    tenant: str = "default"
    actor: str | None = None
    category: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    input_tokens: int | None = None
    max_output_tokens: int | None = None
    estimated_cost: Decimal | None = None

    def __post_init__(self) -> None:
        for name in ("call_id", "provider", "model", "operation", "tenant"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"LLMCall.{name} must be a non-empty string, got {value!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in dict(self.tags).items()):
            raise TypeError("LLMCall.tags must map str to str")
        object.__setattr__(self, "tags", dict(self.tags))
        _count("LLMCall.input_tokens", self.input_tokens, optional=True)
        _count("LLMCall.max_output_tokens", self.max_output_tokens, optional=True)
        object.__setattr__(self, "estimated_cost", _money("LLMCall.estimated_cost", self.estimated_cost))


@dataclass(frozen=True)
class LLMUsage:
    """What a finished call consumed, as reported by the provider.

    ``cost``, when the provider reports one, wins over any computed price.
    ``response`` may carry the raw provider response body (a dict, or the SDK's
    response object) so usage can be extracted from it by a plugin. ``units``
    counts what is not billed in tokens, e.g. ``{"images": 2}`` or
    ``{"audio_seconds": Decimal("31.5")}``, and token details the four counts
    include, e.g. ``{"cache_write_1h_tokens": 2000}`` (Anthropic 1-hour cache writes).
    ``service_tier`` is the tier the provider says it served the call at
    (OpenAI ``priority``, ``flex``); ``billed=True`` says the provider billed the
    call even when no usage is known (a stream abandoned after it started), so it
    is recorded at its estimate instead of released.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost: Decimal | None = None
    response: Any = None
    units: Mapping[str, int | Decimal] = field(default_factory=dict)
    service_tier: str | None = None
    billed: bool | None = None

    def __post_init__(self) -> None:
        if self.service_tier is not None and (not isinstance(self.service_tier, str) or not self.service_tier.strip()):
            raise TypeError(f"LLMUsage.service_tier must be a non-empty string or None, got {self.service_tier!r}")
        if self.billed is not None and not isinstance(self.billed, bool):
            raise TypeError(f"LLMUsage.billed must be True, False or None, got {self.billed!r}")
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
            _count(f"LLMUsage.{name}", getattr(self, name), optional=False)
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError(
                "LLMUsage cache tokens (cache_read_tokens + cache_write_tokens = "
                f"{self.cache_read_tokens + self.cache_write_tokens}) cannot exceed "
                f"input_tokens ({self.input_tokens}): input_tokens counts all input, cached included"
            )
        object.__setattr__(self, "cost", _money("LLMUsage.cost", self.cost))
        units = {}
        for name, amount in dict(self.units).items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"LLMUsage.units keys must be unit names, got {name!r}")
            if isinstance(amount, bool) or not isinstance(amount, (int, Decimal)):
                raise TypeError(f"LLMUsage.units[{name!r}] must be an int or a Decimal, got {amount!r}")
            if isinstance(amount, Decimal) and not amount.is_finite():
                raise ValueError(f"LLMUsage.units[{name!r}] must be finite, got {amount}")
            if amount < 0:
                raise ValueError(f"LLMUsage.units[{name!r}] must not be negative, got {amount}")
            units[name] = amount
        object.__setattr__(self, "units", units)

    @property
    def is_empty(self) -> bool:
        """True when nothing was consumed (e.g. the call failed before the provider billed)."""
        return (
            self.input_tokens == 0
            and self.output_tokens == 0
            and self.cache_read_tokens == 0
            and self.cache_write_tokens == 0
            and not self.cost
            and not any(self.units.values())
        )


@dataclass(frozen=True)
class Verdict:
    """A plugin's answer to ``pre_llm_call``: deny (block the call) or allow, with warnings."""

    allowed: bool
    reason: str = ""
    warnings: tuple[str, ...] = ()
    source: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "warnings", tuple(self.warnings))
        object.__setattr__(self, "details", dict(self.details))

    @classmethod
    def allow(cls, source: str = "", warnings: tuple[str, ...] = (), **details: Any) -> Verdict:
        return cls(True, "allowed", tuple(warnings), source, details)

    @classmethod
    def deny(cls, reason: str, source: str = "", **details: Any) -> Verdict:
        return cls(False, reason, (), source, details)


class CallBlocked(Exception):
    """Raised by the host helper when a plugin denies a call; carries the denying verdict."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict
