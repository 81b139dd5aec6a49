"""The ATLAS host contract: markers, call/usage/verdict types, hook specs, loader, guards (sync and asyncio).

This package holds no budget code. ATLAS imports only this; plugins are found
through the entry-point group ``atlas`` and write ``from hookspecs import hookimpl``.
"""

from .aio import async_guarded_call, async_open_call
from .guard import CallGuard, OpenCall, check_call, guarded_call, open_call, post_each, run_guarded
from .loader import (
    BLOCKED_ENV,
    STRICT_ENV,
    LoadFailure,
    PluginLoadError,
    load_entry_points,
    load_plugins,
    plugin_names,
)
from .specs import PROJECT, hookimpl, hookspec
from .streams import StreamUsage, plain
from .tokens import approx_tokens
from .types import CallBlocked, LLMCall, LLMUsage, Verdict

__all__ = [
    "BLOCKED_ENV",
    "PROJECT",
    "STRICT_ENV",
    "CallBlocked",
    "CallGuard",
    "LLMCall",
    "LLMUsage",
    "LoadFailure",
    "OpenCall",
    "PluginLoadError",
    "StreamUsage",
    "Verdict",
    "approx_tokens",
    "async_guarded_call",
    "async_open_call",
    "check_call",
    "guarded_call",
    "hookimpl",
    "hookspec",
    "load_entry_points",
    "load_plugins",
    "open_call",
    "plain",
    "plugin_names",
    "post_each",
    "run_guarded",
]
