"""The ``atlas`` hook implementations: a thin adapter from ATLAS's hooks to the budget services."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from hookspecs import LLMCall, LLMUsage, Verdict, hookimpl

from .bootstrap import BudgetServices, bootstrap
from .exceptions import BudgetError, SettingsError, StoreUnavailable
from .pricing import estimate_basis
from .scheduler import BackgroundEvaluator
from .store.database import STORE_ERRORS, reset_connection
from .types import BudgetDecision

log = logging.getLogger("atlas_budget_plugin")

SOURCE = "atlas-budget"

#: A call open longer than this (a day) is taken as forgotten by its host: its hold is no longer renewed.
MAX_OPEN_SECONDS = 86_400


def to_verdict(decision: BudgetDecision) -> Verdict:
    details = {
        "estimated_cost": decision.estimated_cost,
        "price_source": decision.price_source,
        "estimate_basis": estimate_basis(decision.price_source),  # e.g. "default token counts: input 1024, ..."
        "policy": decision.deciding_policy,
        "alternative_model": decision.alternative_model,
        "alternative_estimate": decision.alternative_estimate,
        "retry_after": decision.retry_after,  # seconds until a throttle admits calls again
        "policies": [
            {
                "name": s.policy_name,
                "enforcement": s.enforcement,
                "limit": s.limit,
                "spent": s.spent,
                "reserved": s.reserved,
                "remaining_after": s.remaining_after,
            }
            for s in decision.standings
        ],
    }
    return Verdict(decision.allowed, decision.reason, decision.warnings, SOURCE, details)


class BudgetPlugin:
    """Hook implementations bound to one set of services (built lazily on first use)."""

    def __init__(self, services: BudgetServices | Callable[[], BudgetServices] | None = None) -> None:
        self._factory: Callable[[], BudgetServices] = (
            (lambda: services)
            if isinstance(services, BudgetServices)
            else (services or (lambda: bootstrap(require_store=False)))
        )
        self._services: BudgetServices | None = services if isinstance(services, BudgetServices) else None
        self._lock = threading.Lock()
        self._host_ticks = False
        self.background: BackgroundEvaluator | None = None
        self._config_error: SettingsError | None = None
        self._config_checked = 0.0
        self._open: dict[str, float] = {}  # call id -> monotonic time its hold was taken
        self.renewer: BackgroundEvaluator | None = None

    @property
    def services(self) -> BudgetServices:
        if self._services is None:
            with self._lock:
                if self._services is None:
                    self._services = self._factory()
                    self._start_background(self._services)
        return self._services

    def _available(self) -> BudgetServices | SettingsError:
        """The services, or the settings error that keeps them from starting.

        A broken settings file must not turn every LLM call of the host into an
        exception: calls are denied with the error as the reason (failing closed,
        like on_store_error = deny), and the file is read again at most every 5 s,
        so fixing it takes effect without restarting the host.
        """
        if self._services is not None:
            return self._services
        if self._config_error is not None and time.monotonic() - self._config_checked < 5:
            return self._config_error
        self._config_checked = time.monotonic()
        try:
            services = self.services
        except SettingsError as exc:
            if self._config_error is None or str(exc) != str(self._config_error):
                log.error("atlas-budget cannot start, denying calls until fixed: %s", exc)
            self._config_error = exc
            return exc
        self._config_error = None
        return services

    def _start_background(self, services: BudgetServices) -> None:
        # Until the host proves it has a scheduler (its first on_period_tick), run our own.
        interval = services.settings.evaluation_interval
        if interval > 0 and not self._host_ticks:
            self.background = BackgroundEvaluator(self._tick, interval)
            self.background.start()

    def _renew(self, now: datetime) -> None:
        """Keep the holds of this process's calls in progress from expiring (long calls and streams).

        The TTL then reclaims only holds whose process is gone (or whose call has been open
        longer than :data:`MAX_OPEN_SECONDS`, which a host that forgot ``post_llm_call`` would cause).
        """
        services = self._services
        if services is None or not self._open:
            return
        oldest = time.monotonic() - MAX_OPEN_SECONDS
        for call_id, started in list(self._open.items()):
            if started < oldest:
                self._open.pop(call_id, None)
        try:
            services.policies.renew_reservations(list(self._open), now)
        except STORE_ERRORS as exc:
            reset_connection(services.db)
            log.warning("budget store unreachable, holds of calls in progress not renewed: %s", exc)

    def _track(self, services: BudgetServices, call_id: str) -> None:
        self._open[call_id] = time.monotonic()
        if self.renewer is None:
            with self._lock:
                if self.renewer is None:
                    every = max(1, services.settings.reservation_ttl // 3)
                    self.renewer = BackgroundEvaluator(self._renew, every, services.policies.clock)
                    self.renewer.start()

    def _tick(self, now: datetime) -> None:
        services = self._available()
        if isinstance(services, SettingsError):
            return
        self._renew(now)
        done = services.tick(now)
        if any(done.values()):
            log.info("budget tick: %s", ", ".join(f"{k} {v}" for k, v in done.items()))

    @hookimpl
    def pre_llm_call(self, call: LLMCall) -> Verdict | None:
        try:
            return self._check(call)
        except Exception as exc:  # never into the host: an unexpected fault denies, like a store outage
            log.exception("budget check of call %s failed", call.call_id)
            return Verdict(
                False, f"the budget plugin could not check this call: {type(exc).__name__}: {exc}", (), SOURCE
            )

    def _check(self, call: LLMCall) -> Verdict:
        services = self._available()
        if isinstance(services, SettingsError):
            return Verdict(False, f"the budget plugin is misconfigured: {services}", (), SOURCE)
        if not services.ensure_ready():
            return self._store_down(call, StoreUnavailable("not reachable since start"))
        try:
            decision = services.policies.check_budget(call)
        except STORE_ERRORS as exc:
            reset_connection(services.db)
            return self._store_down(call, exc)
        except BudgetError as exc:
            return Verdict(False, str(exc), (), SOURCE)
        if decision.reserved:
            self._track(services, call.call_id)
        return to_verdict(decision)

    def _store_down(self, call: LLMCall, exc: Exception) -> Verdict:
        mode = self.services.settings.on_store_error
        log.error("budget store unreachable while checking call %s: %s (on_store_error=%s)", call.call_id, exc, mode)
        reason = f"budget store unreachable ({type(exc).__name__}: {exc}); on_store_error = {mode}"
        if mode == "allow":
            return Verdict(True, reason, (f"budget not checked: {reason}",), SOURCE)
        return Verdict(False, reason, (), SOURCE)

    @hookimpl
    def post_llm_call(self, call: LLMCall, usage: LLMUsage, error: BaseException | None) -> None:
        # Never raises into the host: the provider has billed the call already, and an exception
        # here would also keep every later plugin's post_llm_call from running.
        self._open.pop(call.call_id, None)
        try:
            services = self._available()
            if isinstance(services, SettingsError):
                return  # pre_llm_call denied this call: there is nothing to record
            services.tracking.record_call(call, usage, error)
        except Exception:
            log.critical(
                "recording call %s failed; its hold stays counted until it expires", call.call_id, exc_info=True
            )

    @hookimpl
    def on_period_tick(self, now: datetime) -> None:
        self._host_ticks = True
        if self.background is not None:
            self.background.stop()
            self.background = None
        self._tick(now)

    def close(self) -> None:
        for worker in (self.background, self.renewer):
            if worker is not None:
                worker.stop()
        self.background = self.renewer = None


_default = BudgetPlugin()


def set_services(services: BudgetServices | None) -> None:
    """Point the module-level hooks at ``services`` (None: bootstrap lazily from settings again)."""
    global _default
    _default.close()
    _default = BudgetPlugin(services)


@hookimpl
def pre_llm_call(call: LLMCall) -> Verdict | None:
    """Check the call against every matching policy and reserve its estimated cost."""
    return _default.pre_llm_call(call)


@hookimpl
def post_llm_call(call: LLMCall, usage: LLMUsage, error: BaseException | None) -> None:
    """Price and record the call's usage durably, settling (or releasing) its reservation."""
    _default.post_llm_call(call, usage, error)


@hookimpl
def on_period_tick(now: datetime) -> None:
    """Expire stale reservations, evaluate and deliver alerts, prune old usage rows."""
    _default.on_period_tick(now)
