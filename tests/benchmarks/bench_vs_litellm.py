"""Benchmark: our call path against ``litellm.BudgetManager`` in the same run (issue #12).

Per call, LiteLLM's budget manager checks ``get_current_cost <= get_total_budget``, then ``update_cost`` prices the
response and saves the whole user dictionary to ``user_cost.json`` from a background thread. Ours is
``pre_llm_call`` + ``post_llm_call`` on SQLite at ``durability = "normal"`` (and ``"full"`` for reference), one
matching policy per user. Interleaved call by call with 10 and 1,000 users. Then 4 processes each make calls
through each system against one shared store / one shared file, and we count how much of the spend each kept.

Run: ``python tests/benchmarks/bench_vs_litellm.py [rounds]``. Needs ``litellm`` (in the ``test`` extra). It
prints; it asserts nothing about time.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network: use the bundled price list

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.plugin import BudgetPlugin
from hookspecs import LLMCall, LLMUsage

MODEL = "gpt-4o"
USAGE = LLMUsage(input_tokens=1000, output_tokens=200)  # priced by us from the catalogue, as LiteLLM does


def response() -> Any:
    import litellm

    return litellm.ModelResponse(
        model=MODEL,
        usage={"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200},
        choices=[{"message": {"role": "assistant", "content": "ok"}}],
    )


def theirs(folder: Path, users: int) -> Any:
    import litellm

    os.chdir(folder)  # LiteLLM's local client writes user_cost.json in the working directory
    manager = litellm.BudgetManager(project_name="bench")
    for u in range(users):
        manager.create_budget(total_budget=1_000_000, user=f"u{u}")
    reply = response()
    ids = itertools.count()

    def one() -> None:
        user = f"u{next(ids) % users}"
        if manager.get_current_cost(user=user) <= manager.get_total_budget(user):
            manager.update_cost(user=user, completion_obj=reply)

    return one


def ours(folder: Path, users: int, durability: str) -> Any:
    policies = [
        {"name": f"u{u}", "scope": {"actor": f"u{u}"}, "period": "month", "limit": "1000000"} for u in range(users)
    ]
    settings = BudgetSettings.load(
        None,
        database_url=f"sqlite:///{folder}/{durability}-{users}.db",
        policies=policies,
        durability=durability,
        evaluation_interval=0,
        global_ceiling=False,
    )
    plugin = BudgetPlugin(bootstrap(settings))
    ids = itertools.count()

    def one() -> None:
        n = next(ids)
        call = LLMCall(call_id=f"{durability}{users}-{n}", provider="openai", model=MODEL, actor=f"u{n % users}")
        verdict = plugin.pre_llm_call(call)
        assert verdict is not None and verdict.allowed, verdict
        plugin.post_llm_call(call, USAGE, None)

    return one


def interleaved(folder: Path, users: int, rounds: int) -> None:
    runs = {"litellm": theirs(folder, users), **{f"ours@{d}": ours(folder, users, d) for d in ("normal", "full")}}
    for fn in runs.values():
        for _ in range(20):
            fn()
    walls: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs.items())
    shuffle = random.Random(7).shuffle
    for _ in range(rounds):
        # A random order each round: LiteLLM saves its file from a background thread after each update, and
        # whichever call runs next would otherwise always pay for that thread alone.
        shuffle(order)
        for name, fn in order:
            start = time.perf_counter()
            fn()
            walls[name].append(time.perf_counter() - start)
    base = statistics.mean(walls["litellm"])
    print(f"{users} users, {rounds} rounds interleaved:")
    for name, values in walls.items():
        mean = statistics.mean(values)
        print(
            f"  {name:12} mean {mean * 1000:7.3f} ms  median {statistics.median(values) * 1000:7.3f} ms  "
            f"{mean / base:5.2f}x LiteLLM"
        )


def _litellm_worker(args: tuple[str, int, int]) -> None:
    folder, _worker, calls = args
    import litellm

    os.chdir(folder)
    for _ in range(50):  # another process may be half-way through rewriting the file: LiteLLM then fails to load it
        try:
            manager = litellm.BudgetManager(project_name="bench")  # loads the shared file once, at start
            break
        except ValueError:
            time.sleep(0.01)
    else:
        return
    if not manager.is_valid_user("shared"):
        manager.create_budget(total_budget=1_000_000, user="shared")
    reply = response()
    for _ in range(calls):
        manager.update_cost(user="shared", completion_obj=reply)
    time.sleep(0.5)  # let its background saves finish
    manager.save_data()


def _ours_worker(args: tuple[str, int, int]) -> None:
    url, worker, calls = args
    settings = BudgetSettings.load(None, database_url=url, durability="normal", evaluation_interval=0)
    plugin = BudgetPlugin(bootstrap(settings))
    for i in range(calls):
        call = LLMCall(call_id=f"w{worker}-{i}", provider="openai", model=MODEL, actor="shared")
        plugin.pre_llm_call(call)
        plugin.post_llm_call(call, USAGE, None)


def four_processes(folder: Path, calls: int = 200) -> None:
    import json

    import litellm

    cost = Decimal(str(litellm.completion_cost(completion_response=response())))
    expected = cost * 4 * calls
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        pool.map(_litellm_worker, [(str(folder), w, calls) for w in range(4)])
    try:
        kept = Decimal(str(json.loads((folder / "user_cost.json").read_text())["shared"]["current_cost"]))
    except ValueError:  # the last writers left the file torn
        kept = Decimal(0)
    url = f"sqlite:///{folder}/shared.db"
    services = bootstrap(BudgetSettings.load(None, database_url=url))
    services.close()
    with ctx.Pool(4) as pool:
        pool.map(_ours_worker, [(url, w, calls) for w in range(4)])
    services = bootstrap(BudgetSettings.load(None, database_url=url))
    from atlas_budget_plugin.types import Actor

    ours_total = services.tracking.get_usage_summary(None, "month", actor=Actor.system()).total_cost
    services.close()
    print(f"4 processes x {calls} calls of {cost} each (spend {expected}):")
    print(f"  litellm kept {kept:.6f} ({kept * 100 / expected:.1f}%)")
    print(f"  ours kept    {ours_total} ({ours_total * 100 / expected:.1f}%)")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(dir=here) as name:
        folder = Path(name)
        for users in (10, 1000):
            sub = folder / f"u{users}"
            sub.mkdir()
            interleaved(sub, users, rounds)
        shared = folder / "shared"
        shared.mkdir()
        four_processes(shared)
        os.chdir(here)


if __name__ == "__main__":
    main()
