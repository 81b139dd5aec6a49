"""Host helper: run an LLM call between ``pre_llm_call`` and exactly one ``post_llm_call``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import pluggy

from .streams import StreamUsage
from .types import CallBlocked, LLMCall, LLMUsage, Verdict

log = logging.getLogger("hookspecs")

T = TypeVar("T")


@dataclass
class CallGuard:
    """Handle for a call in progress: set ``usage``, or ``observe`` a stream's chunks, before the block ends."""

    call: LLMCall
    verdicts: list[Verdict] = field(default_factory=list)
    usage: LLMUsage | None = None
    stream: StreamUsage = field(default_factory=StreamUsage, repr=False)

    @property
    def warnings(self) -> list[str]:
        """Every warning from every allowing verdict, in plugin order."""
        return [w for v in self.verdicts for w in v.warnings]

    def observe(self, chunk: T) -> T:
        """Merge the usage a stream chunk or event carries (OpenAI, Anthropic, Gemini; dict or SDK object).

        Returns ``chunk``, so a loop can pass it on. When the block ends and
        ``usage`` was not set, the merged usage is reported.
        """
        self.stream.observe(chunk)
        return chunk

    def settled_usage(self, error: BaseException | None) -> LLMUsage:
        """What ``post_llm_call`` is told: ``usage`` if set, else what the observed stream reported.

        A stream that started but reported no usage (abandoned before its last
        chunk, or an OpenAI stream without ``include_usage``) is reported as
        ``LLMUsage(billed=True)``: the provider billed it, nobody knows how much,
        so the plugin records it at its estimate instead of releasing it.
        """
        if self.usage is not None:
            return self.usage
        body = self.stream.body()
        if body is not None:
            return LLMUsage(response=body, billed=True)
        if self.stream.started:
            if error is None and self.stream.finished:
                log.warning(
                    "the stream of call %s ended without reporting usage; it is recorded at its estimate "
                    "(OpenAI chat: pass stream_options={'include_usage': True})",
                    self.call.call_id,
                )
            return LLMUsage(billed=True)
        return LLMUsage()


def post_each(pm: pluggy.PluginManager, call: LLMCall, usage: LLMUsage, error: BaseException | None) -> None:
    """Call every plugin's ``post_llm_call``, each on its own: one that raises does not stop the others.

    pluggy stops a hook call at the first implementation that raises, which would leave
    the later plugins' reservations unsettled and their usage unrecorded. A failing
    implementation is logged with its plugin's name.
    """
    caller = pm.hook.post_llm_call
    for impl in reversed(caller.get_hookimpls()):  # pluggy's own order: last registered first
        if impl.hookwrapper or impl.wrapper:  # wrappers wrap a whole hook call; a plain post has none to wrap
            continue
        try:
            impl.function(call=call, usage=usage, error=error)
        except Exception:
            log.exception("post_llm_call of plugin %r failed for call %s", impl.plugin_name, call.call_id)


@contextmanager
def guarded_call(pm: pluggy.PluginManager, call: LLMCall) -> Iterator[CallGuard]:
    """Check ``call`` with every plugin, then let the host make it.

    Raises :class:`CallBlocked` with the first denying verdict. Otherwise yields a
    :class:`CallGuard`; whatever happens inside the block (success, exception,
    ``KeyboardInterrupt``), ``post_llm_call`` runs exactly once afterwards with
    ``guard.usage`` (else the usage merged from ``guard.observe``-d stream chunks,
    see :meth:`CallGuard.settled_usage`; zeros when nothing is known) and the
    exception, if any.

    A blocked call also gets one ``post_llm_call`` with the :class:`CallBlocked`
    as its error, so plugins that reserved before another plugin denied can release::

        with guarded_call(pm, call) as guard:
            response = client.chat(...)
            guard.usage = LLMUsage(input_tokens=..., output_tokens=...)
    """
    try:
        verdicts = [v for v in pm.hook.pre_llm_call(call=call) if v is not None]
    except BaseException as exc:
        post_each(pm, call, LLMUsage(), exc)
        raise
    denying = next((v for v in verdicts if not v.allowed), None)
    if denying is not None:
        blocked = CallBlocked(denying)
        post_each(pm, call, LLMUsage(), blocked)
        raise blocked
    guard = CallGuard(call, verdicts)
    try:
        yield guard
    except BaseException as exc:
        post_each(pm, call, guard.settled_usage(exc), exc)
        raise
    post_each(pm, call, guard.settled_usage(None), None)


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
