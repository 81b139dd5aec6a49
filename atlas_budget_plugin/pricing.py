"""Cost of a call: provider-reported cost, ``budget_price`` hook, settings overrides, genai-prices."""

from __future__ import annotations

import functools
import tomllib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from importlib import resources
from typing import Any, Protocol

import genai_prices
from genai_prices import data_snapshot

from hookspecs import LLMCall, LLMUsage
from hookspecs.streams import plain

from .exceptions import UnknownPriceError, ValidationError
from .money import MAX_AMOUNT, quantize
from .settings import BudgetSettings, PriceOverride
from .types import TOKEN_FIELDS

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


#: Usage keys the genai-prices catalogue can price (beyond the four token counts).
CATALOGUE_UNITS = frozenset(genai_prices.types._reported_usage_keys())
#: Catalogue keys that detail the four token counts (``cache_write_1h_tokens``, ``output_reasoning_tokens``...):
#: already counted in those totals, so a ``[prices]`` override prices them at their total's price.
TOKEN_DETAILS = frozenset(k for k in CATALOGUE_UNITS if k.endswith("_tokens")) - frozenset(TOKEN_FIELDS)


def _flavors(provider: str) -> list[str]:
    found = next((p for p in data_snapshot.get_snapshot().providers if p.id == provider), None)
    return [e.api_flavor for e in (found.extractors or [])] if found else []


def _flavor(provider: str, body: Any) -> str:
    """The genai-prices API flavour of a response body (a plain dict), from its shape.

    OpenAI chat completions and Responses bodies differ in their usage names
    (``prompt_tokens`` against ``input_tokens``); an OpenAI-shaped body from
    another provider (an OpenAI-compatible endpoint, LiteLLM) is read with that
    provider's ``chat`` flavour when it has one.
    """
    if not isinstance(body, dict):
        return "default"
    found = body.get("usage")
    usage: dict[str, Any] = found if isinstance(found, dict) else {}
    kind = str(body.get("object") or "")
    if kind == "list" and "data" in body:
        wanted = "embeddings"
    elif kind == "response" or (provider == "openai" and ("output" in body or "input_tokens" in usage)):
        wanted = "responses"
    elif kind.startswith("chat.completion") or "prompt_tokens" in usage:
        wanted = "chat"
    else:
        wanted = "default"
    flavors = _flavors(provider)
    if wanted in flavors or not flavors:
        return wanted
    if "default" in flavors:
        return "default"
    return "chat" if "chat" in flavors else flavors[0]


def _service_tier(body: Any) -> str | None:
    """The tier the provider served the call at, as its body reports it (OpenAI: ``service_tier``)."""
    tier = body.get("service_tier") if isinstance(body, dict) else None
    return tier if isinstance(tier, str) and tier else None


#: Marks an estimate built from the settings' default token counts (see :func:`estimate_basis`).
DEFAULT_COUNTS = "default token counts"


def estimate_basis(source: str) -> str | None:
    """What a pre-flight estimate was built from, read from its price source; None for other sources.

    ``"host estimate"`` (``LLMCall.estimated_cost``), ``"host token counts"``, or
    ``"default token counts (input 1024, output 1024)"`` when the call gave no
    ``input_tokens`` and/or no ``max_output_tokens``.
    """
    if source in ("host estimate", "caller estimate"):
        return "host estimate"
    prefix = "estimate ("
    if source.startswith(prefix + DEFAULT_COUNTS) and ") from " in source:
        return source[len(prefix) : source.index(") from ")]
    if source.startswith("estimate from "):
        return "host token counts"
    return None


#: Sources of prices for models nobody priced (``unknown_model``); estimates prefix them.
UNPRICED = "unpriced"
DEFAULT_PRICE = "settings unknown_model default price"


class PriceHook(Protocol):
    def price(self, call: LLMCall, usage: LLMUsage) -> Decimal | None: ...


MEDIA_SOURCE = "atlas-budget media prices"


@functools.lru_cache(maxsize=1)
def media_prices() -> dict[str, PriceOverride]:
    """The shipped per-unit prices (images by size and quality, audio seconds, characters), by provider/model."""
    text = resources.files("atlas_budget_plugin").joinpath("data/media_prices.toml").read_text(encoding="utf-8")
    return {key: PriceOverride.model_validate(entry) for key, entry in tomllib.loads(text).items()}


@dataclass(frozen=True)
class Price:
    """A cost and where it came from (stored with each record so it can be audited)."""

    cost: Decimal
    source: str


#: Catalogue prices of usages already priced: key -> (the catalogue snapshot that priced it, its price).
_catalogued: dict[tuple[Any, ...], tuple[Any, Price]] = {}


def _fixed_price(snapshot: Any, call: LLMCall, usage: LLMUsage) -> bool:
    """Whether the catalogue prices ``usage`` of ``call``'s model the same at every moment: one price (no
    dated or time-of-day prices), and no service-tier variants when the usage names a tier. Then a usage
    priced once keeps its price while the catalogue snapshot is the same. False whenever that cannot be told."""
    try:
        _, model = snapshot.find_provider_model(call.model, None, call.provider, None)
        return isinstance(model.prices, genai_prices.types.ModelPrice) and not (
            usage.service_tier and model.price_variants
        )
    except Exception:
        return False


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
    def _apply(price: PriceOverride, usage: LLMUsage, source: str = "") -> Decimal:
        cache_read = price.cache_read if price.cache_read is not None else price.input
        cache_write = price.cache_write if price.cache_write is not None else price.input
        plain_input = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
        per_million = (
            plain_input * price.input
            + usage.cache_read_tokens * cache_read
            + usage.cache_write_tokens * cache_write
            + usage.output_tokens * price.output
        )
        units = Decimal(0)
        for name, amount in usage.units.items():
            if name in TOKEN_DETAILS and name not in price.per_unit:
                continue  # already in the four token counts, priced at their price
            if name not in price.per_unit:
                raise UnknownPriceError(
                    f"usage has {amount} {name!r} but {source or 'the price'} has no per_unit price for it; "
                    f'add per_unit = {{ "{name}" = "<price per unit>" }}'
                )
            units += amount * price.per_unit[name]
        return per_million / MILLION + price.per_call + units

    @staticmethod
    def _catalogue(call: LLMCall, usage: LLMUsage) -> Price | None:
        if any(name not in CATALOGUE_UNITS for name in usage.units):
            return None  # the catalogue cannot price these units; an override must
        snapshot = data_snapshot.get_snapshot()
        key = (
            call.provider,
            call.model,
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_tokens,
            usage.cache_write_tokens,
            usage.service_tier,
            *sorted(usage.units.items()),
        )
        hit = _catalogued.get(key)
        if hit is not None and hit[0] is snapshot:
            return hit[1]
        price = Pricer._catalogue_price(call, usage)
        if price is not None and data_snapshot.get_snapshot() is snapshot and _fixed_price(snapshot, call, usage):
            if len(_catalogued) >= 4096:
                _catalogued.clear()
            _catalogued[key] = (snapshot, price)
        return price

    @staticmethod
    def _catalogue_price(call: LLMCall, usage: LLMUsage) -> Price | None:
        tokens = genai_prices.Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            **{name: amount for name, amount in usage.units.items()},
        )
        # Request context that selects a price variant: OpenAI priority / flex, Gemini flex / priority.
        context = {"service_tier": usage.service_tier} if usage.service_tier else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = genai_prices.calc_price(tokens, call.model, provider_id=call.provider, price_context=context)
        except LookupError:
            return None
        except ValueError as exc:
            if str(exc).startswith(("Missing usage", "Invalid usage")):  # e.g. 1-hour cache writes > all writes
                raise ValidationError(f"usage of call {call.call_id} is inconsistent: {exc}") from None
            return None
        tier = f" ({usage.service_tier} tier)" if usage.service_tier else ""
        return Price(
            Decimal(result.total_price),
            f"genai-prices {genai_prices.__version__}: {result.provider.id}/{result.model.id}{tier}",
        )

    @staticmethod
    def _media(call: LLMCall, usage: LLMUsage) -> Price | None:
        """Images, transcription and speech the catalogue does not price, from the shipped data file."""
        key = f"{call.provider}/{call.model}"
        price = media_prices().get(key)
        if price is None or not usage.units or any(name not in price.per_unit for name in usage.units):
            return None
        return Price(Pricer._apply(price, usage, MEDIA_SOURCE), f"{MEDIA_SOURCE}: {key}")

    def price(self, call: LLMCall, usage: LLMUsage) -> Price:
        """Price ``usage`` of ``call``; the first source that knows wins.

        1. the cost the provider reported (``usage.cost``);
        2. a third-party ``budget_price`` hook;
        3. a ``[prices."provider/model"]`` (or ``[prices."model"]``) override in settings;
        4. the genai-prices catalogue, then the shipped prices of images, transcription and speech
           (``atlas_budget_plugin/data/media_prices.toml``);
        5. the ``unknown_model`` setting: a default price, ``allow_unpriced`` (cost 0),
           or ``block`` (raise :class:`UnknownPriceError`).
        """
        price = self._price(call, usage)
        if price.cost < 0:
            raise ValueError(f"{price.source} priced call {call.call_id} at {price.cost}; a cost cannot be negative")
        if price.cost >= MAX_AMOUNT:
            raise ValueError(
                f"{price.source} priced call {call.call_id} at {price.cost}, which is not a plausible cost"
            )
        return Price(quantize(price.cost), price.source)

    def _price(self, call: LLMCall, usage: LLMUsage) -> Price:
        if usage.cost is not None:
            if usage.cost == 0:
                repriced = self._zero_reported(call, usage)
                if repriced is not None:
                    return repriced
            return Price(usage.cost, "provider")
        if self.hook is not None:
            hooked = self.hook.price(call, usage)
            if hooked is not None:
                return Price(hooked, "budget_price hook")
        override = self._override(call)
        if override is not None:
            key, price = override
            return Price(self._apply(price, usage, f"prices.{key}"), f"settings prices.{key}")
        catalogued = self._catalogue(call, usage)
        media = self._media(call, usage)
        if catalogued is not None and (catalogued.cost > 0 or media is None):
            return catalogued
        if media is not None:  # the catalogue does not know it, or priced these units at nothing
            return media
        if self.default_price is not None and not usage.units:
            default = PriceOverride(input=self.default_price, output=self.default_price)
            return Price(self._apply(default, usage), DEFAULT_PRICE)
        if self.unknown_model == "allow_unpriced":
            return Price(Decimal(0), UNPRICED)
        what = f" with units {sorted(usage.units)}" if usage.units else ""
        raise UnknownPriceError(
            f"no price is known for model {call.model!r} of provider {call.provider!r}{what}. Add "
            f'[prices."{call.provider}/{call.model}"] with input and output prices per million '
            "tokens to the settings file, or set unknown_model to 'allow_unpriced' or a default price"
        )

    def _zero_reported(self, call: LLMCall, usage: LLMUsage) -> Price | None:
        """A price for tokens the provider (or a proxy such as LiteLLM) reported a cost of exactly 0 for.

        A zero is what proxies report when they do not know a model's price, so for a
        call that used tokens of a model a source here prices above zero, the zero is
        not trusted: the call is priced from its tokens, flagged. A zero for a model
        nobody prices (a local model), or that prices to zero too, stands.
        """
        tokens = replace(usage, cost=None)
        if tokens.is_empty:
            return None
        try:
            priced = self._price(call, tokens)
        except Exception:  # UnknownPriceError, units nobody prices: the provider's zero is all there is
            return None
        if priced.cost <= 0 or priced.source in (UNPRICED, DEFAULT_PRICE):
            return None
        return Price(priced.cost, f"{priced.source}; provider reported cost 0, not trusted")

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

    @staticmethod
    def resolve_usage(call: LLMCall, usage: LLMUsage) -> LLMUsage:
        """Fill token counts from ``usage.response`` when the host gave only the provider's response.

        The response may be a dict or an SDK object (pydantic ``model_dump``, by
        alias for google-genai; ``to_dict()``; ``__dict__``), e.g. an OpenAI
        ``ChatCompletion`` or ``Response``, an Anthropic ``Message``, a Gemini
        ``GenerateContentResponse``, or the body ``guard.observe`` merged from a
        stream. Read through genai-prices: cached reads, 5-minute and 1-hour cache
        writes and reasoning tokens are kept (as ``units`` beside the four counts),
        and the body's ``service_tier`` prices the call at its tier.
        """
        if usage.response is None or not usage.is_empty:
            return usage
        try:
            body = plain(usage.response)
            extracted = genai_prices.extract_usage(
                body, provider_id=call.provider, api_flavor=_flavor(call.provider, body)
            )
        except (LookupError, ValueError, TypeError, AttributeError) as exc:
            raise ValidationError(
                f"cannot read usage from the {call.provider} response of call {call.call_id}: {exc}; pass token "
                "counts in LLMUsage instead"
            ) from None
        found = extracted.usage
        extra = {
            name: getattr(found, name)
            for name in CATALOGUE_UNITS
            # text-modality counts restate the totals; the catalogue derives them itself
            if name not in TOKEN_FIELDS and "_text_" not in name and getattr(found, name, None)
        }
        return replace(
            usage,
            input_tokens=int(found.input_tokens or 0),
            output_tokens=int(found.output_tokens or 0),
            cache_read_tokens=int(found.cache_read_tokens or 0),
            cache_write_tokens=int(found.cache_write_tokens or 0),
            units=extra,
            service_tier=usage.service_tier or _service_tier(body),
        )

    def estimate_usage(self, call: LLMCall) -> LLMUsage:
        """Tokens a call may use, for the pre-flight estimate: the host's counts or the defaults.

        A ``service_tier`` tag on the call (``priority``, ``flex``) prices the estimate at that tier.
        """
        input_tokens = call.input_tokens if call.input_tokens is not None else self.default_input_tokens
        output = call.max_output_tokens if call.max_output_tokens is not None else self.default_max_output_tokens
        tier = call.tags.get("service_tier") or None
        return LLMUsage(input_tokens=input_tokens, output_tokens=output, service_tier=tier)

    def estimate(self, call: LLMCall) -> Price:
        """Pre-flight cost: the host's ``estimated_cost``, else the price of the estimated usage.

        When the call gives no ``input_tokens`` or no ``max_output_tokens``, the
        settings' defaults stand in and the source says so (see :func:`estimate_basis`).
        """
        if call.estimated_cost is not None:
            if call.estimated_cost >= MAX_AMOUNT:
                raise ValueError(f"estimated_cost {call.estimated_cost} of call {call.call_id} is not plausible")
            return Price(quantize(call.estimated_cost), "host estimate")
        price = self.price(call, self.estimate_usage(call))
        defaults = []
        if call.input_tokens is None:
            defaults.append(f"input {self.default_input_tokens}")
        if call.max_output_tokens is None:
            defaults.append(f"output {self.default_max_output_tokens}")
        basis = f" ({DEFAULT_COUNTS}: {', '.join(defaults)})" if defaults else ""
        return Price(price.cost, f"estimate{basis} from {price.source}")

    @staticmethod
    def estimate_warning(call: LLMCall, source: str) -> str | None:
        """The verdict's warning when the hold was built from default token counts, else None."""
        basis = estimate_basis(source)
        if basis is None or not basis.startswith(DEFAULT_COUNTS):
            return None
        return (
            f"estimated from {basis}: the hold may be far from this call's real cost; pass "
            "LLMCall(input_tokens=..., max_output_tokens=...) (hookspecs.approx_tokens counts a prompt)"
        )
