"""The ``webhook`` alert sink: POSTs each alert as JSON, signed with HMAC-SHA256 when a secret is set.

Settings::

    [sinks.webhook]
    url = "https://hooks.example.com/budget"
    secret = "..."        # optional: adds X-Atlas-Budget-Signature: sha256=<hex HMAC of the body>
    timeout = 5           # seconds; a slow endpoint fails the attempt, which is retried later
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from ..hookspecs import hookimpl
from ..settings import BudgetSettings
from ..types import Alert

SIGNATURE_HEADER = "X-Atlas-Budget-Signature"

_config: dict[str, Any] = {}


def payload(alert: Alert) -> dict[str, Any]:
    """The JSON body: the alert's fields, money as decimal strings, times in ISO 8601."""
    return {"type": "budget.alert", **alert.model_dump(mode="json")}


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _where(url: str) -> str:
    """The URL without credentials, path or query, safe to log."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}"


@hookimpl
def budget_configure(settings: BudgetSettings) -> None:
    section = dict(settings.sinks.get("webhook", {}))
    unknown = set(section) - {"url", "secret", "timeout"}
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in [sinks.webhook]; allowed: url, secret, timeout")
    url = section.get("url")
    if url is not None and urlsplit(str(url)).scheme not in ("http", "https"):
        raise ValueError("[sinks.webhook] url must start with http:// or https://")
    timeout = section.get("timeout", 5)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"[sinks.webhook] timeout must be a positive number of seconds, got {timeout!r}")
    _config.clear()
    _config.update(url=url, secret=section.get("secret"), timeout=float(timeout))


NO_URL = (
    "the webhook sink has no URL: set url under [sinks.webhook] in the settings file "
    "(or ATLAS_BUDGET_SINKS__WEBHOOK__URL)"
)


def sink_problem() -> str | None:
    """Why this sink cannot deliver, checked when an alert names it (None: ready)."""
    return None if _config.get("url") else NO_URL


@hookimpl
def budget_deliver_alert(alert: Alert) -> None:
    url = _config.get("url")
    if not url:
        raise RuntimeError(NO_URL)
    body = json.dumps(payload(alert), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "atlas-budget-plugin"}
    if _config.get("secret"):
        headers[SIGNATURE_HEADER] = sign(str(_config["secret"]), body)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=_config.get("timeout", 5.0)) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"webhook {_where(url)} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RuntimeError(f"webhook {_where(url)} unreachable: {reason}") from None
