"""MessageBus: ``budget.*`` topics, in-process subscribers, fan-out to the ``budget_event`` hook."""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from .extensions import Extensions
from .types import BudgetEvent

M = TypeVar("M", bound=BaseModel)
_set = object.__setattr__


def _slot_setter(name: str) -> Callable[[Any, Any], None]:
    """Setter of one of BaseModel's own slots (straight to the slot; else through object.__setattr__)."""
    slot = BaseModel.__dict__.get(name)
    if slot is not None and type(slot).__name__ == "member_descriptor":
        return slot.__set__
    return lambda model, value: _set(model, name, value)


_set_fields_set = _slot_setter("__pydantic_fields_set__")
_set_extra = _slot_setter("__pydantic_extra__")
_set_private = _slot_setter("__pydantic_private__")


def maker(cls: type[M]) -> Callable[..., M]:
    """A builder of ``cls`` instances from every field's value, in field order, without validation.

    What ``cls.model_construct(**values)`` does for a model without aliases, post-init or extra fields
    (which it refuses), minus its per-field lookups: for values the code itself built and checked, on
    the hot path that builds several of these per LLM call.
    """
    fields = cls.model_fields
    if (
        cls.__pydantic_post_init__
        or cls.__pydantic_root_model__
        or cls.model_config.get("extra") == "allow"
        or any(f.alias is not None or f.validation_alias is not None for f in fields.values())
    ):
        raise TypeError(f"{cls.__name__} needs model_construct: it has aliases, extra fields or a post-init")
    names = tuple(fields)
    count = len(names)
    new = cls.__new__

    def build(*values: Any) -> M:
        if len(values) != count:
            raise TypeError(f"{cls.__name__} takes {count} values, in field order; got {len(values)}")
        model = new(cls)
        _set(model, "__dict__", dict(zip(names, values, strict=True)))
        _set_fields_set(model, set(names))
        _set_extra(model, None)
        _set_private(model, None)
        return model

    return build


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

    def wants(self, topic: str) -> bool:
        """Whether an event of ``topic`` would reach anyone: lets publishers skip building events nobody reads.

        A subscriber whose pattern matches, a ``budget_event`` hook implementation, or a hook sink of
        another kind (which may want everything) makes it True.
        """
        if self._subscribers and any(fnmatch.fnmatchcase(topic, pattern) for pattern, _ in list(self._subscribers)):
            return True
        hooks = self._hooks
        if hooks is None:
            return False
        if type(hooks) is Extensions:
            return bool(hooks.pm.hook.budget_event.get_hookimpls())
        return True

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
