"""Policy changes racing calls and each other, on PostgreSQL and MariaDB (READ COMMITTED) and SQLite.

Regressions from an adversarial review: a settlement that waited for a policy delete lost its record; concurrent
admin writes both passed the global ceiling and the one-policy-per-scope check; concurrent links made a cycle.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from atlas_budget_plugin import BudgetServices, BudgetSettings, bootstrap
from atlas_budget_plugin import policy_service as policy_module
from atlas_budget_plugin.store.models import UsageRow
from atlas_budget_plugin.types import Actor
from hookspecs import LLMCall, LLMUsage

from ..backends import server_url

pytestmark = pytest.mark.slow
ADMIN = Actor(id="root", tenant="default", roles=frozenset({"budget:admin"}))
BACKENDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]


def services_on(backend: str, tmp_path: Path) -> BudgetServices:
    url = f"sqlite:///{tmp_path}/races.db" if backend == "sqlite" else server_url(backend)
    return bootstrap(BudgetSettings.load(None, database_url=url, spool_path=tmp_path / "spool.jsonl"))


def together(*jobs: Any) -> None:
    threads = [threading.Thread(target=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_settlement_waiting_on_a_policy_delete_is_still_recorded(tmp_path: Path, backend: str) -> None:
    services = services_on(backend, tmp_path)
    policy = services.policies.create_policy(ADMIN, {"name": "all", "period": "day", "limit": "100"})
    services.tracking.record_usage(LLMCall(call_id="warm", provider="openai", model="gpt-4o"), Decimal(1))
    original = services.policies.repository.remove

    def slow_remove(*args: Any) -> None:  # the delete commits while the settlement waits on its locks
        with services.db.atomic():
            original(*args)
            time.sleep(0.8)
        services.db.close()

    def settle() -> None:
        time.sleep(0.3)
        call = LLMCall(call_id="x1", provider="openai", model="gpt-4o")
        services.tracking.record_call(call, LLMUsage(input_tokens=1, output_tokens=1, cost=Decimal(2)))
        services.db.close()

    together(lambda: slow_remove(policy, "root", services.policies.clock()), settle)
    assert UsageRow.select().where(UsageRow.call_id == "x1").count() == 1
    services.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_policy_writes_respect_the_ceiling_and_one_policy_per_scope(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = services_on(backend, tmp_path)
    services.policies.create_policy(ADMIN, {"name": "tenant", "period": "day", "limit": "10"})
    checked = policy_module.BudgetPolicyService._check_fits

    def slow_check(self: Any, policy: Any) -> None:  # widen the window between the check and the write
        checked(self, policy)
        time.sleep(0.4)

    monkeypatch.setattr(policy_module.BudgetPolicyService, "_check_fits", slow_check)
    outcomes: dict[str, str] = {}

    def create(name: str, actor: str, limit: str) -> Any:
        def run() -> None:
            spec = {"name": name, "period": "day", "limit": limit, "scope": {"actor": actor}}
            try:
                services.policies.create_policy(ADMIN, spec)
                outcomes[name] = "created"
            except Exception as exc:
                outcomes[name] = type(exc).__name__
            services.db.close()

        return run

    together(create("a", "alice", "7"), create("b", "bob", "7"), create("a2", "alice", "3"))
    services.policies.repository.forget()
    stored = [p for p in services.policies.list_policies(ADMIN) if p.scope.as_dict()]
    assert sum(p.limit for p in stored) <= Decimal(10), outcomes
    assert len({p.scope.key() for p in stored}) == len(stored), outcomes  # one policy per scope and period
    services.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_links_never_make_a_cycle(tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from atlas_budget_plugin import hierarchy

    services = services_on(backend, tmp_path)
    checked = hierarchy.Hierarchy.check_link

    def slow_check(self: Any, child: Any, parent: Any) -> None:
        checked(self, child, parent)
        time.sleep(0.4)

    monkeypatch.setattr(hierarchy.Hierarchy, "check_link", slow_check)

    def link(child: str, parent: str) -> Any:
        def run() -> None:
            try:
                services.policies.link_scope(ADMIN, child, parent)
            except Exception:
                pass
            services.db.close()

        return run

    together(link("team=a", "team=b"), link("team=b", "team=a"))
    services.policies.repository.forget()
    assert len(services.policies.scope_links(ADMIN)) == 1
    assert services.policies.lineage(ADMIN, "team=a")  # and it answers
    services.close()
