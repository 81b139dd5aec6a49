"""The ``atlas_budget`` plugin manager and the typed callers services use instead of ``pm.hook``."""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from decimal import Decimal

import pluggy

from hookspecs import LLMCall, LLMUsage, load_entry_points

from . import hookspecs
from .exceptions import SettingsError
from .settings import BudgetSettings
from .types import Alert, BudgetEvent

log = logging.getLogger("atlas_budget_plugin")


def get_plugin_manager(load: bool = True, strict: bool | None = None) -> pluggy.PluginManager:
    """A PluginManager for ``atlas_budget`` with built-in and installed plugins loaded.

    Built-in sinks are entry points of this package, so they load by the same
    code path as third-party ones.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if load:
        load_entry_points(pm, hookspecs.PROJECT, strict=strict)
    return pm


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    distribution: str
    hooks: tuple[str, ...]


class Extensions:
    """Calls the ``atlas_budget`` hooks; unit tests replace it with a fake."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm

    def price(self, call: LLMCall, usage: LLMUsage) -> Decimal | None:
        """First third-party price for the call, or None."""
        result = self.pm.hook.budget_price(call=call, usage=usage)
        if result is not None and not isinstance(result, Decimal):
            raise TypeError(
                f"a budget_price hook returned {type(result).__name__} {result!r}; it must return a Decimal or None"
            )
        return result

    def publish(self, event: BudgetEvent) -> None:
        """Fan an event out to every ``budget_event`` hook; a failing hook is logged."""
        for impl in self.pm.hook.budget_event.get_hookimpls():
            try:
                impl.function(event=event)
            except Exception:
                log.exception("budget_event hook of plugin %r failed on %s", impl.plugin_name, event.topic)

    def configure(self, settings: BudgetSettings) -> None:
        """Hand every plugin its settings; a plugin that refuses them stops start-up with its name."""
        for impl in self.pm.hook.budget_configure.get_hookimpls():
            try:
                impl.function(settings=settings)
            except Exception as exc:
                raise SettingsError(
                    f"plugin {impl.plugin_name!r} refused its settings: {exc}. Fix its [sinks.{impl.plugin_name}] "
                    f"section in {settings.config_file} or block the plugin with ATLAS_PLUGINS_BLOCKED"
                ) from exc

    def sink_names(self) -> list[str]:
        return sorted(impl.plugin_name for impl in self.pm.hook.budget_deliver_alert.get_hookimpls())

    def deliver(self, alert: Alert, sink: str) -> None:
        """Deliver to one named sink; raises what the sink raised, or LookupError if unknown."""
        for impl in self.pm.hook.budget_deliver_alert.get_hookimpls():
            if impl.plugin_name == sink:
                impl.function(alert=alert)
                return
        raise LookupError(f"no alert sink named {sink!r}; installed sinks: {', '.join(self.sink_names()) or 'none'}")

    def plugins(self) -> list[PluginInfo]:
        """Registered plugins with their distribution, version and hooks (for ``atlas-budget plugins``)."""
        # Plugins are registered under their entry-point name, which leads to their distribution.
        dists = {ep.name: ep.dist for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT) if ep.dist}
        infos = []
        for name, plugin in sorted(self.pm.list_name_plugin()):
            dist = dists.get(name)
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or []))
            infos.append(
                PluginInfo(
                    name,
                    getattr(dist, "version", "") if dist else "",
                    (dist.metadata["Name"] if dist else ""),
                    hooks,
                )
            )
        return infos
