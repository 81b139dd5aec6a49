"""The asyncio guard: same guarantees as guarded_call, hooks off the event loop, cancellation, and loop lag."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pluggy
import pytest

from atlas_budget_plugin import BudgetServices, BudgetSettings, bootstrap
from atlas_budget_plugin.plugin import BudgetPlugin
from atlas_budget_plugin.types import Actor
from hookspecs import CallBlocked, LLMCall, LLMUsage, Verdict, aio, async_guarded_call, guarded_call, hookimpl, specs

from .sdk_mocks import CALL_TOKENS, MESSAGES, PROVIDERS, async_client

CHAT = PROVIDERS[0]


def manager(*plugins: Any) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(specs.PROJECT)
    pm.add_hookspecs(specs)
    for plugin in plugins:
        pm.register(plugin)
    return pm


class Recorder:
    """Records every hook call with the thread it ran on; optionally slow, denying or failing."""

    def __init__(self, pre_delay: float = 0, post_delay: float = 0, deny: bool = False, fail_post: bool = False):
        self.pre_delay, self.post_delay, self.deny, self.fail_post = pre_delay, post_delay, deny, fail_post
        self.pre: list[str] = []
        self.posts: list[tuple[str, LLMUsage, BaseException | None]] = []
        self.threads: set[int] = set()
        self.finished_posts = 0

    @hookimpl
    def pre_llm_call(self, call: LLMCall) -> Verdict | None:
        self.threads.add(threading.get_ident())
        time.sleep(self.pre_delay)
        self.pre.append(call.call_id)
        return Verdict(False, "no", source="rec") if self.deny else Verdict.allow("rec", ("careful",))

    @hookimpl
    def post_llm_call(self, call: LLMCall, usage: LLMUsage, error: BaseException | None) -> None:
        self.threads.add(threading.get_ident())
        time.sleep(self.post_delay)
        self.posts.append((call.call_id, usage, error))
        self.finished_posts += 1
        if self.fail_post:
            raise RuntimeError("this plugin's post fails")


def call(call_id: str = "a1") -> LLMCall:
    return LLMCall(call_id=call_id, provider="openai", model="gpt-4o")


def test_allowed_call_posts_once_off_the_loop_with_the_usage() -> None:
    rec = Recorder()

    async def main() -> int:
        async with async_guarded_call(manager(rec), call()) as guard:
            assert guard.warnings == ["careful"]
            guard.usage = LLMUsage(input_tokens=3, output_tokens=4)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert rec.pre == ["a1"] and [(c, u.output_tokens, e) for c, u, e in rec.posts] == [("a1", 4, None)]
    assert loop_thread not in rec.threads


def test_denied_call_raises_call_blocked_after_a_post_for_the_others() -> None:
    denier, other = Recorder(deny=True), Recorder()

    async def main() -> None:
        async with async_guarded_call(manager(denier, other), call()):
            raise AssertionError("a denied call must not run")

    with pytest.raises(CallBlocked, match="no"):
        asyncio.run(main())
    assert all(isinstance(error, CallBlocked) for rec in (denier, other) for _, _, error in rec.posts)
    assert len(other.posts) == 1


def test_exception_in_the_block_is_posted_and_propagates_and_a_failing_post_stops_no_one() -> None:
    failing, other = Recorder(fail_post=True), Recorder()

    async def main() -> None:
        async with async_guarded_call(manager(failing, other), call()):
            raise KeyError("boom")

    with pytest.raises(KeyError):
        asyncio.run(main())
    assert [type(e) for _, _, e in failing.posts] == [KeyError] and [type(e) for _, _, e in other.posts] == [KeyError]


def test_cancelled_in_the_block_posts_the_cancellation_then_propagates() -> None:
    rec = Recorder()

    async def main() -> None:
        entered = asyncio.Event()

        async def work() -> None:
            async with async_guarded_call(manager(rec), call()) as guard:
                guard.observe({"object": "chat.completion.chunk", "choices": [{"delta": {"content": "x"}}]})
                entered.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(work())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    ((_, usage, error),) = rec.posts
    assert isinstance(error, asyncio.CancelledError) and usage.billed is True  # the stream had started


def test_cancelled_during_a_slow_check_still_posts_before_the_cancellation_arrives() -> None:
    rec = Recorder(pre_delay=0.2)

    async def main() -> None:
        task = asyncio.create_task(_enter(manager(rec)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the check went on in its thread and reserved; the post that releases it already ran
        assert rec.pre == ["a1"] and len(rec.posts) == 1

    asyncio.run(main())
    assert isinstance(rec.posts[0][2], asyncio.CancelledError)


async def _enter(pm: pluggy.PluginManager) -> None:
    async with async_guarded_call(pm, call()):
        await asyncio.sleep(10)


def test_the_post_after_a_cancellation_completes_even_if_cancelled_again() -> None:
    rec = Recorder(post_delay=0.2)

    async def main() -> None:
        task = asyncio.create_task(_enter(manager(rec)))
        await asyncio.sleep(0.05)
        task.cancel()  # ends the block: the post starts (0.2 s)
        await asyncio.sleep(0.05)
        task.cancel()  # a second cancellation during the post
        with pytest.raises(asyncio.CancelledError):
            await task
        assert rec.finished_posts == 1  # complete before the task ended

    asyncio.run(main())


def test_hook_threads_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(pre_delay=0.002)
    pm = manager(rec)

    async def one(i: int) -> None:
        async with async_guarded_call(pm, call(f"c{i}")) as guard:
            guard.usage = LLMUsage(input_tokens=1)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(300)))

    asyncio.run(main())
    assert len(rec.posts) == 300 and len(rec.threads) <= aio.DEFAULT_WORKERS
    assert all(t.name.startswith("atlas-hooks") for t in threading.enumerate() if t.ident in rec.threads)


def test_own_executor_and_thread_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    with ThreadPoolExecutor(1) as pool:
        (worker,) = {pool.submit(threading.get_ident).result()}

        async def main() -> None:
            async with async_guarded_call(manager(rec), call(), executor=pool):
                pass

        asyncio.run(main())
    assert rec.threads == {worker}
    monkeypatch.setenv(aio.WORKERS_ENV, "3")
    assert aio._workers() == 3
    for bad in ("lots", "0", "1000"):
        monkeypatch.setenv(aio.WORKERS_ENV, bad)
        with pytest.raises(ValueError, match=aio.WORKERS_ENV):
            aio._workers()


def test_lazy_start_up_happens_off_the_loop(tmp_path: Path) -> None:
    started_on: list[int] = []
    made: list[BudgetServices] = []

    def start() -> BudgetServices:
        started_on.append(threading.get_ident())
        made.append(bootstrap(BudgetSettings.load(None, database_url=f"sqlite:///{tmp_path / 'lazy.db'}")))
        return made[0]

    plugin = BudgetPlugin(start)

    async def main() -> int:
        async with async_guarded_call(manager(plugin), call()) as guard:
            guard.usage = LLMUsage(input_tokens=10, output_tokens=1)
        return threading.get_ident()

    try:
        loop_thread = asyncio.run(main())
        assert len(started_on) == 1 and started_on[0] != loop_thread
        assert made[0].tracking.list_usage(Actor.system())[0].input_tokens == 10
    finally:
        plugin.close()
        for services in made:
            services.close()


# --- 50 concurrent calls through the real async SDK: loop lag with and without the plugin ------------------------

N_CALLS = 50
PROVIDER_LATENCY = 0.05
LIMIT = Decimal("0.10")


async def _ticker(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - start - 0.001)


async def _load(pm: pluggy.PluginManager | None, prefix: str, on_loop: bool = False) -> tuple[list[float], int]:
    """Run N_CALLS concurrent SDK calls; return the ticker's lags and how many calls were blocked."""
    client = async_client(CHAT, delay=PROVIDER_LATENCY)
    await client.chat.completions.create(model="gpt-5", messages=MESSAGES)  # warm the SDK up, unguarded
    stop, lags = asyncio.Event(), list[float]()
    ticker = asyncio.create_task(_ticker(stop, lags))

    async def one(i: int) -> None:
        if pm is None:
            await client.chat.completions.create(model="gpt-5", messages=MESSAGES)
            return
        c = LLMCall(call_id=f"{prefix}{i}", provider="openai", model="gpt-5", tags=dict(CHAT.tags), **CALL_TOKENS)
        if on_loop:  # what a host without the async guard does: the sync guard, hooks on the loop
            with guarded_call(pm, c) as sync_guard:
                sync_guard.usage = LLMUsage(
                    response=await client.chat.completions.create(model="gpt-5", messages=MESSAGES)
                )
            return
        async with async_guarded_call(pm, c) as guard:
            guard.usage = LLMUsage(response=await client.chat.completions.create(model="gpt-5", messages=MESSAGES))

    results = await asyncio.gather(*(one(i) for i in range(N_CALLS)), return_exceptions=True)
    stop.set()
    await ticker
    unexpected = [r for r in results if r is not None and not isinstance(r, CallBlocked)]
    assert not unexpected, unexpected
    return lags, sum(isinstance(r, CallBlocked) for r in results)


def _stats(lags: list[float]) -> tuple[float, float, float]:
    ms = sorted(lag * 1000 for lag in lags)
    return ms[-1], ms[max(0, int(len(ms) * 0.99) - 1)], sum(ms) / len(ms)


def test_loop_lag_with_and_without_the_plugin(make_services: Any, tmp_path: Path) -> None:
    """All 50 calls admitted; each mode run 3 times, interleaved, in the same process. Printed, not asserted."""
    warm = make_services(database_url=f"sqlite:///{tmp_path / 'warm.db'}")
    asyncio.run(_load(manager(BudgetPlugin(warm)), "warm"))  # first use of pricing data, SQL, threads
    modes = {"SDK alone": None, "SDK + plugin, async guard": False, "SDK + plugin, hooks on the loop": True}
    lags: dict[str, list[tuple[float, float, float]]] = {name: [] for name in modes}
    for round_ in range(3):
        for name, on_loop in modes.items():
            if on_loop is None:
                run_lags, _ = asyncio.run(_load(None, "sdk"))
            else:
                services = make_services(database_url=f"sqlite:///{tmp_path / f'lag{round_}{on_loop}.db'}")
                run_lags, blocked = asyncio.run(_load(manager(BudgetPlugin(services)), f"r{round_}", on_loop))
                assert blocked == 0
                assert services.tracking.get_usage_summary({}, "day", actor=Actor.system()).calls == N_CALLS
            lags[name].append(_stats(run_lags))
    lines = [f"{N_CALLS} concurrent calls, {PROVIDER_LATENCY * 1000:.0f} ms provider latency, 1 ms ticker, 3 runs:"]
    for name, runs in lags.items():
        maxes = ", ".join(f"{r[0]:.1f}" for r in runs)
        p99 = ", ".join(f"{r[1]:.1f}" for r in runs)
        lines.append(f"  {name:32} max lag [{maxes}] ms   p99 [{p99}] ms")
    print("\n".join(lines))
    assert all(len(runs) == 3 for runs in lags.values())


def test_fifty_concurrent_calls_under_a_block_limit_spend_exactly_and_never_overspend(make_services: Any) -> None:
    services = make_services(policies=[{"name": "all", "period": "day", "limit": str(LIMIT), "enforcement": "block"}])
    _, blocked = asyncio.run(_load(manager(BudgetPlugin(services)), "limited"))
    summary = services.tracking.get_usage_summary({}, "day", actor=Actor.system())
    admitted = N_CALLS - blocked
    assert summary.calls == admitted > 0 and blocked > 0
    assert summary.total_cost == admitted * CHAT.json_cost  # every admitted call at its exact price
    assert summary.total_cost <= LIMIT  # no overspend
    assert services.ledger.outstanding_units() == 0
