"""The console's HTML pages: dashboard, policies, history, reports and alerts, server-rendered with Jinja.

Every value reaches the page through Jinja's autoescaping. A form is offered only when the actor's role
allows it, and the service checks the role again; a refused change re-renders the page with the service's
message and the matching status (400, 403, 404, 409).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from ..bootstrap import BudgetServices
from ..exceptions import BudgetError, ConflictError, NotFoundError, PermissionDenied, ValidationError
from ..export import bucket_label, trend_svg
from ..types import CALL_DIMENSIONS, Actor, BudgetEvent, Policy
from .api import alerts_in_state, services_of, signed_in, snooze_until
from .auth import csrf_token, sign_in
from .queries import (
    GRANULARITIES,
    MAX_PAGE,
    ReportQuery,
    UsageQuery,
    can,
    parse_int,
    parse_pairs,
    run_report,
    scope_dict,
    scope_text,
    standing,
    usage_page,
)

HERE = Path(__file__).parent
templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
PERIODS = ("hour", "day", "week", "month", "quarter", "year")
ENFORCEMENTS = ("block", "soft_block", "warn", "degrade")
STATUS = {ValidationError: 400, PermissionDenied: 403, NotFoundError: 404, ConflictError: 409}

SignedIn = Annotated[Actor, Depends(signed_in)]
Services = Annotated[BudgetServices, Depends(services_of)]
router = APIRouter()


def status_of(exc: BudgetError) -> int:
    for kind, code in STATUS.items():
        if isinstance(exc, kind):
            return code
    return 503  # the store is unavailable, or another error of the services


def money(value: Decimal | None) -> str:
    return "–" if value is None else format(value, "f")


def when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


templates.filters["money"] = money
templates.filters["when"] = when
templates.filters["qs"] = lambda params: urlencode({k: v for k, v in params.items() if v not in (None, "")})


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page: the template with the actor, what its role allows, the CSRF token and any flash message."""
    actor: Actor | None = context.pop("actor", None)
    flash = request.session.pop("flash", None) if "session" in request.scope else None
    html = templates.get_template(name).render(
        request=request,
        actor=actor,
        can_write=bool(actor and can(actor, "budget:write")),
        can_admin=bool(actor and can(actor, "budget:admin")),
        csrf=csrf_token(request) if "session" in request.scope else "",
        flash=flash,
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code=status)


def done(request: Request, message: str, to: str) -> RedirectResponse:
    """After a change: back to a page (303, so a reload does not post again) with a message."""
    request.session["flash"] = message
    return RedirectResponse(to, status_code=303)


async def form_of(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


# -- sign in ------------------------------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login(request: Request, token: str | None = None) -> Response:
    """The login link (``/login?token=...``) starts a session; without a token, a form asks for one."""
    if token:
        if sign_in(request, token) is not None:
            return RedirectResponse("/", status_code=303)
        return render(request, "login.html", 401, error="That token is not valid for this console.")
    return render(request, "login.html", 401)


@router.post("/logout", include_in_schema=False)
def logout(request: Request, actor: SignedIn) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


# -- dashboard ----------------------------------------------------------------------------------------------------


def dashboard_context(services: BudgetServices, actor: Actor, period: str) -> dict[str, Any]:
    summary = services.tracking.get_usage_summary(None, period, actor=actor)
    policies = services.policies.list_policies(actor)
    standings = [standing(services, actor, p) for p in policies]
    limit = summary.limit
    return {
        "period": period,
        "periods": PERIODS,
        "summary": summary,
        "remaining": None if limit is None else limit - summary.total_cost,
        "standings": standings,
        "active_policies": sum(1 for p in policies if p.enabled),
        "alerts": services.alerts.get_active_alerts(actor)[:5],
        "calls": services.tracking.list_usage(actor, 10),
    }


def dashboard_period(request: Request) -> str:
    period = request.query_params.get("period", "month")
    if period not in PERIODS:
        raise ValidationError(f"unknown period {period[:20]!r}; periods: {', '.join(PERIODS)}")
    return period


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard(request: Request, actor: SignedIn, services: Services) -> Response:
    context = dashboard_context(services, actor, dashboard_period(request))
    return render(request, "dashboard.html", actor=actor, **context)


@router.get("/partials/dashboard", response_class=HTMLResponse, include_in_schema=False)
def dashboard_live(request: Request, actor: SignedIn, services: Services) -> Response:
    """The live part of the dashboard, fetched again by the page's script on every ``budget.*`` event."""
    context = dashboard_context(services, actor, dashboard_period(request))
    return render(request, "dashboard_live.html", actor=actor, **context)


@router.get("/events", include_in_schema=False)
async def events(request: Request, actor: SignedIn, services: Services) -> StreamingResponse:
    """Server-sent events: the topic of every ``budget.*`` event of the actor's tenant.

    Events of this process come from the bus at once; calls recorded by other processes (ATLAS itself)
    are noticed by polling the newest usage record every ``poll_seconds``.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=100)
    poll: float = request.app.state.poll_seconds

    def on_event(event: BudgetEvent) -> None:
        if event.tenant == actor.tenant:
            loop.call_soon_threadsafe(_offer, queue, event.topic)

    def newest() -> str | None:
        rows = services.tracking.list_usage(actor, 1)
        return rows[0].call_id if rows else None

    async def stream() -> AsyncIterator[str]:
        unsubscribe = services.bus.subscribe("budget.*", on_event)
        try:
            last = await run_in_threadpool(newest)
            yield "retry: 3000\n\n"
            while not request.app.state.stopping:
                try:
                    topic = await asyncio.wait_for(queue.get(), timeout=poll)
                except TimeoutError:
                    latest = await run_in_threadpool(newest)
                    if latest == last:
                        yield ": keep-alive\n\n"
                        continue
                    last, topic = latest, "budget.usage_recorded"
                yield f"event: budget\ndata: {json.dumps({'topic': topic})}\n\n"
        finally:
            unsubscribe()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})


def _offer(queue: asyncio.Queue[str], topic: str) -> None:
    if not queue.full():
        queue.put_nowait(topic)


# -- policies -----------------------------------------------------------------------------------------------------


def policy_from_form(form: dict[str, str]) -> dict[str, Any]:
    """A policy (or its changes) from the form: text as typed, so the service's messages name the field."""
    data: dict[str, Any] = {
        "name": form.get("name", "").strip(),
        "limit": form.get("limit", "").strip(),
        "period": form.get("period", "month").strip(),
        "timezone": form.get("timezone", "UTC").strip() or "UTC",
        "currency": form.get("currency", "USD").strip() or "USD",
        "enforcement": form.get("enforcement") or None,
        "thresholds": [p.strip() for p in form.get("thresholds", "").split(",") if p.strip()],
        "rollover_cap": form.get("rollover_cap", "").strip() or "0",
        "priority": form.get("priority", "").strip() or "0",
        "enabled": form.get("enabled") == "on",
        "scope": scope_dict(parse_pairs(form.get("scope"), "scope")),
    }
    return data


def policy_form_values(policy: Policy | None) -> dict[str, str]:
    if policy is None:
        return {"period": "month", "timezone": "UTC", "currency": "USD", "thresholds": "50, 80, 100", "enabled": "on"}
    return {
        "name": policy.name,
        "limit": money(policy.limit),
        "period": policy.period,
        "timezone": policy.timezone,
        "currency": policy.currency,
        "enforcement": policy.enforcement or "",
        "thresholds": ", ".join(str(t) for t in policy.thresholds),
        "rollover_cap": money(policy.rollover_cap),
        "priority": str(policy.priority),
        "enabled": "on" if policy.enabled else "",
        "scope": scope_text(policy),
        "version": str(policy.version),
    }


def policies_page(
    request: Request, actor: Actor, services: BudgetServices, status: int = 200, **extra: Any
) -> HTMLResponse:
    extra.setdefault("form", policy_form_values(None))
    return render(
        request,
        "policies.html",
        status,
        actor=actor,
        policies=services.policies.list_policies(actor),
        enforcements=ENFORCEMENTS,
        scope_text=scope_text,
        **extra,
    )


@router.get("/policies", response_class=HTMLResponse, include_in_schema=False)
def policies(request: Request, actor: SignedIn, services: Services) -> Response:
    return policies_page(request, actor, services)


@router.post("/policies", response_class=HTMLResponse, include_in_schema=False)
async def create_policy(request: Request, actor: SignedIn, services: Services) -> Response:
    form = await form_of(request)
    try:
        created = await run_in_threadpool(services.policies.create_policy, actor, policy_from_form(form))
    except BudgetError as exc:
        return policies_page(request, actor, services, status_of(exc), error=str(exc), form=form)
    return done(request, f"Created policy {created.name}.", "/policies")


def policy_page(
    request: Request, actor: Actor, services: BudgetServices, policy: Policy, status: int = 200, **extra: Any
) -> HTMLResponse:
    audit: list[dict[str, Any]] = []
    if can(actor, "budget:admin"):
        audit = [e for e in services.policies.audit_trail(actor, 1000) if str(e["object_id"]) == str(policy.id)]
    extra.setdefault("form", policy_form_values(policy))
    return render(
        request,
        "policy.html",
        status,
        actor=actor,
        policy=policy,
        standing=standing(services, actor, policy),
        audit=audit,
        enforcements=ENFORCEMENTS,
        **extra,
    )


@router.get("/policies/{policy_id}", response_class=HTMLResponse, include_in_schema=False)
def policy_detail(request: Request, actor: SignedIn, services: Services, policy_id: int) -> Response:
    return policy_page(request, actor, services, services.policies.get_policy(actor, policy_id))


@router.post("/policies/{policy_id}", response_class=HTMLResponse, include_in_schema=False)
async def update_policy(request: Request, actor: SignedIn, services: Services, policy_id: int) -> Response:
    form = await form_of(request)
    try:
        updates = policy_from_form(form)
        updates["version"] = parse_int(form.get("version"), "version", 0, 2**31 - 1, 0)
        updated = await run_in_threadpool(services.policies.update_policy, actor, policy_id, updates)
    except ConflictError as exc:
        current = services.policies.get_policy(actor, policy_id)
        message = (
            f"Not saved: {exc}. Someone changed this policy after you opened it; the form now shows the "
            f"stored values (version {current.version}). Make your change again and save."
        )
        return policy_page(request, actor, services, current, 409, error=message)
    except BudgetError as exc:
        current = services.policies.get_policy(actor, policy_id)
        return policy_page(request, actor, services, current, status_of(exc), error=str(exc), form=form)
    return done(request, f"Saved policy {updated.name} (version {updated.version}).", f"/policies/{policy_id}")


@router.post("/policies/{policy_id}/enabled", include_in_schema=False)
async def toggle_policy(request: Request, actor: SignedIn, services: Services, policy_id: int) -> Response:
    form = await form_of(request)
    enable = form.get("enabled") == "true"
    try:
        version = parse_int(form.get("version"), "version", 0, 2**31 - 1, 0)
        changed = await run_in_threadpool(
            services.policies.update_policy, actor, policy_id, {"enabled": enable, "version": version}
        )
    except BudgetError as exc:
        return policies_page(request, actor, services, status_of(exc), error=str(exc))
    return done(request, f"{'Enabled' if enable else 'Disabled'} policy {changed.name}.", "/policies")


@router.post("/policies/{policy_id}/delete", include_in_schema=False)
async def delete_policy(request: Request, actor: SignedIn, services: Services, policy_id: int) -> Response:
    try:
        name = services.policies.get_policy(actor, policy_id).name
        await run_in_threadpool(services.policies.delete_policy, actor, policy_id)
    except BudgetError as exc:
        return policies_page(request, actor, services, status_of(exc), error=str(exc))
    return done(request, f"Deleted policy {name}.", "/policies")


# -- history ------------------------------------------------------------------------------------------------------


@router.get("/history", response_class=HTMLResponse, include_in_schema=False)
def history(request: Request, actor: SignedIn, services: Services) -> Response:
    params = dict(request.query_params)
    cursor = params.pop("cursor", None)
    try:
        limit = parse_int(params.pop("limit", None), "limit", 1, MAX_PAGE, 50)
        query = UsageQuery.parse(params)
        rows, next_cursor = usage_page(services, actor, query, limit, cursor)
    except ValidationError as exc:
        return render(
            request,
            "history.html",
            400,
            actor=actor,
            error=str(exc),
            rows=[],
            filters=params,
            dimensions=CALL_DIMENSIONS,
        )
    filters = query.params()
    return render(
        request,
        "history.html",
        actor=actor,
        rows=rows,
        filters=filters,
        shown={**filters, "tag": params.get("tag", "")},
        limit=limit,
        next_cursor=next_cursor,
        first_page=cursor is None,
        dimensions=CALL_DIMENSIONS,
    )


# -- reports ------------------------------------------------------------------------------------------------------


@router.get("/reports", response_class=HTMLResponse, include_in_schema=False)
def reports(request: Request, actor: SignedIn, services: Services) -> Response:
    params = dict(request.query_params)
    context: dict[str, Any] = {"dimensions": CALL_DIMENSIONS, "granularities": GRANULARITIES, "periods": PERIODS}
    try:
        query = ReportQuery.parse(params)
        summary, _ = run_report(services, actor, "summary", query)
        by, _ = run_report(services, actor, "by", query)
        trend, trend_title = run_report(services, actor, "trend", query)
        compare = projection = None
        notes = []
        for kind in ("compare", "projection"):
            try:
                context[kind], _ = run_report(services, actor, kind, query)
            except ValidationError as exc:  # e.g. a lifetime period has no previous period and no end
                notes.append(str(exc))
    except ValidationError as exc:
        return render(request, "reports.html", 400, actor=actor, error=str(exc), q=params, **context)
    chart = Markup(trend_svg(trend, trend_title, query.granularity))
    context.setdefault("compare", compare)
    context.setdefault("projection", projection)
    return render(
        request,
        "reports.html",
        actor=actor,
        q=query.params(),
        summary=summary,
        by=by,
        trend=trend,
        chart=chart,
        notes=notes,
        label=lambda start: bucket_label(start, query.granularity),
        **context,
    )


# -- alerts -------------------------------------------------------------------------------------------------------


def alerts_page(
    request: Request, actor: Actor, services: BudgetServices, status: int = 200, **extra: Any
) -> HTMLResponse:
    state = request.query_params.get("state", "active")
    if state not in ("active", "acknowledged", "all"):
        state = "active"
    return render(
        request,
        "alerts.html",
        status,
        actor=actor,
        state=state,
        alerts=alerts_in_state(services, actor, state, 200),
        configs=services.alerts.list_alerts(actor),
        deliveries=services.alerts.deliveries(actor)[-200:],
        policies=services.policies.list_policies(actor),
        now=datetime.now(timezone.utc),
        **extra,
    )


@router.get("/alerts", response_class=HTMLResponse, include_in_schema=False)
def alerts(request: Request, actor: SignedIn, services: Services) -> Response:
    return alerts_page(request, actor, services)


@router.post("/alerts/{alert_id}/acknowledge", include_in_schema=False)
async def acknowledge(request: Request, actor: SignedIn, services: Services, alert_id: int) -> Response:
    try:
        acked = await run_in_threadpool(services.alerts.acknowledge_alert, actor, alert_id)
    except BudgetError as exc:
        return alerts_page(request, actor, services, status_of(exc), error=str(exc))
    return done(request, f"Acknowledged alert {acked.id} ({acked.policy}).", "/alerts")


@router.post("/alerts/{alert_id}/resolve", include_in_schema=False)
async def resolve(request: Request, actor: SignedIn, services: Services, alert_id: int) -> Response:
    try:
        resolved = await run_in_threadpool(services.alerts.resolve_alert, actor, alert_id)
    except BudgetError as exc:
        return alerts_page(request, actor, services, status_of(exc), error=str(exc))
    return done(request, f"Resolved alert {resolved.id} ({resolved.policy}).", "/alerts")


@router.post("/alerts/configs", include_in_schema=False)
async def add_alert(request: Request, actor: SignedIn, services: Services) -> Response:
    form = await form_of(request)
    config = {
        "policy": form.get("policy", ""),
        "threshold": form.get("threshold", "").strip(),
        "kind": form.get("kind", "actual"),
        "severity": form.get("severity", "warning"),
        "sinks": [s.strip() for s in form.get("sinks", "").split(",") if s.strip()],
        "cooldown": form.get("cooldown", "").strip() or "0",
    }
    try:
        created = await run_in_threadpool(services.alerts.configure_alert, actor, config)
    except BudgetError as exc:
        return alerts_page(request, actor, services, status_of(exc), error=str(exc), form=form)
    return done(request, f"Added alert {created.id} on {created.policy} at {created.threshold}%.", "/alerts")


@router.post("/alerts/configs/{alert_id}/remove", include_in_schema=False)
async def remove_alert(request: Request, actor: SignedIn, services: Services, alert_id: int) -> Response:
    try:
        await run_in_threadpool(services.alerts.remove_alert, actor, alert_id)
    except BudgetError as exc:
        return alerts_page(request, actor, services, status_of(exc), error=str(exc))
    return done(request, f"Removed alert configuration {alert_id}.", "/alerts")


@router.post("/alerts/configs/{alert_id}/snooze", include_in_schema=False)
async def snooze_alert(request: Request, actor: SignedIn, services: Services, alert_id: int) -> Response:
    form = await form_of(request)
    try:
        until = snooze_until(form.get("hours"), form.get("until"))
        config = await run_in_threadpool(services.alerts.snooze_alert, actor, alert_id, until)
    except BudgetError as exc:
        return alerts_page(request, actor, services, status_of(exc), error=str(exc))
    return done(request, f"Snoozed alert configuration {config.id} until {when(config.snoozed_until)} UTC.", "/alerts")
