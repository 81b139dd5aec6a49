"""Serving the console: a login token, a socket on a loopback address unless told otherwise, and uvicorn."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from ..bootstrap import BudgetServices
from ..types import Actor
from .app import create_app
from .auth import Logins


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port); OSError when it is taken."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def login_url(host: str, port: int, token: str) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/login?token={token}"


def serve(
    services: BudgetServices,
    actor: Actor,
    sock: socket.socket,
    announce: Callable[[str], None],
    token: str | None = None,
) -> None:
    """Serve the console on ``sock`` until interrupted; ``announce`` gets the login link."""
    import uvicorn

    logins = Logins()
    token = logins.add(actor, token)
    host, port = sock.getsockname()[:2]
    app = create_app(services, logins)
    announce(login_url(str(host), int(port), token))
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
