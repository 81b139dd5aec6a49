"""Import an ATLAS installation's budgets (policies, alert rules, usage history) into the plugin, idempotently.

ATLAS kept its budgets in SQLAlchemy tables (``modules/budget/sql_models.py``), on SQLite for a desktop
install, plus policies and alert rules in its configuration (``BUDGET_POLICIES``, ``BUDGET_ALERTS``).
:func:`import_atlas` reads both and writes through the services, so every import is validated, audited
and counted like any other change. Running it again imports nothing new: policies are matched by tenant
and name, alert configs by policy, kind and threshold, usage records by their ATLAS id (stored as the
call id ``atlas:<id>``). What cannot be mapped is reported, never guessed. See docs/migrating-from-atlas.md.
"""

from __future__ import annotations

import json
import sqlite3
import tomllib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import click

from hookspecs import LLMCall

from .alert_service import sink_problem
from .exceptions import BudgetError, ValidationError
from .periods import parse_period
from .store.models import UsageRow
from .types import (
    ATLAS_CHANNELS,
    MAX_PRIORITY,
    MAX_TEXT,
    Actor,
    AlertConfig,
    Enforcement,
    Policy,
    check_text,
    map_channels,
)

if TYPE_CHECKING:
    from .bootstrap import BudgetServices

#: ATLAS's tables this importer reads (others are reported, not read).
POLICY_TABLE, USAGE_TABLE, ALERT_TABLE, ROLLOVER_TABLE = (
    "budget_policies",
    "budget_usage_records",
    "budget_alerts",
    "budget_rollovers",
)
#: Prefix of the call id an imported ATLAS usage record gets: its idempotency key here.
CALL_PREFIX = "atlas:"
#: ATLAS ``BudgetScope`` values -> our scope key; those ATLAS attributed through its own context
#: (agent, job, task, tool, skill) become tags the host puts on calls, e.g. ``tags={"agent": "a1"}``.
SCOPES = {
    "user": "actor",
    "persona": "persona",
    "team": "team",
    "project": "project",
    "session": "session",
    "provider": "provider",
    "model": "model",
    "agent": "tag.agent",
    "job": "tag.job",
    "task": "tag.task",
    "tool": "tag.tool",
    "skill": "tag.skill",
}
#: ATLAS ``OperationType`` values -> the operation names hosts use here; others are kept as they are.
OPERATIONS = {
    "chat_completion": "chat",
    "text_completion": "completion",
    "embedding": "embedding",
    "image_generation": "image",
    "image_edit": "image",
    "image_variation": "image",
    "speech_to_text": "audio",
    "text_to_speech": "audio",
}
#: ATLAS alert triggers that are spend thresholds (``kind = "actual"`` here); the others are not rules.
THRESHOLD_TRIGGERS = ("threshold_reached", "limit_exceeded")
#: The alert rules ATLAS applied to every policy when ``BUDGET_ALERTS`` set none (alerts.py DEFAULT_ALERT_RULES).
ATLAS_DEFAULT_RULES: tuple[dict[str, Any], ...] = (
    {"threshold": "0.50", "severity": "info", "cooldown_minutes": 1440},
    {"threshold": "0.75", "severity": "info", "cooldown_minutes": 720},
    {"threshold": "0.90", "severity": "warning", "cooldown_minutes": 120},
    {"threshold": "1.0", "severity": "critical", "trigger": "limit_exceeded", "cooldown_minutes": 30},
    {"threshold": "1.25", "severity": "emergency", "trigger": "limit_exceeded", "cooldown_minutes": 15},
)
#: How many examples of each kind of unmapped usage record the report lists (the rest are counted).
EXAMPLES = 5


@dataclass
class ImportReport:
    """What an import did (or, with ``dry_run``, would do), and what it could not map."""

    dry_run: bool = False
    policies_imported: list[str] = field(default_factory=list)
    policies_existing: list[str] = field(default_factory=list)
    alerts_imported: int = 0
    alerts_existing: int = 0
    alerts_updated: int = 0
    usage_imported: int = 0
    usage_existing: int = 0
    usage_cost: Decimal = Decimal(0)
    #: Each item ATLAS had that was not imported, and why (with the fix where there is one).
    not_mapped: list[str] = field(default_factory=list)
    #: Things imported differently from ATLAS, and what to do about them.
    notes: list[str] = field(default_factory=list)

    @property
    def imported_anything(self) -> bool:
        return bool(self.policies_imported or self.alerts_imported or self.alerts_updated or self.usage_imported)

    def lines(self) -> list[str]:
        """The report as text, one line per fact."""
        verb = "would import" if self.dry_run else "imported"
        lines = [
            f"policies: {verb} {len(self.policies_imported)}, already present {len(self.policies_existing)}",
            f"alert configs: {verb} {self.alerts_imported}, updated {self.alerts_updated}, "
            f"already present {self.alerts_existing}",
            f"usage records: {verb} {self.usage_imported} (cost {self.usage_cost}), "
            f"already present {self.usage_existing}",
        ]
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"not imported: {item}" for item in self.not_mapped]
        return lines


# -- reading ATLAS -------------------------------------------------------------------------------


def load_atlas_config(path: str | Path) -> dict[str, Any]:
    """ATLAS's configuration file (YAML, JSON or TOML) as a dict; only its budget keys are used."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValidationError(f"ATLAS config file {str(file)!r} not found; pass the path of ATLAS's config.yaml")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix.lower() == ".json":
            data = json.loads(text)
        elif file.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise ValidationError(
                    f"reading the YAML file {str(file)!r} needs PyYAML (pip install pyyaml), "
                    "or convert it to JSON and pass that"
                ) from None
            data = yaml.safe_load(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValidationError(f"ATLAS config file {str(file)!r} cannot be read: {exc}") from None
    except Exception as exc:  # yaml.YAMLError and friends, without importing yaml at module level
        raise ValidationError(f"ATLAS config file {str(file)!r} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ValidationError(f"ATLAS config file {str(file)!r} must hold a mapping of settings")
    return data


def _config_key(config: dict[str, Any], name: str) -> Any:
    for key in (name.upper(), name.lower()):
        if key in config:
            return config[key]
    return None


@dataclass
class _Atlas:
    """ATLAS's database, opened read-only, and the tables it has."""

    conn: sqlite3.Connection
    tables: set[str]

    def rows(self, table: str) -> Iterator[dict[str, Any]]:
        if table in self.tables:
            for row in self.conn.execute(f'SELECT * FROM "{table}"'):  # a constant table name
                yield dict(row)


def _open(source: str | Path) -> _Atlas:
    path = Path(source).expanduser()
    if not path.is_file():
        raise ValidationError(
            f"ATLAS database {str(path)!r} not found; pass the path of the SQLite file holding ATLAS's "
            f"{POLICY_TABLE} and {USAGE_TABLE} tables"
        )
    try:
        # Read-only: the import must never change the installation it migrates from.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise ValidationError(f"{str(path)!r} is not a readable SQLite database: {exc}") from None
    if not tables & {POLICY_TABLE, USAGE_TABLE}:
        conn.close()
        raise ValidationError(
            f"{str(path)!r} has neither a {POLICY_TABLE} nor a {USAGE_TABLE} table: it is not ATLAS's budget database"
        )
    conn.execute("PRAGMA query_only = 1")
    return _Atlas(conn, tables)


def _decimal(value: Any, what: str) -> Decimal:
    """A money amount as ATLAS stored it: Numeric text, an int, or (SQLite, YAML) a float.

    A float is read as its shortest decimal text (``repr``), which is the value ATLAS wrote for
    amounts of up to 15 significant digits; money is never computed in floating point here.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{what} is missing")
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{what} {value!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{what} {value!r} is not a finite number")
    return number


def _percent(value: Any, fraction: bool, what: str) -> int:
    """A percent from ATLAS: a fraction (0.8) in its objects and config, a whole percent (80) in its tables."""
    number = _decimal(value, what)
    return int((number * 100 if fraction else number).to_integral_value())


def _moment(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    else:
        text = str(value).strip()
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    # SQLite drops the offset of naive writes: ATLAS wrote UTC (datetime.now(timezone.utc)).
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        data = json.loads(value) if value else {}
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- mapping -------------------------------------------------------------------------------------


def _policy(raw: dict[str, Any], from_table: bool, tenant: str, report: ImportReport) -> tuple[str, dict[str, Any]]:
    """ATLAS policy (table row or config entry) -> (tenant, our policy data); ValueError says why not."""
    name = str(raw.get("name") or "").strip()
    if not name:
        raise ValueError("it has no name")
    scope_kind = str(raw.get("scope") or "global").lower()
    scope_id = raw.get("scope_id")
    scope: dict[str, str] = {}
    if scope_kind == "tenant":
        if not scope_id:
            raise ValueError("its scope is tenant but it names no tenant (scope_id)")
        tenant = str(scope_id)
    elif scope_kind != "global":
        key = SCOPES.get(scope_kind)
        if key is None:
            raise ValueError(
                f"its scope {scope_kind!r} has no equivalent; allowed: global, tenant, {', '.join(SCOPES)}"
            )
        if not scope_id:
            raise ValueError(f"its scope is {scope_kind} but it names none (scope_id)")
        scope[key] = str(scope_id)
        if key.startswith("tag."):
            report.notes.append(
                f"policy {name!r}: ATLAS's {scope_kind} scope is the call tag {key[4:]!r} here; the host must "
                f"send tags={{{key[4:]!r}: ...}} on calls for the policy to match"
            )
    try:
        period = parse_period(str(raw.get("period") or "monthly")).name
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    limit = _decimal(raw.get("limit_amount"), "limit_amount")
    if limit <= 0:
        raise ValueError(f"its limit_amount is {limit}; a budget here needs a limit above 0 (disable it instead)")
    action = str(raw.get("action") or raw.get("hard_limit_action") or "warn").lower()
    enforcement = action
    if action == "throttle":
        # ATLAS's throttle named no rate; ours needs one, which only the administrator can choose.
        enforcement = "warn"
        report.notes.append(
            f"policy {name!r}: ATLAS's throttle named no rate, so it is imported as warn; to throttle, set "
            "enforcement = throttle with calls_per_minute or spend_per_minute"
        )
    elif action not in get_args(Enforcement):
        raise ValueError(f"its action {action!r} has no equivalent; allowed: {', '.join(get_args(Enforcement))}")
    soft = _percent(raw.get("soft_limit_percent", 80 if from_table else 0.8), not from_table, "soft_limit_percent")
    data: dict[str, Any] = {
        "name": name,
        "tenant": tenant,
        "scope": scope,
        "period": period,
        "limit": limit,
        "currency": str(raw.get("currency") or "USD"),
        "enforcement": enforcement,
        "thresholds": sorted({p for p in (soft, 100) if 0 < p <= 1000}),
        "enabled": bool(raw.get("enabled", True)),
        "priority": max(-MAX_PRIORITY, min(MAX_PRIORITY, int(raw.get("priority") or 0))),
    }
    if raw.get("rollover_enabled"):
        cap = _percent(raw.get("rollover_max_percent", 25 if from_table else 0.25), not from_table, "rollover")
        data["rollover_cap"] = (limit * cap / 100).quantize(Decimal("1e-9"))
    for sub in ("provider_limits", "model_limits"):
        limits = raw.get(sub) or _json(raw.get("metadata")).get(sub)
        if limits:
            if sub not in Policy.model_fields:
                report.not_mapped.append(f"policy {name!r}: {sub} (this version has no sub-limits)")
            else:
                data[sub] = {str(k): _decimal(v, f"{sub}[{k}]") for k, v in dict(limits).items()}
    return tenant, data


def _rules(config: dict[str, Any], report: ImportReport) -> list[dict[str, Any]]:
    """ATLAS's alert rules as our alert config data (without policy), from BUDGET_ALERTS or its defaults."""
    section = _config_key(config, "budget_alerts")
    if isinstance(section, dict) and section.get("enabled") is False:
        report.notes.append("ATLAS's BUDGET_ALERTS has enabled = false: no alert configs are imported")
        return []
    rules = section.get("rules") if isinstance(section, dict) else None
    if not rules:
        rules = list(ATLAS_DEFAULT_RULES)
        report.notes.append(
            "ATLAS's config sets no alert rules, so ATLAS's default rules (50%, 75% info; 90% warning; 100% critical; "
            "125% emergency) are imported for every policy"
        )
    if isinstance(section, dict) and section.get("anomaly_detection"):
        report.not_mapped.append(
            "ATLAS's anomaly_detection (standard deviations of recent calls): add kind = anomaly alerts instead"
        )
    mapped = []
    for rule in rules:
        trigger = str(rule.get("trigger") or "threshold_reached")
        threshold = rule.get("threshold", 0.8)
        if trigger not in THRESHOLD_TRIGGERS:
            report.not_mapped.append(f"alert rule at {threshold} with trigger {trigger!r}: only spend thresholds map")
            continue
        try:
            percent = _percent(threshold, True, "alert threshold")
        except ValueError as exc:
            report.not_mapped.append(f"alert rule {rule!r}: {exc}"[:300])
            continue
        channels = rule.get("channels") or ["in_app"]
        mapped.append(
            {
                "threshold": percent,
                "kind": "actual",
                "severity": str(rule.get("severity") or "warning"),
                "cooldown": min(int(rule.get("cooldown_minutes") or 0) * 60, AlertConfig.MAX_COOLDOWN),
                "channels": [str(c) for c in channels],
            }
        )
    return mapped


def _call(row: dict[str, Any], tenant: str) -> tuple[LLMCall, Decimal, dict[str, Any], datetime]:
    """ATLAS usage record -> (call, cost, metadata, moment); ValueError says why it cannot be."""
    record_id = str(row.get("id") or "").strip()
    if not record_id:
        raise ValueError("no id")
    cost = _decimal(row.get("cost_usd"), "cost_usd")
    if cost < 0:
        raise ValueError(f"a negative cost_usd ({cost})")
    meta = _json(row.get("metadata"))
    tags = {
        name: str(value)
        for name, value in (
            ("session", row.get("session_id") or meta.get("session_id")),
            ("conversation", row.get("conversation_id")),
            ("team", meta.get("team_id")),
            ("project", meta.get("project_id")),
            ("agent", meta.get("agent_id")),
            ("persona", meta.get("persona")),
        )
        if value
    }
    units: dict[str, Decimal] = {}
    if meta.get("images_generated"):
        units["images"] = Decimal(int(meta["images_generated"]))
    if meta.get("audio_seconds"):
        units["audio_seconds"] = _decimal(meta["audio_seconds"], "audio_seconds")
    operation = str(row.get("operation_type") or "chat_completion")
    call = LLMCall(
        call_id=f"{CALL_PREFIX}{record_id}",
        provider=str(row.get("provider") or "unknown"),
        model=str(row.get("model") or "unknown"),
        operation=OPERATIONS.get(operation, operation),
        tenant=str(row.get("tenant_id") or tenant),
        actor=str(row["user_id"]) if row.get("user_id") else None,
        tags=tags,
    )
    metadata: dict[str, Any] = {
        "input_tokens": int(row.get("input_tokens") or 0),
        "output_tokens": int(row.get("output_tokens") or 0),
        "cache_read_tokens": int(row.get("cached_tokens") or 0),
        "price_source": "atlas import (cost as ATLAS recorded it)",
    }
    if units:
        metadata["units"] = units
    return call, cost, metadata, _moment(row.get("timestamp"))


# -- the import ----------------------------------------------------------------------------------


def import_atlas(
    services: BudgetServices,
    source: str | Path,
    *,
    config: str | Path | dict[str, Any] | None = None,
    tenant: str | None = None,
    actor: Actor | None = None,
    dry_run: bool = False,
    usage: bool = True,
) -> ImportReport:
    """Import ATLAS's budget policies, alert rules and usage history from ``source`` (its SQLite database).

    ``config`` is ATLAS's configuration (a file path or the parsed dict) for the policies and alert rules
    it declares (``BUDGET_POLICIES``, ``BUDGET_ALERTS``); a policy there overrides the stored one with the
    same id, as ATLAS itself did. Data without a tenant goes to ``tenant`` (default: the settings'
    tenant). ``actor`` must hold ``budget:admin``; it defaults to the system actor, who may write to every
    tenant an ATLAS ``tenant`` scope names. ``dry_run`` reports what would be imported and writes nothing.
    ``usage=False`` skips the usage history. Idempotent: run it again and it imports nothing new.
    """
    report = ImportReport(dry_run=dry_run)
    for what, path in (("database", source), ("configuration", config)):
        if isinstance(path, (str, Path)) and "\x00" in str(path):
            raise ValidationError(f"the ATLAS {what} path contains a NUL character; give the path of a real file")
    if tenant is not None:
        try:
            check_text(tenant, "tenant", MAX_TEXT, min_length=1)
        except ValueError as exc:
            raise ValidationError(f"--into-tenant: {exc}") from None
    tenant = tenant or (actor.tenant if actor else services.settings.tenant)
    acting = actor or Actor.system(tenant)
    services.policies.permissions.require(acting, "budget:admin", acting.tenant)
    atlas_config = load_atlas_config(config) if isinstance(config, (str, Path)) else dict(config or {})
    atlas = _open(source)
    try:
        policies = _import_policies(services, atlas, atlas_config, tenant, acting, report)
        _import_alerts(services, policies, atlas_config, acting, report)
        if usage:
            _import_usage(services, atlas, tenant, acting, report)
        _note_history(atlas, report)
    finally:
        atlas.conn.close()
    return report


def _actor_for(acting: Actor, tenant: str) -> Actor | None:
    """Who writes into ``tenant``: the system actor of that tenant, if the importing actor may."""
    if acting.is_system:
        return Actor.system(tenant)
    return acting if acting.tenant == tenant else None


def _import_policies(
    services: BudgetServices,
    atlas: _Atlas,
    config: dict[str, Any],
    tenant: str,
    acting: Actor,
    report: ImportReport,
) -> list[tuple[str, str]]:
    """Create the policies ATLAS had; returns (tenant, name) of every policy present afterwards."""
    raws: dict[str, tuple[dict[str, Any], bool]] = {}
    for row in atlas.rows(POLICY_TABLE):
        raws[str(row.get("id") or row.get("name"))] = (row, True)
    declared = _config_key(config, "budget_policies") or []
    if not isinstance(declared, list):
        report.not_mapped.append("ATLAS's BUDGET_POLICIES is not a list of policies")
        declared = []
    for entry in declared:
        if isinstance(entry, dict):  # config entries override stored ones with the same id, as in ATLAS
            raws[str(entry.get("id") or entry.get("name"))] = (entry, False)
    mapped: list[tuple[str, dict[str, Any]]] = []
    for raw, from_table in raws.values():
        label = str(raw.get("name") or raw.get("id"))
        try:
            mapped.append(_policy(raw, from_table, tenant, report))
        except ValueError as exc:
            report.not_mapped.append(f"policy {label!r}: {exc}")
    # Whole-tenant policies first: scoped ones are checked against their ceiling (global_ceiling).
    mapped.sort(key=lambda item: (bool(item[1]["scope"]), -item[1]["priority"], item[1]["name"]))
    present: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for policy_tenant, data in mapped:
        key = (policy_tenant, data["name"])
        if key in seen:
            report.not_mapped.append(
                f"policy {data['name']!r}: ATLAS has two policies of that name in {policy_tenant!r}"
            )
            continue
        seen.add(key)
        writer = _actor_for(acting, policy_tenant)
        if writer is None:
            report.not_mapped.append(
                f"policy {data['name']!r}: it belongs to tenant {policy_tenant!r}; import as the system actor to "
                "write to other tenants"
            )
            continue
        existing = services.policies.repository.by_name(policy_tenant, data["name"])
        if existing is not None:
            report.policies_existing.append(data["name"])
            present.append(key)
            if existing.limit != data["limit"] or existing.period != data["period"]:
                report.notes.append(
                    f"policy {data['name']!r} already exists here with limit {existing.limit} per {existing.period}"
                    f" (ATLAS: {data['limit']} per {data['period']}); it was left as it is"
                )
            continue
        try:
            if report.dry_run:
                Policy.model_validate(data)
            else:
                services.policies.create_policy(writer, data)
        except BudgetError as exc:
            report.not_mapped.append(f"policy {data['name']!r}: {exc}")
            continue
        except Exception as exc:  # pydantic's ValidationError of a dry run
            report.not_mapped.append(f"policy {data['name']!r}: {exc}"[:500])
            continue
        report.policies_imported.append(data["name"])
        present.append(key)
    return present


def _import_alerts(
    services: BudgetServices,
    policies: list[tuple[str, str]],
    config: dict[str, Any],
    acting: Actor,
    report: ImportReport,
) -> None:
    rules = _rules(config, report)
    if not rules or not policies:
        return
    installed = services.alerts.sinks.sink_names()
    deliverable: dict[str, str | None] = {}
    for sink in set(ATLAS_CHANNELS.values()) | set(installed):
        if sink not in installed:
            deliverable[sink] = f"the {sink} sink is not installed"
        else:
            deliverable[sink] = sink_problem(services.alerts.sinks, sink)
    warned: set[tuple[str, str]] = set()
    for policy_tenant, name in policies:
        writer = _actor_for(acting, policy_tenant)
        assert writer is not None  # only policies the importer may write reach here
        existing = {
            (c.kind, c.threshold): c for c in services.alerts.repository.configs(policy_tenant) if c.policy == name
        }
        for rule in rules:
            sinks = []
            for channel in rule["channels"]:
                sink = map_channels([channel])[0]
                problem = deliverable.get(sink, f"the {sink} sink is not installed")
                if problem:
                    if (channel, sink) not in warned:
                        warned.add((channel, sink))
                        report.notes.append(_channel_note(channel, sink, problem))
                    continue
                sinks.append(sink)
            sinks = list(dict.fromkeys(sinks)) or ["log"]
            found = existing.get((rule["kind"], rule["threshold"]))
            if found is not None:
                missing = [s for s in sinks if s not in found.sinks]
                if not missing:
                    report.alerts_existing += 1
                    continue
                # A channel that can deliver now (e.g. [sinks.apprise] was set since the last run) is added.
                if not report.dry_run:
                    services.alerts.configure_alert(
                        writer, {**found.model_dump(exclude={"snoozed_until"}), "sinks": [*found.sinks, *missing]}
                    )
                report.alerts_updated += 1
                continue
            data = {
                "policy": name,
                "tenant": policy_tenant,
                "threshold": rule["threshold"],
                "kind": rule["kind"],
                "severity": rule["severity"],
                "cooldown": rule["cooldown"],
                "sinks": sinks,
            }
            try:
                if report.dry_run:
                    AlertConfig.model_validate(data)
                else:
                    services.alerts.configure_alert(writer, data)
            except BudgetError as exc:
                report.not_mapped.append(f"alert on {name!r} at {rule['threshold']}%: {exc}")
                continue
            except Exception as exc:  # pydantic's ValidationError of a dry run
                report.not_mapped.append(f"alert on {name!r} at {rule['threshold']}%: {exc}"[:500])
                continue
            report.alerts_imported += 1
            existing[(rule["kind"], rule["threshold"])] = AlertConfig.model_validate(data)


def _channel_note(channel: str, sink: str, problem: str) -> str:
    """Why ATLAS's ``channel`` does not deliver yet, naming the setting that fixes it."""
    where = {
        "apprise": "add a mailto:// or slack:// URL to urls under [sinks.apprise] in the settings file "
        "(and pip install 'atlas-budget-plugin[apprise]')",
        "webhook": "set url under [sinks.webhook] in the settings file",
    }.get(sink, f"install and configure the {sink!r} sink")
    return (
        f"ATLAS alert channel {channel!r} maps to the {sink} sink, which cannot deliver: {problem}; {where}, then "
        "run the import again to add it. Until then those alerts go to the other channels, or the log sink"
    )


def _existing_calls(call_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(call_ids), 500):
        chunk = call_ids[start : start + 500]
        query: Any = UsageRow.select(UsageRow.call_id).where(UsageRow.call_id.in_(chunk)).tuples()
        found.update(call_id for (call_id,) in query)
    return found


def _batches(rows: Iterable[dict[str, Any]], size: int = 500) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _import_usage(services: BudgetServices, atlas: _Atlas, tenant: str, acting: Actor, report: ImportReport) -> None:
    problems: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    for batch in _batches(atlas.rows(USAGE_TABLE)):
        known = _existing_calls([f"{CALL_PREFIX}{str(r.get('id') or '').strip()}" for r in batch])
        for row in batch:
            label = str(row.get("id"))
            try:
                call, cost, metadata, moment = _call(row, tenant)
                if call.call_id in known:
                    report.usage_existing += 1
                    continue
                if _actor_for(acting, call.tenant) is None:
                    raise ValueError(f"it belongs to tenant {call.tenant!r}; import as the system actor")
                if not report.dry_run:
                    services.tracking.record_usage(call, cost, metadata, recorded_at=moment)
            except (ValueError, TypeError, BudgetError) as exc:
                reason = str(exc).split(" (call ")[0][:200]
                problems[reason] += 1
                examples.setdefault(reason, [])
                if len(examples[reason]) < EXAMPLES:
                    examples[reason].append(label)
                continue
            report.usage_imported += 1
            report.usage_cost += cost
    for reason, count in problems.items():
        report.not_mapped.append(f"{count} usage record(s), e.g. {', '.join(examples[reason])}: {reason}")


def _note_history(atlas: _Atlas, report: ImportReport) -> None:
    tables = atlas.tables
    if ALERT_TABLE in tables:
        (count,) = atlas.conn.execute(f'SELECT COUNT(*) FROM "{ALERT_TABLE}"').fetchone()
        if count:
            report.notes.append(
                f"{count} alert(s) ATLAS triggered ({ALERT_TABLE}) are its history and are not imported; alerts "
                "fire here again when spend crosses a threshold in the current window"
            )
    if ROLLOVER_TABLE in tables:
        report.notes.append(
            f"rollover amounts ATLAS kept ({ROLLOVER_TABLE}) are not imported: rollover here is computed from the "
            "imported usage of the previous window"
        )


# -- the command ---------------------------------------------------------------------------------


@click.command("import-atlas")
@click.argument("source")  # checked by import_atlas (click.Path would stat a NUL-containing path and crash)
@click.option("--atlas-config", "atlas_config", help="ATLAS's config.yaml (or .json).")
@click.option("--into-tenant", "into_tenant", default=None, help="Tenant for data without one (default: settings).")
@click.option("--no-usage", is_flag=True, help="Import policies and alerts only, not the usage history.")
@click.option("--dry-run", is_flag=True, help="Report what would be imported; write nothing.")
@click.pass_context
def import_atlas_command(
    ctx: click.Context, source: str, atlas_config: str | None, into_tenant: str | None, no_usage: bool, dry_run: bool
) -> None:
    """Import an ATLAS installation's budgets: policies, alert rules and usage history from SOURCE (its SQLite
    database). Safe to run again: it imports only what is not here yet."""
    session = ctx.obj
    if session is None:  # run on its own, outside `atlas-budget`
        from .bootstrap import bootstrap

        services, actor = bootstrap(), None
        ctx.call_on_close(services.close)
    else:
        services, actor = session.services, session.actor
    result = import_atlas(
        services, source, config=atlas_config, tenant=into_tenant, actor=actor, dry_run=dry_run, usage=not no_usage
    )
    for line in result.lines():
        click.echo(line)
