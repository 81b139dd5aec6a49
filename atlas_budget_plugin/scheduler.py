"""Background evaluation with ``schedule`` on a daemon thread, for hosts that send no ticks."""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from datetime import datetime

import schedule

from .types import utcnow

log = logging.getLogger("atlas_budget_plugin")


class BackgroundEvaluator:
    """Runs ``work(now)`` every ``interval`` seconds on a daemon thread until stopped.

    Starts only when asked (lazily, by the plugin's first hook call), stops
    cleanly at interpreter exit, and logs a failing pass instead of dying, so
    the next pass still happens.
    """

    def __init__(self, work: Callable[[datetime], object], interval: int, clock: Callable[[], datetime] = utcnow):
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.work = work
        self.interval = interval
        self.clock = clock
        self.passes = 0
        self._scheduler = schedule.Scheduler()
        self._scheduler.every(interval).seconds.do(self._run)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._lock:
            if self.running:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="atlas-budget-evaluator", daemon=True)
            self._thread.start()
            atexit.register(self.stop)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(min(1.0, self.interval / 4)):
            self._scheduler.run_pending()

    def _run(self) -> None:
        try:
            self.work(self.clock())
        except Exception:
            log.exception("background budget evaluation failed; retrying in %s s", self.interval)
        finally:
            self.passes += 1
