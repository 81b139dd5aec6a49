"""Host helper for asyncio: the guarded call of :mod:`hookspecs.guard`, with every hook run off the event loop.

Plugins' hooks are synchronous and may do blocking work (the budget plugin
writes to its store, and its first hook call starts it up). Run on the event
loop, that work would stall every other task; here each hook call runs in a
small thread pool owned by this module, bounded (:data:`DEFAULT_WORKERS`
threads), so a thousand concurrent calls queue for a few threads instead of
starting a thousand.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pluggy

from .guard import CallGuard, OpenCall, post_each
from .types import CallBlocked, LLMCall, LLMUsage, Verdict

__all__ = ["DEFAULT_WORKERS", "WORKERS_ENV", "async_guarded_call", "async_open_call", "hook_executor", "run_hook"]

T = TypeVar("T")

#: Environment variable that sets the number of hook threads (default :data:`DEFAULT_WORKERS`).
WORKERS_ENV = "ATLAS_HOOK_THREADS"
#: Hook threads by default. Hook work is mostly waiting on a store; SQLite takes one writer at a time, so more
#: threads would only queue on its lock instead of in the pool.
DEFAULT_WORKERS = 8

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _workers() -> int:
    raw = os.environ.get(WORKERS_ENV, "")
    if not raw:
        return DEFAULT_WORKERS
    try:
        count = int(raw)
    except ValueError:
        raise ValueError(f"{WORKERS_ENV} must be a whole number of threads (1..256), got {raw!r}") from None
    if not 1 <= count <= 256:
        raise ValueError(f"{WORKERS_ENV} must be between 1 and 256 threads, got {count}")
    return count


def hook_executor() -> ThreadPoolExecutor:
    """The module's bounded pool for hook calls (started on first use, ``ATLAS_HOOK_THREADS`` threads)."""
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="atlas-hooks")
    return _executor


def _submit(fn: Callable[..., T], *args: Any, executor: Executor | None = None) -> asyncio.Future[T]:
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()  # the caller's context variables are visible to fn
    return loop.run_in_executor(executor or hook_executor(), functools.partial(context.run, fn, *args))


async def run_hook(fn: Callable[..., T], *args: Any, executor: Executor | None = None) -> T:
    """Run ``fn(*args)`` off the event loop, in ``executor`` (default :func:`hook_executor`).

    Cancelling the await does not stop ``fn``: a thread cannot be stopped.
    """
    return await _submit(fn, *args, executor=executor)


async def _complete(fn: Callable[..., T], *args: Any, executor: Executor | None = None) -> T:
    """Run ``fn`` off the loop and wait until it has finished, even if the waiting task is cancelled meanwhile.

    Work that settles a call must not be cut short, and the host must be able to
    rely on it having happened when the cancellation reaches it: the cancellation
    is raised once ``fn`` is done.
    """
    future = _submit(fn, *args, executor=executor)
    cancelled: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        if not future.cancelled():
            future.exception()  # retrieved; the cancellation is what the caller must see
        raise cancelled
    return future.result()


def _check(pm: pluggy.PluginManager, call: LLMCall) -> list[Verdict]:
    return [v for v in pm.hook.pre_llm_call(call=call) if v is not None]


@asynccontextmanager
async def async_guarded_call(
    pm: pluggy.PluginManager, call: LLMCall, *, executor: Executor | None = None
) -> AsyncIterator[CallGuard]:
    """``async with`` form of :func:`hookspecs.guarded_call`, for asyncio hosts; hooks never run on the loop.

    Raises :class:`CallBlocked` with the first denying verdict (after a
    ``post_llm_call`` with that error, so plugins that reserved release).
    Otherwise yields a :class:`CallGuard`; whatever ends the block (success, an
    exception, ``asyncio.CancelledError``), ``post_llm_call`` runs exactly once,
    every plugin's even when one raises, and runs to its end before the exception
    or cancellation propagates. ``guard.observe(chunk)`` merges a stream's usage::

        async with async_guarded_call(pm, call) as guard:
            stream = await client.chat.completions.create(..., stream=True,
                                                          stream_options={"include_usage": True})
            async for chunk in stream:
                guard.observe(chunk)
    """
    try:
        verdicts = await _complete(_check, pm, call, executor=executor)
    except BaseException as exc:  # a cancelled check may have reserved: its post releases
        await _complete(post_each, pm, call, LLMUsage(), exc, executor=executor)
        raise
    denying = next((v for v in verdicts if not v.allowed), None)
    if denying is not None:
        blocked = CallBlocked(denying)
        await _complete(post_each, pm, call, LLMUsage(), blocked, executor=executor)
        raise blocked
    guard = CallGuard(call, verdicts)
    try:
        yield guard
    except BaseException as exc:
        await _complete(post_each, pm, call, guard.settled_usage(exc), exc, executor=executor)
        raise
    await _complete(post_each, pm, call, guard.settled_usage(None), None, executor=executor)


async def async_open_call(pm: pluggy.PluginManager, call: LLMCall, *, executor: Executor | None = None) -> OpenCall:
    """:func:`hookspecs.open_call` for asyncio hosts: the check runs off the loop; end with ``await afinish()``.

    Raises :class:`CallBlocked` like :func:`async_guarded_call`; a check cancelled
    midway is followed by a releasing ``post_llm_call`` before the cancellation propagates.
    """
    try:
        verdicts = await _complete(_check, pm, call, executor=executor)
    except BaseException as exc:
        await _complete(post_each, pm, call, LLMUsage(), exc, executor=executor)
        raise
    denying = next((v for v in verdicts if not v.allowed), None)
    if denying is not None:
        blocked = CallBlocked(denying)
        await _complete(post_each, pm, call, LLMUsage(), blocked, executor=executor)
        raise blocked
    return OpenCall(pm, CallGuard(call, verdicts), executor)
