"""A database that hangs must not hang ATLAS: every call is answered within the store timeouts.

A black-hole proxy accepts TCP connections and then forwards nothing (it never resets them), in
front of nothing at all or, after the connection is made, in front of the real server. Calls are
answered per ``on_store_error`` within the configured timeouts (plus a margin), and the verdict
names the timeout. Timeouts are 1 s here to keep the tests short.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.plugin import BudgetPlugin
from atlas_budget_plugin.store import open_database
from atlas_budget_plugin.store.database import StoreTimeout
from hookspecs import LLMCall, LLMUsage, Verdict

from ..backends import MYSQL_URL, POSTGRES_URL, server_url
from ..proxy import Proxy

pytestmark = pytest.mark.slow  # each test waits out a timeout or two

TIMEOUTS = {"store_connect_timeout": 1, "store_statement_timeout": 1, "store_lock_timeout": 1}
#: libpq rounds the connect timeout to whole seconds, and the client cuts a PostgreSQL statement
#: 1 s after its server-side timeout (database.CLIENT_GRACE): answers must come within this.
LIMIT = 1 + 1 + 1.5

URLS = {"postgres": POSTGRES_URL, "mysql": MYSQL_URL}
ids = itertools.count()


def call() -> LLMCall:
    return LLMCall(
        call_id=f"t{next(ids)}", provider="openai", model="gpt-4o", actor="alice", estimated_cost=Decimal("0.01")
    )


def through(url: str, port: int) -> str:
    """``url`` with its host and port replaced by 127.0.0.1:``port``."""
    parsed = urlparse(url)
    user = f"{parsed.username}@" if parsed.username else ""
    return parsed._replace(netloc=f"{user}127.0.0.1:{port}").geturl()


def settings(tmp_path: Path, url: str, mode: str = "deny", **extra: Any) -> BudgetSettings:
    return BudgetSettings.load(
        None,
        database_url=url,
        on_store_error=mode,
        evaluation_interval=0,
        spool_path=tmp_path / "spool.jsonl",
        policies=[{"name": "alice", "scope": {"actor": "alice"}, "period": "month", "limit": "1000"}],
        **{**TIMEOUTS, **extra},
    )


def timed(work: Any, *args: Any) -> tuple[Any, float]:
    start = time.monotonic()
    result = work(*args)
    return result, time.monotonic() - start


def follows(verdict: Verdict | None, mode: str) -> None:
    assert verdict is not None and verdict.allowed is (mode == "allow")
    assert f"on_store_error = {mode}" in verdict.reason


@pytest.fixture
def black_hole() -> Iterator[Proxy]:
    proxy = Proxy(None)
    proxy.up()
    yield proxy
    proxy.down()


@pytest.mark.parametrize(("kind", "mode"), [("postgres", "deny"), ("mysql", "allow")])
def test_black_hole_before_connecting(black_hole: Proxy, tmp_path: Path, kind: str, mode: str) -> None:
    url = through(URLS[kind], black_hole.port)
    services, took = timed(lambda: bootstrap(settings(tmp_path, url, mode), require_store=False))
    assert took < LIMIT and not services.ready
    verdict, took = timed(BudgetPlugin(services).pre_llm_call, call())
    assert took < LIMIT
    follows(verdict, mode)
    # The plugin's own start-up (a settings factory, as inside ATLAS) answers in time too.
    plugin = BudgetPlugin(lambda: bootstrap(settings(tmp_path, url, mode), require_store=False))
    verdict, took = timed(plugin.pre_llm_call, call())
    assert took < 2 * LIMIT  # start-up and the call's own retry each wait once
    follows(verdict, mode)
    services.close()


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_connect_timeout_is_named(black_hole: Proxy, kind: str) -> None:
    db = open_database(through(URLS[kind], black_hole.port), connect_timeout=1, statement_timeout=1)
    start = time.monotonic()
    with pytest.raises(StoreTimeout, match="did not answer within 1 s while connecting") as info:
        db.connect()
    assert time.monotonic() - start < LIMIT
    assert "store_connect_timeout" in str(info.value) or "store_statement_timeout" in str(info.value)


def test_mysql_url_at_the_postgres_port(tmp_path: Path) -> None:
    server_url("postgres")  # skip (or fail under CI) without PostgreSQL
    port = urlparse(POSTGRES_URL).port or 5432
    url = f"mysql://root@127.0.0.1:{port}/test"
    services, took = timed(lambda: bootstrap(settings(tmp_path, url), require_store=False))
    assert took < LIMIT and not services.ready
    verdict, took = timed(BudgetPlugin(services).pre_llm_call, call())
    assert took < LIMIT
    follows(verdict, "deny")
    with pytest.raises(StoreTimeout, match="the server hangs or that port is not MariaDB/MySQL"):
        open_database(url, connect_timeout=1, statement_timeout=1).connect()


@pytest.fixture(params=["postgres", "mysql"])
def proxied(request: pytest.FixtureRequest) -> Iterator[tuple[Proxy, str]]:
    url = server_url(request.param)  # skip (or fail under CI) without the server; empties its tables
    parsed = urlparse(url)
    proxy = Proxy((parsed.hostname or "127.0.0.1", parsed.port or (5432 if request.param == "postgres" else 3306)))
    proxy.up()
    yield proxy, through(url, proxy.port)
    proxy.down()


def test_black_hole_after_connecting(proxied: tuple[Proxy, str], tmp_path: Path) -> None:
    proxy, url = proxied
    mode = "deny" if "postgres" in url else "allow"
    services = bootstrap(settings(tmp_path, url, mode))
    plugin = BudgetPlugin(services)
    first = plugin.pre_llm_call(call())
    assert first is not None and first.allowed and first.reason == "within budget"

    proxy.stall()  # the connection stays open, nothing more is forwarded either way
    verdict, took = timed(plugin.pre_llm_call, call())
    assert took < LIMIT
    follows(verdict, mode)
    assert "StoreTimeout" in verdict.reason or "store_statement_timeout" in verdict.reason
    # Recording the usage of a call while the store hangs spools it, also in time.
    _, took = timed(plugin.post_llm_call, call(), LLMUsage(input_tokens=10, output_tokens=5), None)
    assert took < LIMIT
    assert services.tracking.spool is not None and services.tracking.spool.pending() == 1
    # New connections into the black hole are given up after the connect timeout.
    verdict, took = timed(plugin.pre_llm_call, call())
    assert took < LIMIT
    follows(verdict, mode)

    proxy.resume()
    healed = plugin.pre_llm_call(call())
    assert healed is not None and healed.allowed and healed.reason == "within budget"
    services.close()


def test_lock_wait_is_bounded(proxied: tuple[Proxy, str], tmp_path: Path) -> None:
    _, url = proxied
    services = bootstrap(settings(tmp_path, url, store_statement_timeout=5))
    plugin = BudgetPlugin(services)
    assert plugin.pre_llm_call(call()).allowed  # type: ignore[union-attr]

    holder = open_database(url)
    holder.connect()
    locked = threading.Event()
    done = threading.Event()

    def hold() -> None:
        with holder.atomic():
            holder.execute_sql("SELECT * FROM budget_spend_counter FOR UPDATE").fetchall()
            locked.set()
            done.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert locked.wait(5)
        verdict, took = timed(plugin.pre_llm_call, call())
        assert took < 1 + 1.5  # store_lock_timeout, well before store_statement_timeout
        follows(verdict, "deny")
        assert "store_lock_timeout" in verdict.reason or "StoreTimeout" in verdict.reason
    finally:
        done.set()
        thread.join()
        holder.close()
    assert plugin.pre_llm_call(call()).allowed  # type: ignore[union-attr]
    services.close()
