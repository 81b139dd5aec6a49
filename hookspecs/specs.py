"""The hooks ATLAS calls around every LLM call (project name ``atlas``)."""

from __future__ import annotations

from datetime import datetime

import pluggy

from .types import LLMCall, LLMUsage, Verdict

PROJECT = "atlas"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def pre_llm_call(call: LLMCall) -> Verdict | None:
    """Called by the host before it sends ``call`` to the provider.

    A plugin may reserve resources for the call here (the budget plugin reserves
    the call's estimated cost). Every plugin is called; the host blocks the call
    when any verdict has ``allowed=False``.

    :param call: the call about to be made.
    :return: a :class:`Verdict`, or ``None`` when the plugin has no opinion on
        this call (``None`` never blocks).
    """


@hookspec
def post_llm_call(call: LLMCall, usage: LLMUsage, error: BaseException | None) -> None:
    """Called by the host exactly once after a call ends.

    It is called after success, after failure, at the end of a stream, and also
    when the call was blocked by some plugin's verdict (``error`` is then a
    :class:`CallBlocked`), so plugins that reserved in ``pre_llm_call`` can
    release. Implementations must be idempotent on ``call.call_id``.

    :param call: the same call that was passed to ``pre_llm_call``.
    :param usage: what the call consumed; all zeros when nothing was consumed.
    :param error: the exception the call raised, or ``None`` on success.
    :return: nothing.
    """


@hookspec
def on_period_tick(now: datetime) -> None:
    """Called periodically by the host's scheduler (e.g. every minute).

    Plugins do background work here: the budget plugin evaluates alerts, expires
    stale reservations and replays its outage spool.

    :param now: the host's current time, timezone-aware.
    :return: nothing.
    """
