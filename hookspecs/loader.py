"""Find and register plugins installed under an entry-point group, one at a time."""

from __future__ import annotations

import importlib.metadata
import logging
import os
from dataclasses import dataclass

import pluggy

from . import specs

log = logging.getLogger("hookspecs")

STRICT_ENV = "ATLAS_PLUGINS_STRICT"
BLOCKED_ENV = "ATLAS_PLUGINS_BLOCKED"


class PluginLoadError(RuntimeError):
    """A plugin could not be loaded and strict mode is on."""


@dataclass(frozen=True)
class LoadFailure:
    """A plugin that was skipped because it failed to load or register."""

    name: str
    value: str
    error: str


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def blocked_names(env_value: str | None = None) -> set[str]:
    """Plugin names disabled by the block-list env var (comma or space separated)."""
    raw = os.environ.get(BLOCKED_ENV, "") if env_value is None else env_value
    return {name for name in raw.replace(",", " ").split() if name}


def load_entry_points(
    pm: pluggy.PluginManager,
    group: str,
    *,
    strict: bool | None = None,
    blocked: set[str] | None = None,
) -> list[LoadFailure]:
    """Register every plugin in entry-point ``group`` on ``pm``.

    Each plugin is loaded on its own: a broken one is logged with its name and
    skipped so it cannot take the host down, unless ``strict`` (default: the
    ``ATLAS_PLUGINS_STRICT`` env var) makes the failure fatal. Names in
    ``blocked`` (default: ``ATLAS_PLUGINS_BLOCKED``) are not loaded at all.

    :return: the plugins that were skipped because they failed.
    """
    strict = _truthy(os.environ.get(STRICT_ENV)) if strict is None else strict
    blocked = blocked_names() if blocked is None else blocked
    for name in blocked:
        pm.set_blocked(name)
    failures: list[LoadFailure] = []
    for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
        if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a third-party plugin may fail in any way
            failure = LoadFailure(ep.name, ep.value, f"{type(exc).__name__}: {exc}")
            if strict:
                raise PluginLoadError(
                    f"plugin {ep.name!r} ({ep.value}) in entry-point group {group!r} failed to "
                    f"load: {failure.error}. Unset {STRICT_ENV} to skip broken plugins, or add "
                    f"{ep.name} to {BLOCKED_ENV}."
                ) from exc
            log.error("skipping plugin %r (%s) in group %r: %s", ep.name, ep.value, group, failure.error)
            failures.append(failure)
            if pm.has_plugin(ep.name):  # pragma: no cover - register failed after adding
                pm.unregister(name=ep.name)
    pm.check_pending()
    return failures


def load_plugins(group: str = specs.PROJECT, *, strict: bool | None = None) -> pluggy.PluginManager:
    """Return a PluginManager with the ``atlas`` hook specs added and installed plugins loaded.

    This is what a host calls once at start-up::

        pm = load_plugins()
        verdicts = pm.hook.pre_llm_call(call=call)
    """
    pm = pluggy.PluginManager(specs.PROJECT)
    pm.add_hookspecs(specs)
    load_entry_points(pm, group, strict=strict)
    return pm


def plugin_names(pm: pluggy.PluginManager) -> list[str]:
    """Names of the registered plugins, for diagnostics."""
    return sorted(name for name, plugin in pm.list_name_plugin() if plugin is not None)
