"""BudgetPolicyService: policy CRUD with permissions and audit, and the pre-flight check-and-reserve."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields, replace
from datetime import datetime, timedelta
from decimal import Decimal
from math import ceil, inf
from operator import attrgetter
from typing import Any

import peewee as pw
import pydantic

from hookspecs import LLMCall

from .bus import MessageBus, maker
from .exceptions import ConflictError, NotFoundError, UnknownPriceError, ValidationError
from .hierarchy import Attribution, Hierarchy, covers, node_text, parse_node
from .money import from_units, parse_money, to_units
from .periods import bucket_hour
from .permissions import BudgetPermissionChecker
from .pricing import DEFAULT_PRICE, UNPRICED, Pricer
from .settings import BudgetSettings, PolicySpec, ScopeLinkSpec
from .store import Ledger, Rate, Reservation, Standing, StoreRangeError, Target, target_for
from .store.repository import PolicyRepository
from .types import (
    CALL_DIMENSIONS,
    MAX_TEXT,
    Actor,
    BudgetDecision,
    BudgetLimitEvent,
    BudgetPolicyEvent,
    Enforcement,
    Policy,
    PolicyStanding,
    Scope,
    check_call,
    check_text,
    is_store_id,
    policy_filters,
    scope_arg,
    utcnow,
)

Clock = Callable[[], datetime]

#: Tag a call carries to pass a ``soft_block`` policy: the policy's name, or ``*`` for all.
OVERRIDE_TAG = "budget_override"

#: Policy fields that decide which calls and which window a counter counts: changing one rebuilds them.
_COUNTED_FIELDS = ("scope", "period", "timezone", "enabled", "tenant", "provider_limits", "model_limits")


_new_standing = maker(PolicyStanding)

#: Every field of a call but its id and tags, as one tuple (read in C).
_shape_of = attrgetter(*(f.name for f in fields(LLMCall) if f.name not in ("call_id", "tags")))
#: Shapes of calls (all values but the id) that passed :func:`check_call`.
_good_shapes: dict[tuple[Any, ...], None] = {}
#: (call id, shape) of calls that passed :func:`check_call` before the call and have not been recorded yet.
_passed: dict[tuple[Any, ...], None] = {}


def _shape(call: LLMCall) -> tuple[Any, ...] | None:
    """The values :func:`check_call` looks at besides the call id, or None when they cannot be a key."""
    try:
        shape = (_shape_of(call), *call.tags.items())
        hash(shape)
    except TypeError:
        return None
    return shape


def _forget_when_full(memo: dict[tuple[Any, ...], None]) -> None:
    if len(memo) >= 10_000:  # many call shapes, or calls never recorded (their host died): check them anew
        memo.clear()


def unstorable(call: LLMCall) -> str | None:
    """Why the store could not record ``call``, or None: checked before any money is spent on it.

    :func:`check_call` checks each field on its own, so a call whose other fields are those of a call
    that passed needs only its id checked (any failure is reported by the full check, as always).
    """
    shape = _shape(call)
    if shape is None or shape not in _good_shapes or not _good_id(call.call_id):
        try:
            check_call(call)
        except ValidationError as exc:
            return str(exc)
        if shape is None:
            return None
        _forget_when_full(_good_shapes)
        _good_shapes[shape] = None
    _forget_when_full(_passed)
    _passed[(call.call_id, shape)] = None
    return None


def _good_id(call_id: str) -> bool:
    """``call_id`` passes check_call's test of the call id."""
    try:
        check_text(call_id, "LLMCall.call_id", MAX_TEXT, min_length=1)
    except ValueError:
        return False
    return True


def check_recorded_call(call: LLMCall) -> None:
    """:func:`check_call` for a call being recorded: a call with exactly these values already passed it in
    :func:`unstorable` (the check depends on nothing but the values), so it is not run twice."""
    shape = _shape(call)
    if shape is None or _passed.pop((call.call_id, shape), False) is False:
        check_call(call)


class _Plan:
    """The policies covering one shape of call (tenant, columns, tags), and their targets for one span of time.

    Built from the policy list and scope links current when it was made; the service drops it when either
    changes. Targets are reused while ``now`` stays inside the span in which every one of them is the same.
    """

    __slots__ = ("_service", "_span", "by_id", "policies", "source", "throttles")

    def __init__(self, policies: list[Policy], service: BudgetPolicyService, source: list[Policy]) -> None:
        self.policies = policies
        self.source = source  # the tenant's enabled policies, as cached, that this plan was matched from
        self.by_id: dict[int | None, Policy] = {p.id: p for p in policies}
        self.throttles = any(service.enforcement(p) == "throttle" for p in policies)
        self._service = service
        self._span: tuple[datetime, datetime, list[Target]] | None = None

    def targets(self, call: LLMCall, now: datetime) -> list[Target]:
        """Each policy's own target and those of the sub-limits ``call`` falls under, at ``now``. Not to be changed."""
        span = self._span
        if span is not None and span[0] <= now < span[1]:
            return span[2]
        service = self._service
        start, end, found = None, None, []
        for policy in self.policies:
            valid_from, valid_until, _ = service._target_span(policy, now)
            start = valid_from if start is None or valid_from > start else start
            end = valid_until if end is None or valid_until < end else end
            found.extend(service.targets_of(policy, call, now))
        if start is not None and end is not None:
            self._span = (start, end, found)
        return found


class BudgetPolicyService:
    """Owns policies and the decision whether a call may go ahead."""

    def __init__(
        self,
        repository: PolicyRepository,
        ledger: Ledger,
        pricer: Pricer,
        bus: MessageBus,
        settings: BudgetSettings,
        permissions: BudgetPermissionChecker | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.repository = repository
        self.ledger = ledger
        self.pricer = pricer
        self.bus = bus
        self.settings = settings
        self.permissions = permissions or BudgetPermissionChecker()
        self.clock = clock
        self._targets: dict[tuple[int | None, int], tuple[datetime, datetime, Target]] = {}
        self._plans: dict[tuple[Any, ...], tuple[list[Policy], Hierarchy, _Plan]] = {}

    # -- CRUD -------------------------------------------------------------------------------

    def _validated(self, data: dict[str, Any]) -> Policy:
        try:
            return Policy.model_validate(data)
        except pydantic.ValidationError as exc:
            raise ValidationError.from_pydantic(exc, "policy") from None

    def _check_conflict(self, policy: Policy) -> None:
        other = self.repository.conflicting(policy)
        if other is None:
            return
        if other.name == policy.name:
            raise ConflictError(f"a policy named {policy.name!r} already exists in tenant {policy.tenant!r}")
        raise ConflictError(
            f"policy {other.name!r} already limits scope {{{policy.scope.key() or 'whole tenant'}}} "
            f"per {policy.period}; update it instead of adding a second one"
        )

    def _check_ceiling(self, policy: Policy) -> None:
        """The global ceiling: no scoped limit above the whole-tenant limit of the same period, nor all
        scoped limits of one level (the same scope keys, e.g. every per-actor policy) above it combined."""
        if not self.settings.global_ceiling or not policy.enabled:
            return
        peers = [
            p
            for p in self.repository.all(policy.tenant)
            if p.id != policy.id and p.enabled and p.period == policy.period
        ]
        whole = [p for p in peers if not p.scope.as_dict()]
        if not policy.scope.as_dict():
            whole, peers = [policy], [p for p in peers if p.scope.as_dict()]
            scoped = peers
        else:
            scoped = [policy, *(p for p in peers if p.scope.as_dict())]
        if not whole:
            return
        ceiling = whole[0]
        hint = "raise the whole-tenant limit, lower the scoped one, or set global_ceiling = false"
        levels: dict[frozenset[str], list[Policy]] = {}
        for each in scoped:
            if each.limit > ceiling.limit:
                raise ValidationError(
                    f"policy {each.name!r} limits {each.scope.key()} to {each.limit} per {each.period}, more than the "
                    f"whole-tenant policy {ceiling.name!r} allows ({ceiling.limit}); {hint}"
                )
            levels.setdefault(frozenset(each.scope.as_dict()), []).append(each)
        for level in levels.values():
            total = sum((p.limit for p in level), Decimal(0))
            if total > ceiling.limit:
                names = ", ".join(repr(p.name) for p in level)
                raise ValidationError(
                    f"the {', '.join(sorted(level[0].scope.as_dict()))} policies {names} together limit {total} per "
                    f"{ceiling.period}, more than the whole-tenant policy {ceiling.name!r} allows ({ceiling.limit}); "
                    f"{hint}"
                )

    def _check_fits(self, policy: Policy) -> None:
        """Run in the writing transaction: no duplicate, and within the global ceiling."""
        self._check_conflict(policy)
        self._check_ceiling(policy)

    def _require_for_scope(self, actor: Actor, *policies: Policy) -> None:
        """A whole-tenant policy is the tenant's ceiling: only ``budget:admin`` sets it."""
        if any(not p.scope.as_dict() for p in policies):
            self.permissions.require(actor, "budget:admin")

    @staticmethod
    def _write(write: Callable[[], Policy | None]) -> Policy | None:
        try:
            return write()
        except pw.IntegrityError as exc:  # a concurrent writer won the race on the unique name
            raise ConflictError(f"the policy conflicts with one stored concurrently: {exc}") from None

    def _publish(self, topic: str, policy: Policy, actor: Actor) -> None:
        self.bus.publish(BudgetPolicyEvent(topic=topic, tenant=policy.tenant, policy=policy, actor=actor.id))

    def create_policy(self, actor: Actor, policy: Policy | dict[str, Any]) -> Policy:
        """Create a policy in the actor's tenant (needs ``budget:write``)."""
        data = policy.model_dump(exclude_unset=True) if isinstance(policy, Policy) else dict(policy)
        data.setdefault("tenant", actor.tenant)
        data.pop("id", None)
        data.pop("version", None)
        self.permissions.require(actor, "budget:write", data["tenant"])
        candidate = self._validated(data)
        self._require_for_scope(actor, candidate)
        stored = self._write(
            lambda: self.repository.add(candidate, actor.id, self.clock(), lambda: self._check_fits(candidate))
        )
        assert stored is not None
        self._rebuild_counters(stored)
        self._publish("budget.policy_created", stored, actor)
        return stored

    def _rebuild_counters(self, policy: Policy) -> None:
        """Start the policy's counters from the spend already recorded in its scope and window."""
        parts = [f"provider:{p}" for p in policy.provider_limits] + [f"model:{m}" for m in policy.model_limits]
        self.ledger.reset_policy(
            policy.id or 0, lambda moment, part: self.part_target(policy, moment, part), self.clock(), parts
        )

    def get_policy(self, actor: Actor, policy_id: int) -> Policy:
        """A policy of the actor's tenant (needs ``budget:read``); other tenants' are not found."""
        self.permissions.require(actor, "budget:read")
        # An id the store cannot hold (negative, >= 2**63) cannot exist: not found, before any query.
        policy = self.repository.get(actor.tenant, policy_id) if is_store_id(policy_id, "policy_id") else None
        if policy is None:
            raise NotFoundError(f"no policy with id {str(policy_id)[:30]} in tenant {actor.tenant!r}")
        return policy

    def list_policies(
        self, actor: Actor, scope: Scope | dict[str, Any] | None = None, filters: dict[str, Any] | None = None
    ) -> list[Policy]:
        """Policies of the actor's tenant whose scope includes ``scope``'s keys, then ``filters``."""
        self.permissions.require(actor, "budget:read")
        wanted = scope_arg(scope)
        checked = policy_filters(filters)
        result = []
        for policy in self.repository.all(actor.tenant):
            if not policy.scope.has(wanted):
                continue
            if any(getattr(policy, k) != v for k, v in checked.items()):
                continue
            result.append(policy)
        return result

    def update_policy(
        self, actor: Actor, policy_id: int, updates: dict[str, Any], expected_version: int | None = None
    ) -> Policy:
        """Apply a partial update; ``expected_version`` (or ``updates['version']``) guards lost updates."""
        self.permissions.require(actor, "budget:write")
        before = self.get_policy(actor, policy_id)
        updates = dict(updates)
        expected = updates.pop("version", expected_version)
        for fixed in ("id", "tenant", "created_at", "updated_at"):
            if fixed in updates:
                raise ValidationError(f"policy field {fixed!r} cannot be changed")
        if expected is not None and expected != before.version:
            raise ConflictError(
                f"policy {before.name!r} is at version {before.version}, not {expected}; reload it and retry"
            )
        after = self._validated({**before.model_dump(), **updates})
        self._require_for_scope(actor, before, after)
        stored = self._write(
            lambda: self.repository.replace(before, after, actor.id, self.clock(), lambda: self._check_fits(after))
        )
        if stored is None:
            raise ConflictError(f"policy {before.name!r} was changed by someone else; reload it and retry")
        if any(getattr(before, f) != getattr(stored, f) for f in _COUNTED_FIELDS):
            self._rebuild_counters(stored)
        self.bus.publish(BudgetPolicyEvent.updated(before, stored, actor.id))
        return stored

    def delete_policy(self, actor: Actor, policy_id: int) -> None:
        self.permissions.require(actor, "budget:write")
        policy = self.get_policy(actor, policy_id)
        self.repository.remove(policy, actor.id, self.clock())
        self._publish("budget.policy_deleted", policy, actor)

    def audit_trail(self, actor: Actor, limit: int = 100) -> list[dict[str, Any]]:
        """Who changed which policy when, before and after (needs ``budget:admin``)."""
        self.permissions.require(actor, "budget:admin")
        return self.repository.audit_trail(actor.tenant, limit)

    def apply_declared(self, specs: Iterable[PolicySpec]) -> list[Policy]:
        """Create or update the policies declared in settings, matched by tenant and name.

        Several processes may start at once with the same file: a conflict means
        another one applied it first, so the spec is re-read and applied again.
        """
        applied = []
        for spec in specs:
            for attempt in range(3):
                try:
                    applied.append(self._apply_one(spec))
                    break
                except ConflictError:
                    if attempt == 2:
                        raise
        return applied

    def _apply_one(self, spec: PolicySpec) -> Policy:
        actor = Actor.system(spec.tenant)
        data = spec.model_dump(exclude={"id", "version", "created_at", "updated_at"})
        existing = self.repository.by_name(spec.tenant, spec.name)
        if existing is None:
            return self.create_policy(actor, data)
        current = existing.model_dump(exclude={"id", "version", "created_at", "updated_at"})
        changes = {k: v for k, v in data.items() if current.get(k) != v}
        if not changes:
            return existing
        return self.update_policy(actor, existing.id or 0, {**changes, "version": existing.version})

    # -- enforcement ------------------------------------------------------------------------

    def enforcement(self, policy: Policy) -> Enforcement:
        return policy.enforcement or self.settings.default_enforcement

    def target(self, policy: Policy, now: datetime) -> Target:
        """The policy's window and limit at ``now`` (reused while neither the policy nor the window changes)."""
        return self._target_span(policy, now)[2]

    def _target_span(self, policy: Policy, now: datetime) -> tuple[datetime, datetime, Target]:
        """(from, until, target): the policy's target at ``now``, the same at every moment in [from, until)."""
        key = (policy.id, policy.version)
        hit = self._targets.get(key)
        if hit is not None and hit[0] <= now < hit[1]:
            return hit
        target = target_for(policy, now)
        valid_from = bucket_hour(now) if target.period.is_rolling else target.window_start
        valid_until = valid_from + timedelta(hours=1) if target.period.is_rolling else target.window_end
        if len(self._targets) > 10_000:
            self._targets.clear()
        span = (valid_from, valid_until, target)
        self._targets[key] = span
        return span

    def standings(
        self, actor: Actor, policy_ids: Iterable[int] | None = None, now: datetime | None = None
    ) -> list[PolicyStanding]:
        """Spent, reserved and the effective limit (with rollover) of the actor's policies in their current
        window, as enforcement sees them (``budget:read``); all the tenant's policies when ``policy_ids`` is None.
        An id of another tenant is not found."""
        self.permissions.require(actor, "budget:read")
        moment = now or self.clock()
        if policy_ids is None:
            policies = self.repository.all(actor.tenant)
        else:
            policies = [self.get_policy(actor, policy_id) for policy_id in policy_ids]
        if not policies:
            return []
        found = self.ledger.standings([self.target(p, moment) for p in policies])
        return [self._standing(p, s, 0) for p, s in zip(policies, found, strict=True)]

    def matching(self, call: LLMCall, max_age: float = 0.0) -> list[Policy]:
        """Enabled policies of the call's tenant whose scope covers the call, directly or through an ancestor."""
        return list(self._plan(call, max_age).policies)

    def _plan(self, call: LLMCall, max_age: float = 0.0) -> _Plan:
        """The policies covering calls shaped like ``call`` (same tenant, columns and tags).

        Asks the store whether a policy changed exactly as before (the cached policy list and scope links
        are the ones the store's generation says are current); the matching itself is done once per call
        shape and reused while neither that list nor the links change.
        """
        enabled, index = self.repository.enabled(call.tenant, max_age=max_age)
        hierarchy = self.repository.links(call.tenant, max_age=1.0)
        key: tuple[Any, ...] | None
        try:
            key = (call.tenant, call.actor, call.provider, call.model, call.operation, call.category)
            if call.tags:
                key += tuple(call.tags.items())
            hit = self._plans.get(key)
        except TypeError:  # a value that cannot be a key (the store refuses such a call anyway): match afresh
            key, hit = None, None
        if hit is not None and hit[0] is enabled and hit[1] is hierarchy:
            return hit[2]
        values = {column: getattr(call, column) for column in CALL_DIMENSIONS}
        attributed = hierarchy.attribution(call)
        plan = _Plan([p for p in index.candidates(values) if covers(p.scope, call, attributed)], self, enabled)
        if key is not None:
            if len(self._plans) >= 4096:
                self._plans.clear()
            self._plans[key] = (enabled, hierarchy, plan)
        return plan

    def attribution(self, call: LLMCall) -> Attribution:
        """Tag values ``call`` belongs to through the scope hierarchy (links may be a second stale elsewhere)."""
        return self.repository.links(call.tenant, max_age=1.0).attribution(call)

    # -- scope hierarchy ----------------------------------------------------------------------

    def link_scope(self, actor: Actor, child: str, parent: str) -> bool:
        """Declare that ``child`` (e.g. ``actor=alice``) belongs to ``parent`` (e.g. ``team=red``); needs
        ``budget:admin``. Calls recorded from now on count in the parent's policies and reports too.
        Several parents are allowed; a link that would close a cycle is refused. False when it existed."""
        self.permissions.require(actor, "budget:admin")
        nodes = parse_node(child, "child"), parse_node(parent, "parent")
        return self.repository.add_link(actor.tenant, *nodes, actor.id, self.clock())

    def unlink_scope(self, actor: Actor, child: str, parent: str) -> bool:
        """Remove a link (``budget:admin``); False when there was none."""
        self.permissions.require(actor, "budget:admin")
        nodes = parse_node(child, "child"), parse_node(parent, "parent")
        return self.repository.remove_link(actor.tenant, *nodes, actor.id, self.clock())

    def scope_links(self, actor: Actor) -> list[tuple[str, str]]:
        """Every (child, parent) link of the actor's tenant."""
        self.permissions.require(actor, "budget:read")
        hierarchy = self.repository.links(actor.tenant)
        return sorted((node_text(c), node_text(p)) for c, ps in hierarchy.parents.items() for p in ps)

    def ancestors(self, actor: Actor, value: str) -> list[str]:
        """Every value ``value`` belongs to, directly or not."""
        self.permissions.require(actor, "budget:read")
        return sorted(node_text(n) for n in self.repository.links(actor.tenant).ancestors(parse_node(value)))

    def descendants(self, actor: Actor, value: str) -> list[str]:
        """Every value that belongs to ``value``, directly or not."""
        self.permissions.require(actor, "budget:read")
        return sorted(node_text(n) for n in self.repository.links(actor.tenant).descendants(parse_node(value)))

    def lineage(self, actor: Actor, value: str) -> list[list[str]]:
        """Each path from ``value`` up to a value that belongs to nothing, shortest first."""
        self.permissions.require(actor, "budget:read")
        paths = self.repository.links(actor.tenant).lineage(parse_node(value))
        return [[node_text(n) for n in path] for path in paths]

    def apply_declared_links(self, links: Iterable[ScopeLinkSpec]) -> None:
        """Create the links declared in settings (idempotent; a cycle is a settings error)."""
        for link in links:
            self.link_scope(Actor.system(link.tenant), link.child, link.parent)

    def part_target(self, policy: Policy, now: datetime, part: str = "") -> Target | None:
        """The target of one part of a policy: '' its own limit, ``provider:<p>`` or ``model:<m>`` a sub-limit
        (None when the policy has no such sub-limit). A sub-limit shares the policy's window and counts the
        calls of the policy's scope narrowed to that provider or model."""
        main = self.target(policy, now)
        if not part:
            return main
        kind, _, value = part.partition(":")
        limits = {"provider": policy.provider_limits, "model": policy.model_limits}.get(kind, {})
        amount = limits.get(value)
        if amount is None:
            return None
        scope = policy.scope.model_copy(update={kind: value})
        return replace(main, part=part, limit_units=to_units(amount), rollover_cap_units=0, scope=scope)

    def targets_of(self, policy: Policy, call: LLMCall, now: datetime) -> list[Target]:
        """The policy's own target and those of the sub-limits that ``call`` falls under."""
        found = [self.target(policy, now)]
        if policy.provider_limits or policy.model_limits:
            for part in (f"provider:{call.provider}", f"model:{call.model}"):
                sub = self.part_target(policy, now, part)
                if sub is not None:
                    found.append(sub)
        return found

    def targets_for(self, call: LLMCall, now: datetime | None = None) -> list[Target]:
        """Targets for charging a finished call to the window of ``now`` (when it was admitted)."""
        now = now or self.clock()
        # Asks the store whether any policy changed (one small read): a policy created a moment ago
        # in another process must count this call, or its counter would miss it.
        return list(self._plan(call).targets(call, now))

    def matched(
        self, call: LLMCall, now: datetime, *, empty_is_final: bool = True, trust_cache: bool = True
    ) -> tuple[_Plan, int | None]:
        """The plan for ``call``, and the policy generation the ledger must check it against (None: no check).

        Where the store checks the generation itself (server routines), the cached policies are used
        without asking the store first, and the routine answers ``stale`` if they changed. Otherwise (or
        when the cache moved on meanwhile) the store is asked first, as ``_plan`` always does. With
        ``empty_is_final`` False, a plan that matched nothing is verified with the store too: nothing
        would be sent to a routine to find out that a new policy covers the call.
        """
        if trust_cache and self.ledger.checks_generation:
            plan = self._plan(call, inf)
            generation = self.repository.generation_of(call.tenant, plan.source)
            # A throttle sends the reservation the Python way, which does not check the generation: ask first.
            if generation is not None and (plan.policies or empty_is_final) and not plan.throttles:
                return plan, generation
        return self._plan(call), None

    def charged(self, call: LLMCall, now: datetime) -> tuple[list[Target], int | None]:
        """:meth:`targets_for` and the generation to check them against (see :meth:`matched`)."""
        plan, generation = self.matched(call, now)
        return list(plan.targets(call, now)), generation

    @staticmethod
    def _standing_name(policy: Policy, part: str) -> str:
        """A standing's name: the policy's, with the sub-limit it is, e.g. ``"team [model=gpt-4o]"``."""
        return f"{policy.name} [{part.replace(':', '=', 1)}]" if part else policy.name

    def _stops(self, policy: Policy, part: str, call: LLMCall) -> bool:
        """Whether the standing of ``policy`` (or its sub-limit ``part``) stops a call that does not fit it:
        :meth:`_blocked` of that standing, from the policy itself."""
        enforcement = policy.enforcement or self.settings.default_enforcement
        if enforcement == "warn":
            return False
        if enforcement == "soft_block":
            name = self._standing_name(policy, part)
            names = {name, "*"}
            if name.endswith("]"):
                names.add(name.rsplit(" [", 1)[0])
            return call.tags.get(OVERRIDE_TAG) not in names
        return True

    def _standing(self, policy: Policy, standing: Standing, requested: int | Decimal) -> PolicyStanding:
        # Built from values the store already checked, on every call: skip re-validation.
        target = standing.target
        return _new_standing(
            policy.id or 0,
            self._standing_name(policy, target.part),
            policy.enforcement or self.settings.default_enforcement,
            target.window_start,
            target.window_end,
            from_units(standing.limit_units),
            from_units(standing.spent_units),
            from_units(standing.reserved_units),
            requested if isinstance(requested, Decimal) else from_units(requested),
        )

    def _blocks(self, standing: PolicyStanding, call: LLMCall) -> bool:
        return self._blocked(standing, standing.fits, call)

    @staticmethod
    def _blocked(standing: PolicyStanding, fits: bool, call: LLMCall) -> bool:
        """Whether ``standing`` stops the call, given whether the call ``fits`` its limit."""
        if fits or standing.enforcement == "warn":
            return False
        if standing.enforcement == "soft_block":
            # A sub-limit's standing is named "policy [model=...]": the policy's own name overrides it too.
            names = {standing.policy_name, "*"}
            if standing.policy_name.endswith("]"):
                names.add(standing.policy_name.rsplit(" [", 1)[0])
            return call.tags.get(OVERRIDE_TAG) not in names
        return True

    def check_budget(self, operation: LLMCall, estimated_cost: Decimal | None = None) -> BudgetDecision:
        """Check ``operation`` against every matching policy and reserve its estimate on all or none.

        The verdict names the deciding policy, its spend, limit and what remains;
        warnings say which thresholds the call would cross. The reservation is
        settled by :meth:`BudgetTrackingService.record_call` or expires after
        ``reservation_ttl``.
        """
        return self._check_budget(operation, estimated_cost, trust_cache=True)

    def _check_budget(self, operation: LLMCall, estimated_cost: Decimal | None, trust_cache: bool) -> BudgetDecision:
        call = operation
        now = self.clock()
        problem = unstorable(call)
        if problem:
            return BudgetDecision(
                allowed=False,
                reason=f"call {call.call_id[:200]!r} cannot be recorded: {problem}",
                estimated_cost=Decimal(0),
                price_source="refused",
            )
        if estimated_cost is not None:
            try:
                amount, source = parse_money(estimated_cost, "estimated_cost"), "caller estimate"
            except ValueError as exc:
                raise ValidationError(str(exc)) from None
        else:
            try:
                estimate = self.pricer.estimate(call)
            except UnknownPriceError as exc:
                if not self.matching(call):  # unknown_model governs calls a budget covers; nothing covers this one
                    return BudgetDecision(
                        allowed=True,
                        reason="no budget policy applies",
                        estimated_cost=Decimal(0),
                        price_source=UNPRICED,
                        warnings=(f"{exc}; no budget policy covers this call, so it is allowed and recorded unpriced",),
                    )
                return BudgetDecision(
                    allowed=False,
                    reason=f"{exc} (unknown_model = block)",
                    estimated_cost=Decimal(0),
                    price_source="unknown",
                )
            amount, source = estimate.cost, estimate.source
        if amount < 0:
            raise ValidationError(f"estimated_cost must not be negative, got {amount}")
        plan, generation = self.matched(call, now, empty_is_final=False, trust_cache=trust_cache)
        if not plan.policies:
            return BudgetDecision(
                allowed=True,
                reason="no budget policy applies",
                estimated_cost=amount,
                price_source=source,
                warnings=self._price_warnings(call, source),
            )
        by_id = plan.by_id
        targets = plan.targets(call, now)
        units = to_units(amount)
        #: The standings ``decide`` saw under the store's lock (none when it was not asked), and per standing,
        #: in store units: (what remains after this call, spent + reserved before it, the limit).
        seen: list[Standing] = []
        numbers: list[tuple[int, int, int]] = []

        def decide(standings: list[Standing]) -> bool:
            # Integers only while the store holds its lock; the standings' Decimal views are built after.
            seen[:] = standings
            numbers[:] = [
                (s.limit_units - used - units, used, s.limit_units)
                for s in standings
                for used in (s.spent_units + s.reserved_units,)
            ]
            return not any(
                n[0] < 0 and self._stops(by_id[s.target.policy_id], s.target.part, call)
                for s, n in zip(standings, numbers, strict=True)
            )

        def rates(standings: list[Standing]) -> list[Rate]:
            """Throttles past their threshold: their minute's rate must admit this call too."""
            found = []
            for standing in standings:
                policy = by_id[standing.target.policy_id]
                if standing.target.part or self.enforcement(policy) != "throttle":
                    continue
                used = standing.spent_units + standing.reserved_units + units
                if used * 100 >= standing.limit_units * policy.throttle_after:
                    spend = to_units(policy.spend_per_minute) if policy.spend_per_minute is not None else None
                    found.append(Rate(policy.id or 0, minute, policy.calls_per_minute, spend))
            return found

        expires = now + timedelta(seconds=self.settings.reservation_ttl)
        minute = now.replace(second=0, microsecond=0)
        try:
            # No throttle among the policies: no rates callback, so a store's fast path can take the call.
            reserved = self.ledger.reserve(
                call.call_id, targets, units, now, expires, decide, rates if plan.throttles else None, generation
            )
        except StoreRangeError as exc:
            return BudgetDecision(
                allowed=False,
                reason=f"call {call.call_id!r} cannot be held: {exc}",
                estimated_cost=amount,
                price_source=source,
            )
        outcome = reserved.outcome
        if outcome is Reservation.STALE:  # a policy changed since this process cached them: match again
            return self._check_budget(operation, estimated_cost, trust_cache=False)
        requested = from_units(units)
        views = [self._standing(by_id[s.target.policy_id], s, requested) for s in seen]
        if outcome is Reservation.THROTTLED and reserved.throttled_by is not None:
            return self._throttled(call, reserved.throttled_by, by_id, views, amount, source, now)
        if outcome is Reservation.RECORDED:
            return BudgetDecision(
                allowed=False,
                reason=(
                    f"call id {call.call_id!r} was already recorded as a finished call; give every call its own "
                    "call_id (a settled call cannot take a new hold)"
                ),
                estimated_cost=amount,
                price_source=source,
            )
        return self._decision(call, views, numbers, outcome is Reservation.HELD, amount, source, by_id)

    def _throttled(
        self,
        call: LLMCall,
        rate: Rate,
        by_id: dict[int | None, Policy],
        views: Sequence[PolicyStanding],
        amount: Decimal,
        source: str,
        now: datetime,
    ) -> BudgetDecision:
        policy = by_id[rate.policy_id]
        wait = max(1, ceil((rate.bucket + timedelta(minutes=1) - now).total_seconds()))
        limits = []
        if policy.calls_per_minute is not None:
            limits.append(f"{policy.calls_per_minute} calls")
        if policy.spend_per_minute is not None:
            limits.append(f"{policy.spend_per_minute} {policy.currency}")
        return BudgetDecision(
            allowed=False,
            reason=(
                f"budget {policy.name!r} (throttle) is past {policy.throttle_after}% of its limit and admits at most "
                f"{' and '.join(limits)} per minute; retry in {wait} s"
            ),
            estimated_cost=amount,
            price_source=source,
            deciding_policy=policy.name,
            standings=tuple(views),
            retry_after=wait,
        )

    def _price_warnings(self, call: LLMCall, source: str) -> tuple[str, ...]:
        defaults = self.pricer.estimate_warning(call, source)  # the hold came from default token counts
        found = (defaults,) if defaults else ()
        if source.endswith(UNPRICED):
            return (
                f"no price is known for {call.provider}/{call.model}; its cost counts as 0 "
                "(unknown_model = allow_unpriced)",
                *found,
            )
        if source.endswith(DEFAULT_PRICE):
            return (
                f"no price is known for {call.provider}/{call.model}; estimated at the default price "
                f"{self.settings.unknown_model} per million tokens (unknown_model)",
                *found,
            )
        return found

    def _decision(
        self,
        call: LLMCall,
        views: Sequence[PolicyStanding],
        numbers: Sequence[tuple[int, int, int]],
        held: bool,
        amount: Decimal,
        source: str,
        by_id: dict[int | None, Policy],
    ) -> BudgetDecision:
        """The verdict from the standings; ``numbers`` are the views' (remaining after the call, used before it,
        limit) in store units, so the arithmetic is on integers (exactly what the views' Decimals give)."""
        warnings = list(self._price_warnings(call, source))
        deciding = None
        # Tightest first (a stable sort: ties keep the policies' order, so the first is ``min``'s choice too).
        ordered = sorted(zip(views, numbers, strict=True), key=lambda p: p[1][0])
        for view, (remaining, used_before, limit) in ordered:
            if remaining < 0:
                if self.bus.wants("budget.limit_exceeded"):
                    self.bus.publish(
                        BudgetLimitEvent(
                            topic="budget.limit_exceeded",
                            tenant=call.tenant,
                            policy_id=view.policy_id,
                            policy_name=view.policy_name,
                            call_id=call.call_id,
                            spent=view.spent,
                            limit=view.limit,
                            requested=view.requested,
                        )
                    )
                if self._blocked(view, False, call):
                    deciding = deciding or view
                    continue
                warnings.append(
                    f"policy {view.policy_name!r} ({view.enforcement}) is over its limit of {view.limit}: "
                    f"spent {view.spent} + reserved {view.reserved} + this call {view.requested}"
                )
                continue
            # A threshold at pct % is crossed when used before < limit * pct / 100 <= used after (times 100).
            before, after = used_before * 100, (limit - remaining) * 100
            for pct in by_id[view.policy_id].thresholds:
                if before < limit * pct <= after:
                    warnings.append(f"this call takes policy {view.policy_name!r} past {pct}% of {view.limit}")
        if not held:
            assert deciding is not None
            alternative = self._alternative(call, views, by_id) if deciding.enforcement == "degrade" else None
            suggestion = f"; try {alternative[0]} (~{alternative[1]})" if alternative else ""
            return BudgetDecision(
                allowed=False,
                reason=(
                    f"budget {deciding.policy_name!r} ({deciding.enforcement}) would be exceeded: limit "
                    f"{deciding.limit}, spent {deciding.spent}, reserved {deciding.reserved}, this call "
                    f"~{deciding.requested}{suggestion}"
                ),
                alternative_model=alternative[0] if alternative else None,
                alternative_estimate=alternative[1] if alternative else None,
                estimated_cost=amount,
                price_source=source,
                deciding_policy=deciding.policy_name,
                standings=tuple(views),
            )
        tightest = ordered[0][0] if ordered else None
        return BudgetDecision(
            allowed=True,
            reason="within budget" if not warnings else "allowed with warnings",
            estimated_cost=amount,
            price_source=source,
            deciding_policy=tightest.policy_name if tightest else None,
            warnings=tuple(warnings),
            standings=tuple(views),
            reserved=True,
        )

    def _alternative(
        self, call: LLMCall, views: Sequence[PolicyStanding], by_id: dict[int | None, Policy]
    ) -> tuple[str, Decimal] | None:
        """The cheapest other model of the provider whose estimate fits every blocking policy."""
        blocking = [v for v in views if self._blocks(v, call)]
        room = min(v.limit - v.spent - v.reserved for v in blocking)
        candidates = [m for v in blocking for m in by_id[v.policy_id].alternatives]
        for model, estimate in self.pricer.alternatives(call, candidates):
            if estimate <= room:
                return model, estimate
        return None

    def renew_reservations(self, call_ids: Sequence[str], now: datetime | None = None) -> int:
        """Keep the holds of calls still in progress from expiring: push them to ``now + reservation_ttl``."""
        moment = now or self.clock()
        return self.ledger.renew(list(call_ids), moment + timedelta(seconds=self.settings.reservation_ttl))

    def expire_reservations(self, now: datetime | None = None) -> int:
        """Release holds of calls that never reported back within ``reservation_ttl``."""
        return self.ledger.expire(now or self.clock())
