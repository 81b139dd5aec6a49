"""The ``apprise`` alert sink: Slack, Teams, Discord, e-mail and 100+ services by URL (optional extra).

Install with ``pip install 'atlas-budget-plugin[apprise]'``. Settings::

    [sinks.apprise]
    urls = ["slack://TokenA/TokenB/TokenC/#budget", "mailto://user:pass@example.com"]
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ..hookspecs import hookimpl
from ..settings import BudgetSettings
from ..types import Alert

_config: dict[str, Any] = {"urls": []}

_TYPES = {"info": "info", "warning": "warning", "critical": "failure", "emergency": "failure"}


@hookimpl
def budget_configure(settings: BudgetSettings) -> None:
    section = dict(settings.sinks.get("apprise", {}))
    unknown = set(section) - {"urls"}
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in [sinks.apprise]; allowed: urls")
    urls = section.get("urls", [])
    if isinstance(urls, str):
        urls = [urls]
    if not all(isinstance(u, str) and "://" in u for u in urls):
        raise ValueError("[sinks.apprise] urls must be a list of Apprise URLs such as 'slack://...'")
    _config["urls"] = list(urls)


NEEDS_PACKAGE = "the apprise sink needs the apprise package: pip install 'atlas-budget-plugin[apprise]'"
NO_URLS = "the apprise sink has no urls: set urls under [sinks.apprise] in the settings file"


def sink_problem() -> str | None:
    """Why this sink cannot deliver, checked when an alert names it (None: ready)."""
    if not _config["urls"]:
        return NO_URLS
    if importlib.util.find_spec("apprise") is None:
        return NEEDS_PACKAGE
    return None


@hookimpl
def budget_deliver_alert(alert: Alert) -> None:
    try:
        import apprise
    except ImportError:
        raise RuntimeError(NEEDS_PACKAGE) from None
    urls = _config["urls"]
    if not urls:
        raise RuntimeError(NO_URLS)
    notifier = apprise.Apprise()
    for url in urls:
        if not notifier.add(url):
            raise RuntimeError(f"apprise does not understand one of the [sinks.apprise] urls (#{urls.index(url) + 1})")
    title = f"[{alert.severity}] budget {alert.policy}"
    if not notifier.notify(body=alert.message, title=title, notify_type=_TYPES.get(alert.severity, "warning")):
        raise RuntimeError(f"apprise could not notify {len(urls)} url(s)")
