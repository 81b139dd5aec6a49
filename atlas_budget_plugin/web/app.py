"""The console's ASGI application: pages, JSON API, static files, sessions and error answers, wired once."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from .. import __version__
from ..bootstrap import BudgetServices
from ..exceptions import BudgetError
from . import api, pages
from .auth import CsrfRejected, Logins, NotSignedIn, SecurityHeaders, current_actor

HERE = Path(__file__).parent
SESSION_COOKIE = "atlas_budget_session"
SESSION_HOURS = 12


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def error_answer(request: Request, status: int, message: str) -> Response:
    """JSON ``{"error": {...}}`` for the API, an HTML page for the console."""
    if is_api(request):
        return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)
    if status == 401:
        return pages.render(request, "login.html", 401, error=None)
    actor = None
    if "session" in request.scope:
        try:
            actor = current_actor(request)
        except NotSignedIn:
            actor = None
    return pages.render(request, "error.html", status, actor=actor, code=status, message=message)


def create_app(
    services: BudgetServices,
    logins: Logins,
    secret_key: str | None = None,
    poll_seconds: float = 5.0,
) -> FastAPI:
    """The console over ``services``; ``logins`` says which tokens sign in as which actor.

    ``secret_key`` signs the session cookie (a random one by default: sessions end with the process).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.stopping = True  # ends the event streams, so the server can stop

    app = FastAPI(
        lifespan=lifespan,
        title="atlas-budget console API",
        version=__version__,
        description="Budget policies, usage, reports and alerts of ATLAS LLM calls. Money is a decimal string.",
        docs_url=None,  # the interactive docs load scripts from a CDN, which the console never does
        redoc_url=None,
        openapi_url=None,  # served below, behind sign-in like every other route
    )
    app.state.services = services
    app.state.logins = logins
    app.state.poll_seconds = poll_seconds
    app.state.stopping = False
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_key or secrets.token_urlsafe(32),
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_HOURS * 3600,
        same_site="strict",
        https_only=False,
    )
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)

    @app.get("/api/v1/openapi.json", include_in_schema=False)
    def openapi(actor: api.SignedIn) -> dict[str, Any]:
        return app.openapi()

    @app.exception_handler(BudgetError)
    async def budget_error(request: Request, exc: BudgetError) -> Response:
        return error_answer(request, pages.status_of(exc), str(exc))

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, exc: NotSignedIn) -> Response:
        if not is_api(request) and request.method == "GET" and request.url.path == "/":
            return RedirectResponse("/login", status_code=303)
        return error_answer(
            request, 401, f"{exc}: open the login link that 'atlas-budget ui' printed, or send a bearer token"
        )

    @app.exception_handler(CsrfRejected)
    async def csrf_rejected(request: Request, exc: CsrfRejected) -> Response:
        return error_answer(request, 403, str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return error_answer(request, 400, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_answer(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:  # pragma: no cover - a bug
        return error_answer(request, 500, f"internal error {type(exc).__name__}; see the console's log")

    return app
