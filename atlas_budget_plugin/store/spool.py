"""The outage spool: usage that could not reach the database, one fsynced JSON line per record.

Records are appended under an exclusive file lock and fsynced before
``post_llm_call`` returns, so a crash right after loses nothing. Replay hands
each record to an idempotent recorder (``call_id`` is the key) and then drops
the replayed lines, so a replay interrupted at any point is simply repeated.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("atlas_budget_plugin")


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        with lock.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably (fsync of the file, and of the folder when the file is new)."""
        line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
        with self._locked():
            new = not self.path.exists()
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            if new:
                self._sync_dir()

    def _sync_dir(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def pending(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open(encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip())

    def replay(self, record: Callable[[dict[str, Any]], object], stop_on: tuple[type[BaseException], ...] = ()) -> int:
        """Hand every spooled record to ``record``; returns how many were recorded.

        A record that raises one of ``stop_on`` (the store is down again) stops the
        replay and it and the rest stay for next time; a record that raises anything
        else is logged and kept for a person to look at, and the replay goes on.
        """
        with self._locked():
            if not self.path.exists():
                return 0
            lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
            kept: list[str] = []
            done = 0
            stopped = False
            for number, line in enumerate(lines, 1):
                if stopped:
                    kept.append(line)
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    # a torn last line from a crash mid-append never reached fsync: nothing was promised
                    log.error("dropping unreadable line %d of spool %s", number, self.path)
                    continue
                try:
                    record(data)
                except stop_on as exc:
                    log.warning("spool replay stopped at line %d of %s: %s", number, self.path, exc)
                    kept.append(line)
                    stopped = True
                    continue
                except Exception:
                    log.exception("spool line %d of %s cannot be recorded; it is kept", number, self.path)
                    kept.append(line)
                    continue
                done += 1
            self._rewrite(kept)
            return done

    def _rewrite(self, lines: list[str]) -> None:
        if not lines:
            self.path.unlink(missing_ok=True)
            return
        temp = self.path.with_name(self.path.name + ".tmp")
        with temp.open("w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, self.path)
        self._sync_dir()
