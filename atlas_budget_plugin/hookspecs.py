"""The budget plugin's own hooks (project ``atlas_budget``) for alert sinks, event bridges and pricing."""

from __future__ import annotations

from decimal import Decimal

import pluggy

from hookspecs import LLMCall, LLMUsage

from .settings import BudgetSettings
from .types import Alert, BudgetEvent

PROJECT = "atlas_budget"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def budget_configure(settings: BudgetSettings) -> None:
    """Called once when the budget services start, after every plugin is registered.

    A plugin reads its own section here, e.g. ``settings.sinks.get("webhook", {})``
    for ``[sinks.webhook]`` in the settings file, and should check it (raise to
    refuse bad configuration: the error names the plugin and stops start-up).

    :param settings: the settings the services were built from.
    :return: nothing.
    """


@hookspec
def budget_deliver_alert(alert: Alert) -> None:
    """Deliver a triggered alert (chat, mail, desktop notification, ...).

    Called off the call path, once per sink the alert's config names (every sink
    when it names none); a sink is named by its plugin name, which is its
    entry-point name. Raise to say delivery failed: the plugin retries with
    backoff and records the failure.

    :param alert: the triggered alert.
    :return: nothing.
    """


@hookspec
def budget_event(event: BudgetEvent) -> None:
    """Receive every ``budget.*`` event (e.g. to bridge them into the host's own bus).

    Called after the change the event describes is stored. An exception is
    logged and does not affect the budget or other plugins.

    :param event: the event; ``event.topic`` names it (``budget.usage_recorded``, ...).
    :return: nothing.
    """


@hookspec(firstresult=True)
def budget_price(call: LLMCall, usage: LLMUsage) -> Decimal | None:
    """Price a call the catalogue does not know (local models, negotiated rates).

    Called before the settings' price overrides and the genai-prices catalogue,
    and only when the provider reported no cost. For a pre-flight estimate
    ``usage`` holds the estimated tokens. The first non-``None`` answer wins.

    :param call: the call being priced.
    :param usage: its (estimated or actual) usage.
    :return: the cost as a ``Decimal``, or ``None`` to let the next source price it.
    """
