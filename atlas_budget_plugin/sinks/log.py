"""The ``log`` alert sink: writes each alert to the ``atlas_budget_plugin.alerts`` logger."""

from __future__ import annotations

import logging

from ..hookspecs import hookimpl
from ..types import Alert

log = logging.getLogger("atlas_budget_plugin.alerts")

LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL, "emergency": logging.CRITICAL}


@hookimpl
def budget_deliver_alert(alert: Alert) -> None:
    log.log(LEVELS.get(alert.severity, logging.WARNING), "[%s] %s", alert.severity, alert.message)
