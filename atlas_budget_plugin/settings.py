"""BudgetSettings: arguments, then ATLAS_BUDGET_* env vars, then the TOML settings file, then defaults."""

from __future__ import annotations

import hashlib
import os
import tomllib
from contextvars import ContextVar
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import platformdirs
import pydantic
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .exceptions import SettingsError
from .money import Money, parse_money
from .types import Actor, AlertConfig, Policy

ENV_PREFIX = "ATLAS_BUDGET_"
CONFIG_ENV = "ATLAS_BUDGET_CONFIG"


def default_config_file() -> Path:
    """``$ATLAS_BUDGET_CONFIG``, else ``budget.toml`` in the user's config dir for ``atlas``."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return Path(platformdirs.user_config_dir("atlas")) / "budget.toml"


def default_database_url() -> str:
    return "sqlite:///" + str(Path(platformdirs.user_data_dir("atlas")) / "budget.db")


class PriceOverride(BaseModel):
    """Prices per million tokens (and per call) that win over the catalogue."""

    model_config = ConfigDict(extra="forbid")

    input: Money = Decimal(0)
    output: Money = Decimal(0)
    cache_read: Money | None = None
    cache_write: Money | None = None
    per_call: Money = Decimal(0)
    per_unit: dict[str, Money] = Field(default_factory=dict)

    @field_validator("input", "output", "cache_read", "cache_write", "per_call")
    @classmethod
    def _not_negative(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and value < 0:
            raise ValueError(f"prices must not be negative, got {value}")
        return value

    @field_validator("per_unit")
    @classmethod
    def _units_not_negative(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for name, price in value.items():
            if price < 0:
                raise ValueError(f"per_unit price of {name!r} must not be negative, got {price}")
        return value


class PolicySpec(Policy):
    """A policy declared in the settings file; applied idempotently at start (matched by name)."""

    limit: Money


_config_file: ContextVar[Path | None] = ContextVar("atlas_budget_config_file", default=None)


class BudgetSettings(BaseSettings):
    """All settings of the budget plugin. Build with :meth:`load` to get readable errors."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    database_url: str = Field(default_factory=default_database_url)
    default_enforcement: Literal["block", "warn"] = "block"
    on_store_error: Literal["deny", "allow"] = "deny"
    evaluation_interval: int = Field(default=60, ge=0)
    reservation_ttl: int = Field(default=600, gt=0)
    default_max_output_tokens: int = Field(default=1024, ge=0)
    default_input_tokens: int = Field(default=1024, ge=0)
    unknown_model: str = "block"
    retention_days: int = Field(default=0, ge=0)
    spool_path: Path | None = None
    delivery_attempts: int = Field(default=5, ge=1, le=50)
    delivery_backoff: float = Field(default=30.0, gt=0)
    tenant: str = "default"
    actor: str = "system"
    roles: dict[str, Literal["budget:read", "budget:write", "budget:admin"]] = Field(default_factory=dict)
    policies: list[PolicySpec] = Field(default_factory=list)
    alerts: list[AlertConfig] = Field(default_factory=list)
    sinks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    prices: dict[str, PriceOverride] = Field(default_factory=dict)

    _config_path: Path | None = PrivateAttr(default=None)

    @field_validator("unknown_model")
    @classmethod
    def _unknown_model(cls, value: str) -> str:
        if value in ("block", "allow_unpriced"):
            return value
        try:
            parse_money(value, "unknown_model")
        except ValueError:
            raise ValueError(
                f"unknown_model must be 'block', 'allow_unpriced' or a default price per million "
                f'tokens such as "1.00", got {value!r}'
            ) from None
        return value

    @field_validator("policies")
    @classmethod
    def _unique_names(cls, value: list[PolicySpec]) -> list[PolicySpec]:
        seen: set[tuple[str, str]] = set()
        for spec in value:
            key = (spec.tenant, spec.name)
            if key in seen:
                raise ValueError(f"policy name {spec.name!r} is declared twice in tenant {spec.tenant!r}")
            seen.add(key)
        return value

    def actor_for(self, actor: str | None = None, tenant: str | None = None) -> Actor:
        """The actor the command line acts as: ``system`` is the tenant's admin; others get ``[roles]``."""
        name = actor or self.actor
        where = tenant or self.tenant
        if name == Actor.SYSTEM_ID:
            return Actor.system(where)
        role = self.roles.get(name)
        return Actor(id=name, tenant=where, roles=frozenset({role}) if role else frozenset())

    @property
    def spool_file(self) -> Path:
        """Where usage waits while the database is unreachable (one file per database)."""
        if self.spool_path is not None:
            return self.spool_path.expanduser()
        digest = hashlib.sha256(self.database_url.encode()).hexdigest()[:12]
        return Path(platformdirs.user_data_dir("atlas")) / f"budget-spool-{digest}.jsonl"

    @property
    def unknown_model_price(self) -> Decimal | None:
        """The default price per million tokens for unknown models, when one is set."""
        if self.unknown_model in ("block", "allow_unpriced"):
            return None
        return parse_money(self.unknown_model, "unknown_model")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file.get() or default_config_file()
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=path))

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> BudgetSettings:
        """Build settings; any problem is one :class:`SettingsError` naming the file and key."""
        path = Path(config_file).expanduser() if config_file else default_config_file()
        file_data = _read_toml(path)
        token = _config_file.set(path)
        try:
            settings = cls(**overrides)
        except pydantic.ValidationError as exc:
            raise SettingsError(_explain(exc, path, file_data, overrides)) from None
        finally:
            _config_file.reset(token)
        settings._config_path = path
        return settings

    @property
    def config_file(self) -> Path:
        """The settings file these settings were read from (it may not exist)."""
        return self._config_path or default_config_file()


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(
            f"settings file {path} is not valid TOML: {exc}. Fix the syntax (strings need quotes, "
            'e.g. limit = "20.00") or point ATLAS_BUDGET_CONFIG at another file.'
        ) from None
    except OSError as exc:
        raise SettingsError(
            f"settings file {path} cannot be read: {exc.strerror}. Check its permissions or point "
            "ATLAS_BUDGET_CONFIG at another file."
        ) from None


def _loc_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _source_of(top: str, file_data: dict[str, Any], overrides: dict[str, Any], path: Path) -> str:
    if top in overrides:
        return "arguments"
    env_name = f"{ENV_PREFIX}{top}".upper()
    if any(k.upper() == env_name or k.upper().startswith(env_name + "__") for k in os.environ):
        return f"environment variable {env_name}"
    if top in file_data:
        return f"settings file {path}"
    return "defaults"


def _explain(exc: pydantic.ValidationError, path: Path, file_data: dict[str, Any], overrides: dict[str, Any]) -> str:
    allowed = ", ".join(BudgetSettings.model_fields)
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        key = _loc_text(loc) or "(root)"
        source = _source_of(str(loc[0]) if loc else "", file_data, overrides, path)
        if err["type"] == "extra_forbidden":
            if len(loc) == 1:
                problems.append(f"unknown key {key!r} in {source}; allowed keys: {allowed}")
            else:
                problems.append(f"unknown key {key!r} in {source}; remove it or check its spelling")
            continue
        message = str(err["msg"]).removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
        problems.append(f"{key}: {message}{shown} in {source}")
    return "invalid budget settings: " + "; ".join(problems)
