"""Host helper: run an LLM call between ``pre_llm_call`` and exactly one ``post_llm_call``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
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


def check_call(pm: pluggy.PluginManager, call: LLMCall) -> CallGuard:
    """``pre_llm_call`` of every plugin; a guard for the allowed call, else :class:`CallBlocked`.

    Shared by :func:`guarded_call`, :func:`open_call` and their asyncio forms. A
    check that raises, or a deny, is followed by one ``post_llm_call`` with that
    error, so plugins that reserved before another denied release.
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
    return CallGuard(call, verdicts)


class OpenCall:
    """An allowed call whose end is not the end of a ``with`` block, e.g. an HTTP response read later.

    Made by :func:`open_call` (or :func:`hookspecs.aio.async_open_call`). The host
    feeds ``guard`` (``usage`` or ``observe``) and calls :meth:`finish` (or
    :meth:`afinish` on an event loop) when the call ends: every plugin's
    ``post_llm_call`` runs exactly once, however often and from whichever threads
    ``finish`` is called; later calls return False.
    """

    def __init__(self, pm: pluggy.PluginManager, guard: CallGuard, executor: Executor | None = None) -> None:
        self.pm = pm
        self.guard = guard
        self.executor = executor
        self._lock = threading.Lock()
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def _claim(self) -> bool:
        with self._lock:
            if self._finished:
                return False
            self._finished = True
            return True

    def finish(self, error: BaseException | None = None) -> bool:
        """Report the call's usage (see :meth:`CallGuard.settled_usage`) and ``error``; True the first time."""
        if not self._claim():
            return False
        post_each(self.pm, self.guard.call, self.guard.settled_usage(error), error)
        return True

    async def afinish(self, error: BaseException | None = None) -> bool:
        """:meth:`finish` off the event loop; runs to its end even if the awaiting task is cancelled."""
        if not self._claim():
            return False
        from .aio import _complete  # aio imports this module

        usage = self.guard.settled_usage(error)
        await _complete(post_each, self.pm, self.guard.call, usage, error, executor=self.executor)
        return True


def open_call(pm: pluggy.PluginManager, call: LLMCall) -> OpenCall:
    """Check ``call`` like :func:`guarded_call` (raising :class:`CallBlocked` on a deny) and return it open.

    For hosts whose call ends somewhere a ``with`` block cannot reach, such as an
    HTTP transport that settles when the SDK has read the response body. The host
    must call :meth:`OpenCall.finish` exactly when the call ends::

        opened = open_call(pm, call)
        try:
            response = send(...)
        except BaseException as exc:
            opened.finish(exc)
            raise
        ...  # later, when the body has been read: opened.guard.usage = ...; opened.finish()
    """
    return OpenCall(pm, check_call(pm, call))


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
    guard = check_call(pm, call)
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
