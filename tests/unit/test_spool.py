"""The outage spool: durable appends, ordered replay, torn lines and records that cannot be recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atlas_budget_plugin.store.spool import Spool


class StoreDown(Exception):
    pass


def test_append_and_replay_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "deep" / "spool.jsonl")
    for i in range(3):
        spool.append({"n": i})
    assert spool.pending() == 3
    seen: list[int] = []
    assert spool.replay(lambda r: seen.append(r["n"])) == 3
    assert seen == [0, 1, 2] and spool.pending() == 0 and not spool.path.exists()
    assert spool.replay(lambda r: None) == 0


def test_store_down_again_keeps_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    for i in range(4):
        spool.append({"n": i})
    calls: list[int] = []

    def record(r: dict[str, Any]) -> None:
        calls.append(r["n"])
        if r["n"] == 1:
            raise StoreDown("gone")

    assert spool.replay(record, stop_on=(StoreDown,)) == 1
    assert calls == [0, 1]
    assert [json.loads(line)["n"] for line in spool.path.read_text().splitlines()] == [1, 2, 3]


def test_bad_records_are_kept_and_torn_lines_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append({"n": 0})
    spool.append({"n": 1})
    with spool.path.open("a") as fh:
        fh.write('{"n": 2, "tr')  # a crash in the middle of an append that never reached fsync

    def record(r: dict[str, Any]) -> None:
        if r["n"] == 0:
            raise ValueError("cannot be recorded")

    assert spool.replay(record, stop_on=(StoreDown,)) == 1
    assert [json.loads(line)["n"] for line in spool.path.read_text().splitlines()] == [0]
    assert "dropping unreadable line 3" in caplog.text and "cannot be recorded" in caplog.text
