"""Host helper: run an LLM call between ``pre_llm_call`` and exactly one ``post_llm_call``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import pluggy

from .types import CallBlocked, LLMCall, LLMUsage, Verdict

log = logging.getLogger("hookspecs")

T = TypeVar("T")


@dataclass
class CallGuard:
    """Handle for a call in progress: set ``usage`` before the ``with`` block ends."""

    call: LLMCall
    verdicts: list[Verdict] = field(default_factory=list)
    usage: LLMUsage | None = None

    @property
    def warnings(self) -> list[str]:
        """Every warning from every allowing verdict, in plugin order."""
        return [w for v in self.verdicts for w in v.warnings]


def _post_after_failure(pm: pluggy.PluginManager, call: LLMCall, usage: LLMUsage, error: BaseException) -> None:
    # The original error is what the caller must see; a failing post hook is logged.
    try:
        pm.hook.post_llm_call(call=call, usage=usage, error=error)
    except Exception:
        log.exception("post_llm_call failed for call %s after %r", call.call_id, error)


@contextmanager
def guarded_call(pm: pluggy.PluginManager, call: LLMCall) -> Iterator[CallGuard]:
    """Check ``call`` with every plugin, then let the host make it.

    Raises :class:`CallBlocked` with the first denying verdict. Otherwise yields a
    :class:`CallGuard`; whatever happens inside the block (success, exception,
    ``KeyboardInterrupt``), ``post_llm_call`` runs exactly once afterwards with
    ``guard.usage`` (zeros when unset) and the exception, if any.

    A blocked call also gets one ``post_llm_call`` with the :class:`CallBlocked`
    as its error, so plugins that reserved before another plugin denied can release::

        with guarded_call(pm, call) as guard:
            response = client.chat(...)
            guard.usage = LLMUsage(input_tokens=..., output_tokens=...)
    """
    try:
        verdicts = [v for v in pm.hook.pre_llm_call(call=call) if v is not None]
    except BaseException as exc:
        _post_after_failure(pm, call, LLMUsage(), exc)
        raise
    denying = next((v for v in verdicts if not v.allowed), None)
    if denying is not None:
        blocked = CallBlocked(denying)
        _post_after_failure(pm, call, LLMUsage(), blocked)
        raise blocked
    guard = CallGuard(call, verdicts)
    try:
        yield guard
    except BaseException as exc:
        _post_after_failure(pm, call, guard.usage or LLMUsage(), exc)
        raise
    pm.hook.post_llm_call(call=call, usage=guard.usage or LLMUsage(), error=None)


def run_guarded(
    pm: pluggy.PluginManager,
    call: LLMCall,
    fn: Callable[[], T],
    usage_of: Callable[[T], LLMUsage],
) -> T:
    """Function form of :func:`guarded_call`: run ``fn`` and report ``usage_of(result)``."""
    with guarded_call(pm, call) as guard:
        result = fn()
        guard.usage = usage_of(result)
    return result
