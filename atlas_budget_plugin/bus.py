"""MessageBus: ``budget.*`` topics, in-process subscribers, fan-out to the ``budget_event`` hook."""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from .types import BudgetEvent

log = logging.getLogger("atlas_budget_plugin")

TOPICS = (
    "budget.policy_created",
    "budget.policy_updated",
    "budget.policy_deleted",
    "budget.usage_recorded",
    "budget.threshold_reached",
    "budget.alert_triggered",
    "budget.alert_acknowledged",
    "budget.alert_resolved",
    "budget.limit_exceeded",
    "budget.approaching_limit",
)

Subscriber = Callable[[BudgetEvent], None]


class EventSink(Protocol):
    def publish(self, event: BudgetEvent) -> None: ...


class MessageBus:
    """Publishes events to subscribers of matching topics (``fnmatch`` patterns) and the hook.

    Events are published after the change they describe is committed; a failing
    subscriber is logged and never undoes or blocks the change.
    """

    def __init__(self, hooks: EventSink | None = None) -> None:
        self._hooks = hooks
        self._lock = threading.Lock()
        self._subscribers: list[tuple[str, Subscriber]] = []

    def subscribe(self, pattern: str, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` for every event whose topic matches ``pattern``; returns an unsubscribe."""
        entry = (pattern, subscriber)
        with self._lock:
            self._subscribers.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subscribers:
                    self._subscribers.remove(entry)

        return unsubscribe

    def publish(self, event: BudgetEvent) -> None:
        if event.topic not in TOPICS:
            raise ValueError(f"unknown event topic {event.topic!r}; known topics: {', '.join(TOPICS)}")
        with self._lock:
            targets = [fn for pattern, fn in self._subscribers if fnmatch.fnmatchcase(event.topic, pattern)]
        for fn in targets:
            try:
                fn(event)
            except Exception:
                log.exception("subscriber %r failed on %s", fn, event.topic)
        if self._hooks is not None:
            self._hooks.publish(event)
