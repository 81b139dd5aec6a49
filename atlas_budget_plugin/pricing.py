"""Cost of a call: provider-reported cost, ``budget_price`` hook, settings overrides, genai-prices."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Protocol

import genai_prices
from genai_prices import data_snapshot

from hookspecs import LLMCall, LLMUsage

from .exceptions import UnknownPriceError
from .money import quantize
from .settings import BudgetSettings, PriceOverride

MILLION = Decimal(1_000_000)

#: Catalogue models that are not general text models, left out of degrade suggestions.
_NOT_CHAT = (
    "embed",
    "tts",
    "whisper",
    "transcribe",
    "image",
    "moderation",
    "realtime",
    "audio",
    "dall-e",
    "search",
    "live",
    "ft:",
    "research",
)


class PriceHook(Protocol):
    def price(self, call: LLMCall, usage: LLMUsage) -> Decimal | None: ...


@dataclass(frozen=True)
class Price:
    """A cost and where it came from (stored with each record so it can be audited)."""

    cost: Decimal
    source: str


class Pricer:
    """Prices calls in a fixed order of sources; see :meth:`price`."""

    def __init__(self, settings: BudgetSettings, hook: PriceHook | None = None) -> None:
        self.overrides = settings.prices
        self.unknown_model = settings.unknown_model
        self.default_price = settings.unknown_model_price
        self.default_input_tokens = settings.default_input_tokens
        self.default_max_output_tokens = settings.default_max_output_tokens
        self.hook = hook

    def _override(self, call: LLMCall) -> tuple[str, PriceOverride] | None:
        for key in (f"{call.provider}/{call.model}", call.model):
            if key in self.overrides:
                return key, self.overrides[key]
        return None

    @staticmethod
    def _apply(price: PriceOverride, usage: LLMUsage) -> Decimal:
        cache_read = price.cache_read if price.cache_read is not None else price.input
        cache_write = price.cache_write if price.cache_write is not None else price.input
        plain_input = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
        per_million = (
            plain_input * price.input
            + usage.cache_read_tokens * cache_read
            + usage.cache_write_tokens * cache_write
            + usage.output_tokens * price.output
        )
        return per_million / MILLION + price.per_call

    @staticmethod
    def _catalogue(call: LLMCall, usage: LLMUsage) -> Price | None:
        tokens = genai_prices.Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = genai_prices.calc_price(tokens, call.model, provider_id=call.provider)
        except LookupError:
            return None
        return Price(
            Decimal(result.total_price),
            f"genai-prices {genai_prices.__version__}: {result.provider.id}/{result.model.id}",
        )

    def price(self, call: LLMCall, usage: LLMUsage) -> Price:
        """Price ``usage`` of ``call``; the first source that knows wins.

        1. the cost the provider reported (``usage.cost``);
        2. a third-party ``budget_price`` hook;
        3. a ``[prices."provider/model"]`` (or ``[prices."model"]``) override in settings;
        4. the genai-prices catalogue;
        5. the ``unknown_model`` setting: a default price, ``allow_unpriced`` (cost 0),
           or ``block`` (raise :class:`UnknownPriceError`).
        """
        price = self._price(call, usage)
        if price.cost < 0:
            raise ValueError(f"{price.source} priced call {call.call_id} at {price.cost}; a cost cannot be negative")
        return Price(quantize(price.cost), price.source)

    def _price(self, call: LLMCall, usage: LLMUsage) -> Price:
        if usage.cost is not None:
            return Price(usage.cost, "provider")
        if self.hook is not None:
            hooked = self.hook.price(call, usage)
            if hooked is not None:
                return Price(hooked, "budget_price hook")
        override = self._override(call)
        if override is not None:
            key, price = override
            return Price(self._apply(price, usage), f"settings prices.{key}")
        catalogued = self._catalogue(call, usage)
        if catalogued is not None:
            return catalogued
        if self.default_price is not None:
            default = PriceOverride(input=self.default_price, output=self.default_price)
            return Price(self._apply(default, usage), "settings unknown_model default price")
        if self.unknown_model == "allow_unpriced":
            return Price(Decimal(0), "unpriced")
        raise UnknownPriceError(
            f"no price is known for model {call.model!r} of provider {call.provider!r}. Add "
            f'[prices."{call.provider}/{call.model}"] with input and output prices per million '
            "tokens to the settings file, or set unknown_model to 'allow_unpriced' or a default price"
        )

    def alternatives(self, call: LLMCall, candidates: Sequence[str] = ()) -> list[tuple[str, Decimal]]:
        """Other models of the call's provider with their pre-flight estimates, cheapest first.

        ``candidates`` (a policy's ``alternatives``) are used when given; otherwise
        the provider's current models in the overrides and the genai-prices
        catalogue that suit the call's operation.
        """
        names = list(candidates) or self._known_models(call)
        priced = []
        for model in dict.fromkeys(names):
            if model == call.model:
                continue
            try:
                price = self.estimate(replace(call, model=model, estimated_cost=None))
            except UnknownPriceError:
                continue
            priced.append((model, price.cost))
        return sorted(priced, key=lambda item: (item[1], item[0]))

    def _known_models(self, call: LLMCall) -> list[str]:
        names = [key.split("/", 1)[1] for key in self.overrides if key.startswith(f"{call.provider}/")]
        provider = next((p for p in data_snapshot.get_snapshot().providers if p.id == call.provider), None)
        for model in provider.models if provider else []:
            if model.deprecated:
                continue
            special = any(word in model.id for word in _NOT_CHAT)
            if (call.operation == "embedding") == ("embed" in model.id) and (
                call.operation == "embedding" or not special
            ):
                names.append(model.id)
        return names

    def estimate_usage(self, call: LLMCall) -> LLMUsage:
        """Tokens a call may use, for the pre-flight estimate: the host's counts or the defaults."""
        input_tokens = call.input_tokens if call.input_tokens is not None else self.default_input_tokens
        output = call.max_output_tokens if call.max_output_tokens is not None else self.default_max_output_tokens
        return LLMUsage(input_tokens=input_tokens, output_tokens=output)

    def estimate(self, call: LLMCall) -> Price:
        """Pre-flight cost: the host's ``estimated_cost``, else the price of the estimated usage."""
        if call.estimated_cost is not None:
            return Price(quantize(call.estimated_cost), "host estimate")
        price = self.price(call, self.estimate_usage(call))
        return Price(price.cost, f"estimate from {price.source}")
