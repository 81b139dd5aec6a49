"""Who is signed in to the console: login tokens, the signed session cookie, CSRF checks, security headers.

A request is served only for a known actor: either the session cookie set by the login link (then every
change must also carry the session's CSRF token, and a cross-site Origin is refused), or an
``Authorization: Bearer <token>`` header for scripts (no cookie, so no CSRF to fear).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..types import Actor

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: No inline script or style, nothing from another origin, no framing: the console needs nothing else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # the login link carries the token: never send it to another site
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
}


class NotSignedIn(Exception):
    """No session and no valid token: the answer is 401, with how to sign in."""


class CsrfRejected(Exception):
    """A change without the session's CSRF token, or from another origin: the answer is 403."""


def token_id(token: str) -> str:
    """What the session keeps instead of the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


@dataclass
class Logins:
    """The login tokens of one console run, each for one actor (tenant and roles)."""

    by_id: dict[str, Actor] = field(default_factory=dict)

    def add(self, actor: Actor, token: str | None = None) -> str:
        """A new random token (or ``token``) that signs in as ``actor``."""
        token = token or secrets.token_urlsafe(24)
        self.by_id[token_id(token)] = actor
        return token

    def actor_for_token(self, token: str) -> tuple[str, Actor] | None:
        wanted = token_id(token)
        for known, actor in self.by_id.items():
            if secrets.compare_digest(known, wanted):
                return known, actor
        return None


def current_actor(request: Request) -> Actor:
    """The signed-in actor, or :class:`NotSignedIn`. CSRF of changes is checked by :func:`check_csrf`."""
    logins: Logins = request.app.state.logins
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        found = logins.actor_for_token(header[7:].strip())
        if found is None:
            raise NotSignedIn("the bearer token is not valid for this console")
        request.state.via_token = True
        return found[1]
    login = request.session.get("login")
    actor = logins.by_id.get(login) if isinstance(login, str) else None
    if actor is None:
        raise NotSignedIn("not signed in")
    request.state.via_token = False
    return actor


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made at sign-in)."""
    token = request.session.get("csrf")
    return token if isinstance(token, str) else ""


async def check_csrf(request: Request) -> None:
    """Refuse a change made with the session cookie unless it carries the session's CSRF token."""
    if request.method in SAFE_METHODS or getattr(request.state, "via_token", False):
        return
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise CsrfRejected(f"cross-site request from {origin[:80]!r} refused")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    expected = csrf_token(request)
    if not sent or not expected or not secrets.compare_digest(sent, expected):
        raise CsrfRejected("the form is missing its CSRF token or it is stale: reload the page and try again")


def sign_in(request: Request, token: str) -> Actor | None:
    """Start a session for ``token``'s actor (a fresh session, so no fixation); None if the token is wrong."""
    found = request.app.state.logins.actor_for_token(token)
    if found is None:
        return None
    request.session.clear()
    request.session["login"] = found[0]
    request.session["csrf"] = secrets.token_urlsafe(24)
    return found[1]


class SecurityHeaders:
    """ASGI middleware adding the Content-Security-Policy and friends to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
