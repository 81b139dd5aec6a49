"""The console's versioned JSON API (``/api/v1``): policies, usage, reports and alerts over the three services.

Each route calls one service method with the signed-in actor, so the services check roles and tenants. Money
is a decimal string. Errors are ``{"error": {"status": ..., "message": ...}}`` with 400 (the service's
message), 401, 403, 404 or 409.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import BaseModel

from ..bootstrap import BudgetServices
from ..exceptions import ValidationError
from ..export import FORMATS, render, trend_svg
from ..types import MAX_LIST_LIMIT, Actor, Alert, AlertConfig, Delivery, Policy, UsageRecord
from .auth import check_csrf, current_actor
from .queries import (
    MAX_EXPORT_ROWS,
    MAX_PAGE,
    REPORTS,
    ReportQuery,
    UsageQuery,
    parse_int,
    parse_time,
    run_report,
    standing,
    usage_page,
    usage_rows,
)

MEDIA_TYPES = {"json": "application/json", "csv": "text/csv", "markdown": "text/markdown", "html": "text/html"}
EXTENSIONS = {"json": "json", "csv": "csv", "markdown": "md", "html": "html"}
MAX_SNOOZE = timedelta(days=365)


async def signed_in(request: Request) -> Actor:
    """The actor of the request; changes made with the session cookie must carry the CSRF token."""
    actor = current_actor(request)
    await check_csrf(request)
    return actor


def services_of(request: Request) -> BudgetServices:
    services: BudgetServices = request.app.state.services
    return services


SignedIn = Annotated[Actor, Depends(signed_in)]
Services = Annotated[BudgetServices, Depends(services_of)]
router = APIRouter(prefix="/api/v1")


class Me(BaseModel):
    id: str
    tenant: str
    roles: list[str]


class UsagePage(BaseModel):
    items: list[UsageRecord]
    next_cursor: str | None


class ErrorBody(BaseModel):
    status: int
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "invalid input: the message names the field",
        401: "not signed in",
        403: "the role does not allow it, or the CSRF token is missing",
        404: "no such object in the actor's tenant",
        409: "conflicts with stored state (duplicate name, stale version)",
    }.items()
}


def export_response(report: Any, fmt: str, title: str, name: str) -> Response:
    """``report`` rendered by the library's exporter (CSV cells that look like formulas are neutralised)."""
    if fmt not in FORMATS:
        raise ValidationError(f"unknown export format {fmt[:20]!r}; formats: {', '.join(FORMATS)}")
    return Response(
        render(report, fmt, title),
        media_type=MEDIA_TYPES[fmt],
        headers={"content-disposition": f'attachment; filename="{name}.{EXTENSIONS[fmt]}"'},
    )


@router.get("/me", response_model=Me, responses=ERRORS)
def me(actor: SignedIn) -> Me:
    """Who is signed in: id, tenant and roles."""
    return Me(id=actor.id, tenant=actor.tenant, roles=sorted(actor.roles))


# -- policies -----------------------------------------------------------------------------------------------------


@router.get("/policies", response_model=list[Policy], responses=ERRORS, tags=["policies"])
def list_policies(actor: SignedIn, services: Services, request: Request) -> list[Policy]:
    """The tenant's policies; query parameters are scope keys a policy's scope must include (``actor=alice``)."""
    scope = {k: v for k, v in request.query_params.items()}
    return services.policies.list_policies(actor, scope or None)


@router.post("/policies", status_code=201, response_model=Policy, responses=ERRORS, tags=["policies"])
def create_policy(actor: SignedIn, services: Services, policy: Annotated[dict[str, Any], Body()]) -> Policy:
    """Create a policy (``budget:write``): ``{"name": ..., "limit": "20.00", "period": "month", "scope": {...}}``."""
    return services.policies.create_policy(actor, policy)


@router.get("/policies/{policy_id}", response_model=Policy, responses=ERRORS, tags=["policies"])
def get_policy(actor: SignedIn, services: Services, policy_id: int) -> Policy:
    return services.policies.get_policy(actor, policy_id)


@router.patch("/policies/{policy_id}", response_model=Policy, responses=ERRORS, tags=["policies"])
def update_policy(
    actor: SignedIn, services: Services, policy_id: int, updates: Annotated[dict[str, Any], Body()]
) -> Policy:
    """Change fields of a policy (``budget:write``); give ``"version"`` to refuse lost updates with 409."""
    return services.policies.update_policy(actor, policy_id, updates)


@router.delete("/policies/{policy_id}", status_code=204, responses=ERRORS, tags=["policies"])
def delete_policy(actor: SignedIn, services: Services, policy_id: int) -> Response:
    services.policies.delete_policy(actor, policy_id)
    return Response(status_code=204)


@router.get("/policies/{policy_id}/standing", responses=ERRORS, tags=["policies"])
def policy_standing(actor: SignedIn, services: Services, policy_id: int) -> dict[str, Any]:
    """Spent, reserved (when the service offers it), limit and projection in the policy's current window."""
    return standing(services, actor, services.policies.get_policy(actor, policy_id)).as_dict()


@router.get("/audit", responses=ERRORS, tags=["policies"])
def audit(
    actor: SignedIn, services: Services, limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100
) -> list[dict[str, Any]]:
    """Who changed which policy, when, before and after (``budget:admin``)."""
    return services.policies.audit_trail(actor, limit)


# -- usage --------------------------------------------------------------------------------------------------------

USAGE_FILTERS = (
    "Filters: provider, model, operation, category, actor (exact values); tag (``team=x, env=prod``); "
    "since and until (ISO times, UTC unless given)."
)


@router.get("/usage", response_model=UsagePage, responses=ERRORS, tags=["usage"], description=USAGE_FILTERS)
def list_usage(actor: SignedIn, services: Services, request: Request) -> UsagePage:
    """Recorded calls, newest first, one page at a time: pass ``next_cursor`` back as ``cursor``."""
    params = dict(request.query_params)
    limit = parse_int(params.pop("limit", None), "limit", 1, MAX_PAGE, 50)
    cursor = params.pop("cursor", None)
    items, next_cursor = usage_page(services, actor, UsageQuery.parse(params), limit, cursor)
    return UsagePage(items=items, next_cursor=next_cursor)


@router.get("/usage/export", responses=ERRORS, tags=["usage"], description=USAGE_FILTERS)
def export_usage(actor: SignedIn, services: Services, request: Request) -> Response:
    """The filtered calls as CSV, JSON, Markdown or HTML (``format``; at most ``limit`` rows, 100000)."""
    params = dict(request.query_params)
    fmt = params.pop("format", "csv")
    limit = parse_int(params.pop("limit", None), "limit", 1, MAX_EXPORT_ROWS, 10_000)
    rows = usage_rows(services, actor, UsageQuery.parse(params), limit)
    return export_response(rows, fmt, "usage", "usage")


# -- reports ------------------------------------------------------------------------------------------------------

REPORT_PARAMS = (
    "Parameters: period (hour, day, week, month, quarter, year, total, rolling:<N>h/d), scope (``actor=alice``), "
    "timezone; by: dimension; trend: granularity (hour, day, week, month) and periods."
)


@router.get("/reports/{kind}", responses=ERRORS, tags=["reports"], description=REPORT_PARAMS)
def report(actor: SignedIn, services: Services, request: Request, kind: str) -> Any:
    """One report: ``summary``, ``by``, ``trend``, ``compare`` or ``projection``, as JSON."""
    found, _ = run_report(services, actor, kind, ReportQuery.parse(dict(request.query_params)))
    return found


@router.get("/reports/{kind}/export", responses=ERRORS, tags=["reports"], description=REPORT_PARAMS)
def export_report(actor: SignedIn, services: Services, request: Request, kind: str) -> Response:
    """A report in any export format (``format``: json, csv, markdown, html, and svg for the trend)."""
    params = dict(request.query_params)
    fmt = params.pop("format", "csv")
    query = ReportQuery.parse(params)
    found, title = run_report(services, actor, kind, query)
    if fmt == "svg":
        if kind != "trend":
            raise ValidationError("only the trend report is drawn as svg")
        return Response(
            trend_svg(found, title, query.granularity),
            media_type="image/svg+xml",
            headers={"content-disposition": 'attachment; filename="trend.svg"'},
        )
    return export_response(found, fmt, title, kind if kind in REPORTS else "report")


# -- alerts -------------------------------------------------------------------------------------------------------


@router.get("/alerts/configs", response_model=list[AlertConfig], responses=ERRORS, tags=["alerts"])
def list_alert_configs(actor: SignedIn, services: Services) -> list[AlertConfig]:
    return services.alerts.list_alerts(actor)


@router.post("/alerts/configs", status_code=201, response_model=AlertConfig, responses=ERRORS, tags=["alerts"])
def configure_alert(actor: SignedIn, services: Services, config: Annotated[dict[str, Any], Body()]) -> AlertConfig:
    """Add an alert on a policy (``budget:write``): ``{"policy": "team-monthly", "threshold": 80}``."""
    return services.alerts.configure_alert(actor, config)


@router.delete("/alerts/configs/{alert_id}", status_code=204, responses=ERRORS, tags=["alerts"])
def remove_alert(actor: SignedIn, services: Services, alert_id: int) -> Response:
    services.alerts.remove_alert(actor, alert_id)
    return Response(status_code=204)


def snooze_until(hours: Any, until: Any) -> datetime:
    """The end of a snooze from ``hours`` (up to a year) or an ISO ``until`` time."""
    if (hours in (None, "")) == (until in (None, "")):
        raise ValidationError("give exactly one of hours or until")
    if until not in (None, ""):
        moment = parse_time(str(until), "until")
        assert moment is not None
        return moment
    hours_value = parse_int(hours, "hours", 1, 365 * 24, 1)
    return datetime.now(timezone.utc) + timedelta(hours=hours_value)


@router.post("/alerts/configs/{alert_id}/snooze", response_model=AlertConfig, responses=ERRORS, tags=["alerts"])
def snooze_alert(
    actor: SignedIn, services: Services, alert_id: int, body: Annotated[dict[str, Any], Body()]
) -> AlertConfig:
    """Keep an alert configuration quiet: ``{"hours": 24}`` or ``{"until": "2026-12-01T09:00+00:00"}``."""
    return services.alerts.snooze_alert(actor, alert_id, snooze_until(body.get("hours"), body.get("until")))


def alerts_in_state(services: BudgetServices, actor: Actor, state: str, limit: int) -> list[Alert]:
    """Triggered alerts: ``active`` (neither acknowledged nor resolved), ``acknowledged`` or ``all``."""
    if state == "active":
        return services.alerts.get_active_alerts(actor)[:limit]
    if state not in ("acknowledged", "all"):
        raise ValidationError(f"unknown alert state {state[:20]!r}; states: active, acknowledged, all")
    history = services.alerts.get_alert_history(actor, limit)
    return [a for a in history if a.acknowledged_at is not None] if state == "acknowledged" else history


@router.get("/alerts", response_model=list[Alert], responses=ERRORS, tags=["alerts"])
def list_triggered(
    actor: SignedIn,
    services: Services,
    state: str = "active",
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
) -> list[Alert]:
    """Triggered alerts, newest first: ``state`` active (default), acknowledged or all."""
    return alerts_in_state(services, actor, state, limit)


@router.post("/alerts/{alert_id}/resolve", response_model=Alert, responses=ERRORS, tags=["alerts"])
def resolve(actor: SignedIn, services: Services, alert_id: int) -> Alert:
    """Close a triggered alert by hand (``budget:write``); audited, and it does not fire again this window."""
    return services.alerts.resolve_alert(actor, alert_id)


@router.post("/alerts/{alert_id}/acknowledge", response_model=Alert, responses=ERRORS, tags=["alerts"])
def acknowledge(actor: SignedIn, services: Services, alert_id: int) -> Alert:
    """Mark a triggered alert as seen (``budget:write``)."""
    return services.alerts.acknowledge_alert(actor, alert_id)


@router.get("/alerts/deliveries", response_model=list[Delivery], responses=ERRORS, tags=["alerts"])
def deliveries(
    actor: SignedIn,
    services: Services,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> list[Delivery]:
    """Deliveries of alerts to sinks: pending and failed by default, or those of one ``status``."""
    if status == "all":
        return services.alerts.deliveries(actor)[:limit]
    return services.alerts.list_deliveries(actor, status or None, limit)
