"""Policy rows <-> Policy objects, and the audit trail; every query is scoped to one tenant."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import peewee as pw

from ..hierarchy import Hierarchy, Node, node_text, parse_node
from ..money import from_units, to_units
from ..types import CALL_DIMENSIONS, MAX_ID, Policy, Scope
from .database import is_sqlite, write_transaction
from .ledger import aware, naive
from .models import AuditEntry, Hold, Meta, PolicyRow, ScopeLink, SpendCounter, ThresholdMark


def to_policy(row: PolicyRow) -> Policy:
    return Policy(
        id=row.id,
        name=row.name,
        tenant=row.tenant,
        scope=Scope(**json.loads(row.scope_json)),
        period=row.period,
        timezone=row.timezone,
        limit=from_units(row.limit_units),
        currency=row.currency,
        enforcement=row.enforcement,
        thresholds=json.loads(row.thresholds_json),
        rollover_cap=from_units(row.rollover_cap_units),
        alternatives=json.loads(row.alternatives_json),
        enabled=row.enabled,
        priority=row.priority,
        **json.loads(row.options_json or "{}"),
        version=row.version,
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
    )


def _columns(policy: Policy) -> dict[str, Any]:
    return {
        "tenant": policy.tenant,
        "name": policy.name,
        "scope_json": json.dumps(policy.scope.as_dict(), sort_keys=True),
        "scope_key": policy.scope.key(),
        "period": policy.period,
        "timezone": policy.timezone,
        "limit_units": to_units(policy.limit),
        "currency": policy.currency,
        "enforcement": policy.enforcement,
        "thresholds_json": json.dumps(policy.thresholds),
        "rollover_cap_units": to_units(policy.rollover_cap),
        "alternatives_json": json.dumps(policy.alternatives),
        "enabled": policy.enabled,
        "priority": policy.priority,
        "options_json": json.dumps(
            {k: v for k, v in policy.model_dump(mode="json", include=set(OPTIONS)).items() if v != OPTIONS[k]},
            sort_keys=True,
        ),
    }


#: Policy settings kept in ``options_json``, with their defaults (a default is not stored).
OPTIONS: dict[str, Any] = {
    "provider_limits": {},
    "model_limits": {},
    "throttle_after": 80,
    "calls_per_minute": None,
    "spend_per_minute": None,
}


@dataclass(frozen=True)
class PolicyIndex:
    """Policies by the first column their scope sets (``general`` when it sets none), with their position."""

    general: list[tuple[int, Policy]]
    by_column: dict[tuple[str, str], list[tuple[int, Policy]]]

    @classmethod
    def of(cls, policies: list[Policy]) -> PolicyIndex:
        general: list[tuple[int, Policy]] = []
        by_column: dict[tuple[str, str], list[tuple[int, Policy]]] = {}
        for position, policy in enumerate(policies):
            column = next((c for c in CALL_DIMENSIONS if getattr(policy.scope, c) is not None), None)
            if column is None:
                general.append((position, policy))
            else:
                by_column.setdefault((column, getattr(policy.scope, column)), []).append((position, policy))
        return cls(general, by_column)

    def candidates(self, values: dict[str, str | None]) -> list[Policy]:
        found = list(self.general)
        for column in CALL_DIMENSIONS:
            value = values.get(column)
            if value is not None:
                found.extend(self.by_column.get((column, value), ()))
        found.sort(key=lambda pair: pair[0])
        return [policy for _, policy in found]


def policy_json(policy: Policy | None) -> str | None:
    return None if policy is None else policy.model_dump_json()


class PolicyRepository:
    """Stores policies and their audit trail.

    Every LLM call needs its tenant's policies, so they are cached per process and
    reloaded when the ``policy_generation`` counter, bumped in the same
    transaction as any policy change by any process, has moved.
    """

    def __init__(self, db: pw.Database) -> None:
        self.db = db
        self._cache: dict[tuple[str, bool], tuple[int, list[Policy]]] = {}
        self._links: dict[str, tuple[int, float, Hierarchy]] = {}
        self._indexes: dict[str, tuple[list[Policy], PolicyIndex]] = {}
        self._checked: dict[tuple[str, bool], float] = {}
        self._generation_sql = "SELECT value FROM budget_meta WHERE name = " + ("?" if is_sqlite(db) else "%s")

    def generation(self) -> int:
        row = self.db.execute_sql(self._generation_sql, ("policy_generation",)).fetchone()
        return int(row[0]) if row else 0

    def _bump(self) -> None:
        Meta.update(value=Meta.value + 1).where(Meta.name == "policy_generation").execute()
        self.forget()

    def generation_of(self, tenant: str, policies: list[Policy]) -> int | None:
        """The policy generation under which ``policies`` (a list :meth:`enabled` returned) was loaded, or None
        when the cache has moved on from that list since."""
        cached = self._cache.get((tenant, True))
        return cached[0] if cached is not None and cached[1] is policies else None

    def forget(self) -> None:
        """Drop what this process cached: it sees its own changes at once. Called after a write too, since
        checks inside the writing transaction may have cached the state before it under the new generation,
        and when a server routine finds the cached policies stale (the next read asks the store)."""
        self._cache.clear()
        self._links.clear()

    # -- scope hierarchy (links change the same generation as policies: both decide what a call counts in) --

    def links(self, tenant: str, max_age: float = 0.0) -> Hierarchy:
        """The tenant's scope links (from the cache while nothing changed)."""
        cached = self._links.get(tenant)
        if cached and max_age > 0 and time.monotonic() - cached[1] < max_age:
            return cached[2]
        generation = self.generation()
        if cached and cached[0] == generation:
            self._links[tenant] = (generation, time.monotonic(), cached[2])
            return cached[2]
        hierarchy = self._stored_links(tenant)
        self._links[tenant] = (generation, time.monotonic(), hierarchy)
        return hierarchy

    @staticmethod
    def _stored_links(tenant: str) -> Hierarchy:
        query = ScopeLink.select(ScopeLink.child, ScopeLink.parent).where(ScopeLink.tenant == tenant)
        rows: list[tuple[str, str]] = [(row.child, row.parent) for row in query]
        return Hierarchy.of((parse_node(child), parse_node(parent)) for child, parent in rows)

    def add_link(self, tenant: str, child: Node, parent: Node, actor: str, now: datetime) -> bool:
        """Store ``child`` -> ``parent`` (checked against the stored links in the same transaction)."""
        with write_transaction(self.db):
            self._bump()  # first: the generation row's lock makes concurrent policy writers take turns
            current = self._stored_links(tenant)
            if parent in current.parents.get(child, ()):
                return False
            current.check_link(child, parent)
            ScopeLink.create(tenant=tenant, child=node_text(child), parent=node_text(parent), created_at=naive(now))
            self._audit_link(tenant, actor, "link", child, parent, now)
            self.forget()
            return True

    def remove_link(self, tenant: str, child: Node, parent: Node, actor: str, now: datetime) -> bool:
        with write_transaction(self.db):
            self._bump()  # first: the generation row's lock makes concurrent policy writers take turns
            removed = (
                ScopeLink.delete()
                .where(
                    (ScopeLink.tenant == tenant)
                    & (ScopeLink.child == node_text(child))
                    & (ScopeLink.parent == node_text(parent))
                )
                .execute()
            )
            if removed:
                self._audit_link(tenant, actor, "unlink", child, parent, now)
            self.forget()
            return bool(removed)

    def _audit_link(self, tenant: str, actor: str, action: str, child: Node, parent: Node, now: datetime) -> None:
        AuditEntry.create(
            tenant=tenant,
            actor=actor,
            action=action,
            object_type="scope_link",
            object_id=f"{node_text(child)} -> {node_text(parent)}"[:200],
            before_json=None,
            after_json=json.dumps({"child": node_text(child), "parent": node_text(parent)}),
            at=naive(now),
        )

    def get(self, tenant: str, policy_id: int) -> Policy | None:
        if not 1 <= policy_id <= MAX_ID:  # no such row can exist, and the driver would overflow on it
            return None
        row = PolicyRow.get_or_none((PolicyRow.tenant == tenant) & (PolicyRow.id == policy_id))
        return to_policy(row) if row else None

    def by_name(self, tenant: str, name: str) -> Policy | None:
        row = PolicyRow.get_or_none((PolicyRow.tenant == tenant) & (PolicyRow.name == name))
        return to_policy(row) if row else None

    def all(self, tenant: str, enabled_only: bool = False, max_age: float = 0.0) -> list[Policy]:
        """The tenant's policies, highest priority first (from the cache while no policy changed).

        ``max_age`` > 0 trusts a cache younger than that many seconds without asking
        the store (for bookkeeping after a call; enforcement always asks).
        """
        return list(self._current(tenant, enabled_only, max_age))

    def _current(self, tenant: str, enabled_only: bool, max_age: float) -> list[Policy]:
        """The cached list itself (not a copy), refreshed when the store's generation moved."""
        key = (tenant, enabled_only)
        cached = self._cache.get(key)
        if cached and max_age > 0 and time.monotonic() - self._checked.get(key, 0) < max_age:
            return cached[1]
        generation = self.generation()
        self._checked[key] = time.monotonic()
        if cached and cached[0] == generation:
            return cached[1]
        query = PolicyRow.select().where(PolicyRow.tenant == tenant)
        if enabled_only:
            query = query.where(PolicyRow.enabled == True)  # noqa: E712 - peewee expression
        policies = [to_policy(r) for r in query.order_by(PolicyRow.priority.desc(), PolicyRow.id)]
        self._cache[key] = (generation, policies)
        return policies

    def candidates(self, tenant: str, values: dict[str, str | None], max_age: float = 0.0) -> list[Policy]:
        """Enabled policies that could cover a call with these column ``values`` (actor, model, ...), in order.

        A policy whose scope sets a column can only cover calls with that exact value, so
        policies are indexed by one column of their scope: a tenant with a policy per user
        checks the user's own policy, not all of them.
        """
        return self.enabled(tenant, max_age)[1].candidates(values)

    def enabled(self, tenant: str, max_age: float = 0.0) -> tuple[list[Policy], PolicyIndex]:
        """The tenant's enabled policies and their index, as cached: the same list object while no policy
        changed (callers key their own caches on it, and must not change it)."""
        policies = self._current(tenant, True, max_age)  # refreshed when a policy changed
        indexed = self._indexes.get(tenant)
        if indexed is None or indexed[0] is not policies:
            indexed = (policies, PolicyIndex.of(policies))
            self._indexes[tenant] = indexed
        return indexed

    def conflicting(self, policy: Policy) -> Policy | None:
        """Another policy of the tenant with the same name, or the same scope and period."""
        query = PolicyRow.select().where(
            (PolicyRow.tenant == policy.tenant)
            & (
                (PolicyRow.name == policy.name)
                | ((PolicyRow.scope_key == policy.scope.key()) & (PolicyRow.period == policy.period))
            )
        )
        if policy.id is not None:
            query = query.where(PolicyRow.id != policy.id)
        row = query.first()
        return to_policy(row) if row else None

    def _audit(self, actor: str, action: str, before: Policy | None, after: Policy | None, now: datetime) -> None:
        subject = after or before
        assert subject is not None
        AuditEntry.create(
            tenant=subject.tenant,
            actor=actor,
            action=action,
            object_type="policy",
            object_id=str(subject.id),
            before_json=policy_json(before),
            after_json=policy_json(after),
            at=naive(now),
        )

    def add(self, policy: Policy, actor: str, now: datetime, check: Callable[[], None] = lambda: None) -> Policy:
        """Insert ``policy``; ``check`` runs first in the same transaction (and may raise)."""
        with write_transaction(self.db):
            self._bump()  # first: the generation row's lock makes concurrent policy writers take turns
            check()
            row_id = PolicyRow.insert(
                **_columns(policy), version=1, created_at=naive(now), updated_at=naive(now)
            ).execute()
            stored = to_policy(PolicyRow.get_by_id(row_id))
            self._audit(actor, "create", None, stored, now)
            self.forget()
            return stored

    def replace(
        self, before: Policy, after: Policy, actor: str, now: datetime, check: Callable[[], None] = lambda: None
    ) -> Policy | None:
        """Write ``after`` if the stored version is still ``before.version``; None when it changed."""
        with write_transaction(self.db):
            self._bump()  # first: the generation row's lock makes concurrent policy writers take turns
            check()
            changed = (
                PolicyRow.update(**_columns(after), version=before.version + 1, updated_at=naive(now))
                .where(
                    (PolicyRow.id == before.id)
                    & (PolicyRow.tenant == before.tenant)
                    & (PolicyRow.version == before.version)
                )
                .execute()
            )
            if not changed:
                return None
            stored = to_policy(PolicyRow.get_by_id(before.id))
            self._audit(actor, "update", before, stored, now)
            self.forget()
            return stored

    def remove(self, policy: Policy, actor: str, now: datetime) -> None:
        with write_transaction(self.db):
            self._bump()  # first: the generation row's lock makes concurrent policy writers take turns
            PolicyRow.delete().where(PolicyRow.id == policy.id).execute()
            SpendCounter.delete().where(SpendCounter.policy_id == policy.id).execute()
            Hold.delete().where(Hold.policy_id == policy.id).execute()
            ThresholdMark.delete().where(ThresholdMark.policy_id == policy.id).execute()
            self._audit(actor, "delete", policy, None, now)
            self.forget()

    def audit_trail(self, tenant: str, limit: int = 100) -> list[dict[str, Any]]:
        query = AuditEntry.select().where(AuditEntry.tenant == tenant).order_by(AuditEntry.id.desc()).limit(limit)
        return [
            {
                "at": aware(e.at),
                "actor": e.actor,
                "action": e.action,
                "object_type": e.object_type,
                "object_id": e.object_id,
                "before": json.loads(e.before_json) if e.before_json else None,
                "after": json.loads(e.after_json) if e.after_json else None,
            }
            for e in query
        ]
