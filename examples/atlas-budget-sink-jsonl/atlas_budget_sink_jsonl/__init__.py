"""An example third-party alert sink: appends each alert as one JSON line to a file.

Settings (in the budget settings file)::

    [sinks.jsonl]
    path = "~/atlas-budget-alerts.jsonl"
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from atlas_budget_plugin.hookspecs import hookimpl

_path: Path | None = None


@hookimpl
def budget_configure(settings):  # type: ignore[no-untyped-def]
    """Read ``[sinks.jsonl] path``; refuse a section without one."""
    global _path
    section = settings.sinks.get("jsonl")
    if section is None:
        _path = None
        return
    if "path" not in section:
        raise ValueError('[sinks.jsonl] needs path = "/where/alerts/go.jsonl"')
    _path = Path(section["path"]).expanduser()


@hookimpl
def budget_deliver_alert(alert):  # type: ignore[no-untyped-def]
    """Append the alert; raising tells the budget plugin to retry later."""
    if _path is None:
        raise RuntimeError("the jsonl sink is not configured: add [sinks.jsonl] path = ... to the settings")
    _path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(alert.model_dump(mode="json"), sort_keys=True) + "\n"
    with _path.open("a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
