"""Benchmark: round trips per call and 8-process throughput on PostgreSQL and MariaDB, against a baseline (issue #12).

For each server, the working tree and a baseline commit (default 563e40b, "today's implementation") run side by
side in the same run, alternating, on the same server database:

- **Round trips per call**: ``--calls`` calls (``pre_llm_call`` + ``post_llm_call`` through ``BudgetPlugin``, 10
  matching policies over ten periods, as in bench_hot_path.py) in one process, after a warm-up that creates every
  window's counters. Counted at the DB-API driver, split pre/post: psycopg2 — every ``execute``, each row of an
  ``executemany``, the ``BEGIN`` psycopg2 sends itself outside autocommit, ``commit``/``rollback`` of an open
  transaction; pymysql — every command sent to the server (queries, ``BEGIN``/``COMMIT``/``ROLLBACK``, pings).
  *Round trips* are all of them; *statements* are those that are not ``BEGIN``/``COMMIT``/``ROLLBACK``/savepoints.
  The mean wall time of a call in that single process is shown too.
- **Throughput**: 8 host processes x ``--tput-calls`` calls through ``guarded_call`` on one shared store, with three
  overlapping block limits (actor, team, model) sized to be reached part-way through. Calls/s counts allowed and
  denied calls alike (both are a full check). Overspend per limit is what the hosts were allowed to spend in that
  scope beyond the limit, and must be 0; the spend the store recorded must equal what was allowed (else "lost").

Each implementation runs in a subprocess with its own interpreter: the working tree with this one, the baseline
with the python of a virtualenv made on first use under ``~/.cache/atlas-budget-bench/<commit>`` (``git archive``,
``python -m venv``, ``pip install '.[postgres,mysql]'``: a minute or less; reused afterwards, ``--rebuild`` makes it
again). Before every run the server database is emptied: **all its tables and functions are dropped**, so point it
only at a scratch database.

Run: ``python tests/benchmarks/bench_servers.py [--calls 300] [--tput-calls 200] [--backends postgres,mysql]
[--baseline 563e40b] [--rounds 1]`` (or ``tox -e bench``). Servers: ``BUDGET_TEST_POSTGRES_URL`` (default
``postgresql://127.0.0.1:5432/test``) and ``BUDGET_TEST_MYSQL_URL`` (default ``mysql://root@127.0.0.1:3306/test``);
one that cannot be reached is skipped with a line saying how to enable it. It prints figures; it asserts only
that nothing was overspent or lost, never anything about time.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

# Only the public API both implementations have is imported, and only inside the functions that need it: the
# baseline's subprocess runs this file with the baseline's interpreter and package.

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
URLS = {
    "postgres": os.environ.get("BUDGET_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test"),
    "mysql": os.environ.get("BUDGET_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}
HOW = {
    "postgres": "start PostgreSQL on 127.0.0.1:5432 with database 'test' (trust auth) or set BUDGET_TEST_POSTGRES_URL",
    "mysql": "start MariaDB on 127.0.0.1:3306 (root, empty password, database 'test') or set BUDGET_TEST_MYSQL_URL",
}
PERIODS = ["hour", "day", "week", "month", "quarter", "year", "total", "rolling:24h", "rolling:7d", "rolling:30d"]
PROCESSES = 8
LIMITS = {"alice": ("actor", "alice", "month"), "red": ("team", "red", "day"), "gpt-4o": ("model", "gpt-4o", "month")}
WARMUP = 20
TRANSACTION_CONTROL = {"BEGIN", "START", "COMMIT", "ROLLBACK", "END", "SAVEPOINT", "RELEASE"}


# --- counting what the driver sends ------------------------------------------------------------------------------


class Tally:
    """Round trips and statements sent by the driver, by the thread that sent them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keep_texts = False  # the statements' shapes too (some CPU per statement: not in the timed runs)
        self.reset()

    def reset(self) -> None:
        self.round_trips = 0
        self.statements = 0
        self.background = 0  # round trips from threads other than the one that reset the tally
        self.connects = 0
        self.kinds: collections.Counter[str] = collections.Counter()
        self.texts: collections.Counter[str] = collections.Counter()
        self.owner = threading.get_ident()

    def add(self, sql: Any, kind: str | None = None) -> None:
        kind = kind or classify(sql)
        with self.lock:
            self.round_trips += 1
            self.kinds[kind] += 1
            if self.keep_texts:
                self.texts[shape(sql) if sql is not None else kind] += 1
            if kind not in TRANSACTION_CONTROL and kind != "PING":
                self.statements += 1
            if threading.get_ident() != self.owner:
                self.background += 1


TALLY = Tally()


def classify(sql: Any) -> str:
    """The first word of one statement (BEGIN, COMMIT, SELECT, ...); several statements in one string are 'MULTI'."""
    if isinstance(sql, bytes):
        sql = sql.decode("utf-8", "replace")
    if not isinstance(sql, str):
        return "OTHER"
    text = sql.strip().rstrip(";").strip()
    if ";" in text and not text.upper().startswith(("CREATE", "DO")):
        return "MULTI"
    return (text.split(None, 1) or ["EMPTY"])[0].upper()


def shape(sql: Any) -> str:
    """A statement with its literals and placeholders as ``?`` (pymysql sends them interpolated), on one line."""
    if isinstance(sql, bytes):
        sql = sql.decode("utf-8", "replace")
    text = re.sub(r"'(?:[^'\\]|\\.|'')*'|\b\d+(?:\.\d+)?\b|%s|%\(\w+\)s", "?", " ".join(str(sql).split()))
    text = re.sub(r"\?(?:, \?)+", "?, ...", text)
    return text[:150]


def instrument(url: str) -> None:
    """Make the driver ``url`` uses count into TALLY everything it sends and waits for."""
    if url.startswith("postgres"):
        _instrument_psycopg2()
    elif url.startswith("mysql"):
        _instrument_pymysql()


def _instrument_psycopg2() -> None:
    import psycopg2
    import psycopg2.extensions as ext

    def implicit_begin(conn: Any) -> None:
        # Outside autocommit psycopg2 sends BEGIN by itself, as a separate round trip, before a statement.
        if not conn.autocommit and conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE:
            TALLY.add("BEGIN")

    class CountingCursor:
        def execute(self, query: Any, vars: Any = None) -> Any:
            implicit_begin(self.connection)  # type: ignore[attr-defined]
            TALLY.add(query)
            return super().execute(query, vars)  # type: ignore[misc]

        def executemany(self, query: Any, vars_list: Any) -> Any:
            rows = list(vars_list)
            implicit_begin(self.connection)  # type: ignore[attr-defined]
            for _ in rows:  # psycopg2 sends one statement per row
                TALLY.add(query)
            return super().executemany(query, rows)  # type: ignore[misc]

        def callproc(self, procname: str, parameters: Any = None) -> Any:
            implicit_begin(self.connection)  # type: ignore[attr-defined]
            TALLY.add(None, "CALLPROC")
            return super().callproc(procname, parameters)  # type: ignore[misc]

    counting: dict[type, type] = {}

    def counting_factory(factory: type) -> type:
        if factory not in counting:
            counting[factory] = type(f"Counting{factory.__name__}", (CountingCursor, factory), {})
        return counting[factory]

    class CountingConnection(ext.connection):
        def cursor(self, *args: Any, **kwargs: Any) -> Any:
            kwargs["cursor_factory"] = counting_factory(
                kwargs.get("cursor_factory") or self.cursor_factory or ext.cursor
            )
            return super().cursor(*args, **kwargs)

        def commit(self) -> None:
            if not self.autocommit and self.get_transaction_status() != ext.TRANSACTION_STATUS_IDLE:
                TALLY.add("COMMIT")
            super().commit()

        def rollback(self) -> None:
            if not self.autocommit and self.get_transaction_status() != ext.TRANSACTION_STATUS_IDLE:
                TALLY.add("ROLLBACK")
            super().rollback()

    real_connect = psycopg2.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("connection_factory", CountingConnection)
        TALLY.connects += 1
        return real_connect(*args, **kwargs)

    psycopg2.connect = connect


def _instrument_pymysql() -> None:
    from pymysql import connections
    from pymysql.constants import COMMAND

    names = {v: k.removeprefix("COM_") for k, v in vars(COMMAND).items() if k.startswith("COM_")}
    real_execute, real_connect = connections.Connection._execute_command, connections.Connection.connect

    def execute_command(self: Any, command: int, sql: Any) -> Any:
        if command == COMMAND.COM_QUERY:
            TALLY.add(sql)
        elif command != COMMAND.COM_QUIT:  # every other command but QUIT waits for an answer
            TALLY.add(None, names.get(command, "OTHER"))
        return real_execute(self, command, sql)

    def connect(self: Any, *args: Any, **kwargs: Any) -> Any:
        TALLY.connects += 1
        return real_connect(self, *args, **kwargs)

    connections.Connection._execute_command = execute_command
    connections.Connection.connect = connect


# --- the measurements, run in a subprocess by the implementation's own interpreter --------------------------------


def implementation() -> dict[str, Any]:
    import atlas_budget_plugin

    return {"package": str(Path(atlas_budget_plugin.__file__).resolve().parent), "python": sys.executable}


def round_trips(url: str, calls: int) -> dict[str, Any]:
    """Round trips and statements of ``calls`` pre+post calls in one process, after a warm-up."""
    instrument(url)
    TALLY.keep_texts = True
    from atlas_budget_plugin import BudgetSettings, bootstrap
    from atlas_budget_plugin.plugin import BudgetPlugin
    from hookspecs import LLMCall, LLMUsage

    policies = [
        {"name": f"p{i}", "period": p, "limit": "1000000", "scope": {"actor": "alice"} if i % 2 else {}}
        for i, p in enumerate(PERIODS)
    ]
    settings = BudgetSettings.load(None, database_url=url, policies=policies, evaluation_interval=0)
    services = bootstrap(settings)
    budget = BudgetPlugin(services)
    usage = LLMUsage(input_tokens=1000, output_tokens=200, cost=Decimal("0.0042"))
    totals: dict[str, dict[str, Any]] = {
        side: {
            "round_trips": 0,
            "statements": 0,
            "background": 0,
            "connects": 0,
            "kinds": collections.Counter(),
            "texts": collections.Counter(),
        }
        for side in ("pre", "post")
    }
    per_call: list[int] = []
    wall = 0.0

    def take(side: str) -> int:
        t = totals[side]
        t["round_trips"] += TALLY.round_trips
        t["statements"] += TALLY.statements
        t["background"] += TALLY.background
        t["connects"] += TALLY.connects
        t["kinds"].update(TALLY.kinds)
        t["texts"].update(TALLY.texts)
        return TALLY.round_trips

    for i in range(WARMUP + calls):
        call = LLMCall(
            call_id=f"rt{i}", provider="openai", model="gpt-4o", actor="alice", estimated_cost=Decimal("0.01")
        )
        TALLY.reset()
        began = time.perf_counter()
        verdict = budget.pre_llm_call(call)
        mid = time.perf_counter()
        pre = take("pre") if i >= WARMUP else 0
        assert verdict is not None and verdict.allowed, verdict
        TALLY.reset()
        resumed = time.perf_counter()
        budget.post_llm_call(call, usage, None)
        ended = time.perf_counter()
        if i >= WARMUP:  # the warm-up created every window's counters and opened the connection
            per_call.append(pre + take("post"))
            wall += (mid - began) + (ended - resumed)
    budget.close()
    services.close()
    return {
        **implementation(),
        "calls": calls,
        **{side: {**t, "kinds": dict(t["kinds"]), "texts": dict(t["texts"])} for side, t in totals.items()},
        "min_round_trips": min(per_call),
        "max_round_trips": max(per_call),
        "ms_per_call": wall / calls * 1000,
    }


def host_worker(job: dict[str, Any], barrier: Any, results: Any) -> None:
    """One host process: warm up, wait for the others, make ``job['calls']`` calls; put what happened on ``results``."""
    instrument(job["url"])
    import pluggy

    from atlas_budget_plugin import BudgetSettings, bootstrap
    from atlas_budget_plugin.plugin import BudgetPlugin
    from hookspecs import CallBlocked, LLMCall, LLMUsage, guarded_call
    from hookspecs import specs as host_specs

    services = bootstrap(BudgetSettings.load(job["config"], database_url=job["url"]))
    plugin = BudgetPlugin(services)
    pm = pluggy.PluginManager(host_specs.PROJECT)
    pm.add_hookspecs(host_specs)
    pm.register(plugin, name="budget")
    rng = random.Random(f"bench-servers-{job['worker']}")
    allowed: list[tuple[str, str, str, str]] = []  # actor, team, model, cost of every allowed call
    made = denied = 0

    def calls(count: int, prefix: str) -> None:
        nonlocal made, denied
        for i in range(count):
            cost = Decimal(rng.randint(1_000, 50_000)).scaleb(-6)  # 0.001 .. 0.05, spent exactly as estimated
            call = LLMCall(
                call_id=f"{prefix}w{job['worker']}-{i}",
                provider="openai",
                model=rng.choice(["gpt-4o", "gpt-4o-mini"]),
                actor=rng.choice(["alice", "bob"]),
                tags={"team": rng.choice(["red", "blue"])},
                estimated_cost=cost,
            )
            made += 1
            try:
                with guarded_call(pm, call) as guard:
                    guard.usage = LLMUsage(input_tokens=100, output_tokens=10, cost=cost)
                allowed.append((call.actor or "", call.tags["team"], call.model, str(cost)))
            except CallBlocked:
                denied += 1

    calls(5, "warm")
    barrier.wait()
    TALLY.reset()
    made = denied = 0
    calls(job["calls"], "run")
    results.put(
        {
            "allowed": allowed,
            "made": made,
            "denied": denied,
            "round_trips": TALLY.round_trips,
            "statements": TALLY.statements,
            "kinds": dict(TALLY.kinds),
        }
    )
    plugin.close()
    services.close()


def throughput(url: str, calls: int, folder: Path) -> dict[str, Any]:
    """8 host processes x ``calls`` calls on one store, three overlapping block limits reached mid-run."""
    from atlas_budget_plugin import BudgetSettings, bootstrap
    from atlas_budget_plugin.types import Actor

    expected = Decimal("0.0255") * calls * PROCESSES  # what all calls would spend; each scope gets about half
    limit = (expected * Decimal("0.6") / 2).quantize(Decimal("0.01"))
    config = folder / "budget.toml"
    config.write_text(
        "evaluation_interval = 0\n"
        + "".join(
            f'[[policies]]\nname = "{name}"\nscope = {{ {key} = "{value}" }}\nperiod = "{period}"\nlimit = "{limit}"\n'
            for name, (key, value, period) in LIMITS.items()
        )
    )
    bootstrap(BudgetSettings.load(config, database_url=url)).close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES + 1)
    queue = ctx.Queue()
    workers = [
        ctx.Process(
            target=host_worker, args=({"url": url, "config": str(config), "worker": w, "calls": calls}, barrier, queue)
        )
        for w in range(PROCESSES)
    ]
    for w in workers:
        w.start()
    barrier.wait(timeout=300)
    began = time.monotonic()
    outcomes = [queue.get(timeout=1800) for _ in workers]
    elapsed = time.monotonic() - began
    for w in workers:
        w.join()
    made = sum(o["made"] for o in outcomes)
    spent: dict[str, Decimal] = collections.defaultdict(
        Decimal
    )  # scope name -> what the hosts were allowed to spend in it
    for o in outcomes:
        for actor, team, model, cost in o["allowed"]:
            for name, value in (("alice", actor), ("red", team), ("gpt-4o", model)):
                if value == name:
                    spent[name] += Decimal(cost)
    services = bootstrap(BudgetSettings.load(config, database_url=url))
    recorded = {
        name: services.tracking.get_usage_summary({key: value}, period, actor=Actor.system()).total_cost
        for name, (key, value, period) in LIMITS.items()
    }
    services.close()
    return {
        **implementation(),
        "processes": PROCESSES,
        "calls": made,
        "denied": sum(o["denied"] for o in outcomes),
        "seconds": elapsed,
        "calls_per_s": made / elapsed,
        "round_trips_per_call": sum(o["round_trips"] for o in outcomes) / made,
        "statements_per_call": sum(o["statements"] for o in outcomes) / made,
        "kinds": dict(sum((collections.Counter(o["kinds"]) for o in outcomes), collections.Counter())),
        "limit": str(limit),
        "overspend": {name: str(max(Decimal(0), spent[name] - limit)) for name in LIMITS},
        "lost": {name: str(spent[name] - Decimal(str(recorded[name]))) for name in LIMITS},
    }


def child(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-servers-"))
    try:
        if args.child == "round_trips":
            result = round_trips(args.url, args.calls)
        else:
            result = throughput(args.url, args.calls, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    Path(args.out).write_text(json.dumps(result))


# --- the driver: baseline virtualenv, servers, runs, table ---------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def baseline_python(commit: str, rebuild: bool) -> Path:
    """The python of a virtualenv with ``commit`` installed (made on first use, then reused)."""
    sha = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "atlas-budget-bench" / sha[:12]
    python = root / "venv" / "bin" / "python"
    if (root / "ready").exists() and python.exists() and not rebuild:
        return python
    print(f"making the baseline virtualenv for {sha[:12]} in {root} (once; about a minute) ...", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    (root / "src").mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(root / "src", filter="data")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{root / 'src'}[postgres,mysql]"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if pip.returncode != 0:
        raise RuntimeError(
            f"pip could not install {sha[:12]} into {root / 'venv'}:\n{pip.stdout[-2000:]}{pip.stderr[-3000:]}"
        )
    (root / "ready").write_text(sha + "\n")
    return python


def empty(url: str) -> None:
    """Drop every table, view, routine and type of the database's current schema (a scratch database)."""
    from atlas_budget_plugin.store import open_database

    db = open_database(url)
    db.connect()
    try:
        run = db.execute_sql
        if url.startswith("postgres"):
            for kind, query in (
                ("VIEW", "SELECT quote_ident(viewname) FROM pg_views WHERE schemaname = current_schema()"),
                ("TABLE", "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = current_schema()"),
                (
                    "ROUTINE",
                    "SELECT p.oid::regprocedure::text FROM pg_proc p "
                    "WHERE p.pronamespace = current_schema()::regnamespace",
                ),
                (
                    "TYPE",
                    "SELECT quote_ident(t.typname) FROM pg_type t LEFT JOIN pg_class c ON c.oid = t.typrelid "
                    "WHERE t.typnamespace = current_schema()::regnamespace AND t.typtype IN ('c', 'e', 'd', 'r') "
                    "AND (t.typrelid = 0 OR c.relkind = 'c')",
                ),
                ("SEQUENCE", "SELECT quote_ident(sequencename) FROM pg_sequences WHERE schemaname = current_schema()"),
            ):
                for (name,) in run(query).fetchall():
                    run(f"DROP {kind} IF EXISTS {name} CASCADE")
        else:
            run("SET FOREIGN_KEY_CHECKS = 0")
            for name, kind in run(
                "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = DATABASE()"
            ).fetchall():
                run(f"DROP {'VIEW' if kind == 'VIEW' else 'TABLE'} IF EXISTS `{name}`")
            for name, kind in run(
                "SELECT routine_name, routine_type FROM information_schema.routines WHERE routine_schema = DATABASE()"
            ).fetchall():
                run(f"DROP {kind} IF EXISTS `{name}`")
            run("SET FOREIGN_KEY_CHECKS = 1")
    finally:
        db.close()


def reachable(backend: str, url: str) -> bool:
    try:
        from atlas_budget_plugin.store import open_database

        db = open_database(url)
        db.connect()
        db.close()
    except Exception as exc:
        why = " ".join(f"{type(exc).__name__}: {exc}".split())
        print(f"{backend}: skipped, not reachable at {url} ({why}); to run it, {HOW[backend]}")
        return False
    return True


def measure(python: Path, what: str, url: str, calls: int) -> dict[str, Any] | None:
    """Run one measurement in a subprocess of ``python`` (outside the repository, so its package is what it has)."""
    with tempfile.TemporaryDirectory(prefix="bench-servers-") as folder:
        out = Path(folder) / "result.json"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(
            [str(python), str(HERE), "--child", what, "--url", url, "--calls", str(calls), "--out", str(out)],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if proc.returncode != 0 or not out.exists():
            print(f"  {what} with {python} failed (exit {proc.returncode}):\n" + proc.stderr[-3000:])
            return None
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def describe_tree() -> str:
    try:
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "atlas_budget_plugin", "hookspecs")
        return f"tree {git('rev-parse', '--short', 'HEAD')}{'+changes' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return "installed"


def report(rows: list[dict[str, Any]], sql: bool) -> None:
    print()
    print(
        f"{'backend':9} {'implementation':22} {'run':>3} {'rt/call':>7} {'pre':>5} {'post':>5} {'stmt/call':>9} "
        f"{'ms/call':>7} | {'calls/s x8':>10} {'rt/call x8':>10} {'denied':>6}  overspend / lost"
    )
    for row in rows:
        rt, tp = row.get("rt"), row.get("tp")
        left = f"{row['backend']:9} {row['impl']:22} {row['round'] + 1:3} "
        if rt:
            n = rt["calls"]
            left += (
                f"{(rt['pre']['round_trips'] + rt['post']['round_trips']) / n:7.2f} "
                f"{rt['pre']['round_trips'] / n:5.2f} {rt['post']['round_trips'] / n:5.2f} "
                f"{(rt['pre']['statements'] + rt['post']['statements']) / n:9.2f} {rt['ms_per_call']:7.2f}"
            )
        else:
            left += f"{'failed':>7} {'':5} {'':5} {'':9} {'':7}"
        if tp:
            bad = {k: v for k, v in {**tp["overspend"]}.items() if Decimal(v)}
            lost = {k: v for k, v in tp["lost"].items() if Decimal(v)}
            right = (
                f"{tp['calls_per_s']:10,.0f} {tp['round_trips_per_call']:10.2f} {tp['denied']:6}  "
                f"{'0' if not bad else bad} / {'0' if not lost else lost}"
            )
        else:
            right = f"{'failed':>10}"
        print(f"{left} | {right}")
    print()
    for row in rows:
        rt, tp = row.get("rt"), row.get("tp")
        who = f"{row['backend']:9} {row['impl']:22} {row['round'] + 1:3}"
        if tp:
            kinds = ", ".join(
                f"{k} {v / tp['calls']:.2f}" for k, v in sorted(tp["kinds"].items(), key=lambda kv: -kv[1])
            )
            print(f"  {who} x8  : {kinds} ({tp['calls']} calls in {tp['seconds']:.1f} s, limits {tp['limit']})")
        if not rt:
            continue
        for side in ("pre", "post"):
            t = rt[side]
            kinds = ", ".join(
                f"{k} {v / rt['calls']:.2f}" for k, v in sorted(t["kinds"].items(), key=lambda kv: -kv[1])
            )
            extra = ""
            if t["background"] or t["connects"]:
                extra = f" (of which {t['background']} from other threads; {t['connects']} connects)"
            print(f"  {who} {side:4}: {kinds}{extra}")
            if sql:
                for text, count in sorted(t["texts"].items(), key=lambda kv: -kv[1]):
                    print(f"      {count / rt['calls']:5.2f}  {text}")
        print(
            f"  {who} per call min {rt['min_round_trips']} max {rt['max_round_trips']} "
            f"round trips; package {rt['package']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls counted for round trips (one process)")
    parser.add_argument("--tput-calls", type=int, default=200, help="calls per process in the 8-process run")
    parser.add_argument("--backends", default="postgres,mysql")
    parser.add_argument("--baseline", default="563e40b", help="commit to compare with ('none': the tree alone)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of each implementation")
    parser.add_argument("--sql", action="store_true", help="also list the statements sent per call")
    parser.add_argument("--rebuild", action="store_true", help="make the baseline virtualenv again")
    parser.add_argument("--child", choices=["round_trips", "throughput"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    backends = [b for b in args.backends.split(",") if b and reachable(b, URLS[b])]
    if not backends:
        return
    impls = [(describe_tree(), Path(sys.executable))]
    if args.baseline != "none":
        try:
            impls.append((args.baseline, baseline_python(args.baseline, args.rebuild)))
        except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
            print(f"baseline {args.baseline} skipped, its virtualenv could not be made: {detail!s}".rstrip())
    rows: list[dict[str, Any]] = []
    for backend in backends:
        url = URLS[backend]
        for r in range(args.rounds):
            order = impls if r % 2 == 0 else impls[::-1]  # alternate who goes first
            for what, calls in (("round_trips", args.calls), ("throughput", args.tput_calls)):
                for name, python in order:
                    print(f"{backend} round {r + 1}: {what} of {name} ...", flush=True)
                    empty(url)
                    result = measure(python, what, url, calls)
                    row = next(
                        (x for x in rows if x["backend"] == backend and x["impl"] == name and x["round"] == r), None
                    )
                    if row is None:
                        row = {"backend": backend, "impl": name, "round": r}
                        rows.append(row)
                    row["rt" if what == "round_trips" else "tp"] = result
        empty(url)
    report(rows, args.sql)
    failed = [f"{x['backend']} {x['impl']}" for x in rows if not x.get("rt") or not x.get("tp")]
    wrong = [
        f"{x['backend']} {x['impl']}: overspend {x['tp']['overspend']}, lost {x['tp']['lost']}"
        for x in rows
        if x.get("tp") and any(Decimal(v) for v in (*x["tp"]["overspend"].values(), *x["tp"]["lost"].values()))
    ]
    assert not wrong, "budget limits overspent or spend lost: " + "; ".join(wrong)
    assert not failed, "runs failed: " + ", ".join(failed)


if __name__ == "__main__":
    main()
