"""The background evaluator: runs on its own when the host sends no ticks, stops when it does."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.plugin import BudgetPlugin
from atlas_budget_plugin.scheduler import BackgroundEvaluator
from hookspecs import LLMCall


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_runs_work_periodically_and_survives_failures() -> None:
    seen: list[datetime] = []
    ran = threading.Event()

    def work(now: datetime) -> None:
        seen.append(now)
        ran.set()
        if len(seen) == 1:
            raise RuntimeError("first pass fails")

    evaluator = BackgroundEvaluator(work, 1)
    evaluator.start()
    evaluator.start()  # idempotent
    try:
        assert wait_for(lambda: len(seen) >= 2), "the evaluator should keep running after a failing pass"
        assert evaluator.running and evaluator.passes >= 2
    finally:
        evaluator.stop()
    assert not evaluator.running
    with pytest.raises(ValueError):
        BackgroundEvaluator(work, 0)


def test_plugin_starts_its_own_evaluator_until_the_host_ticks(make_services: Any, clock: Any) -> None:
    services: BudgetServices = make_services(evaluation_interval=1)
    ticks: list[datetime] = []
    original = services.tick

    def counting_tick(now: datetime) -> dict[str, int]:
        ticks.append(now)
        return original(now)

    services.tick = counting_tick  # type: ignore[method-assign]
    plugin = BudgetPlugin(lambda: services)
    assert plugin.background is None
    plugin.pre_llm_call(LLMCall(call_id="x", provider="openai", model="gpt-4o"))
    assert plugin.background is not None and plugin.background.running
    assert wait_for(lambda: len(ticks) >= 1)
    plugin.on_period_tick(clock.now)  # the host has a scheduler after all
    assert plugin.background is None
    count = len(ticks)
    time.sleep(1.5)
    assert len(ticks) == count
    plugin.close()


def test_no_evaluator_when_interval_is_zero(make_services: Any) -> None:
    services = make_services(evaluation_interval=0)
    plugin = BudgetPlugin(lambda: services)
    plugin.pre_llm_call(LLMCall(call_id="x", provider="openai", model="gpt-4o"))
    assert plugin.background is None
