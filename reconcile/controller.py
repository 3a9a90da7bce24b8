"""The controller runner: N workers pulling keys from a work queue and reconciling them.

A reconcile function takes a key and returns a `Result` (or None). It must be level-
triggered: read the current desired and observed state, act on the difference, and be
safe to run again at any time. An exception means "try again later with backoff"; success
resets the key's backoff. The runner never holds objects, only keys.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from reconcile.workqueue import WorkQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    requeue: bool = False
    requeue_after: float | None = None


ReconcileFn = Callable[[str], "Result | None"]


class Controller:
    def __init__(self, name: str, reconcile: ReconcileFn, *, workers: int = 1,
                 queue: WorkQueue | None = None) -> None:
        self.name = name
        self.reconcile = reconcile
        self.workers = workers
        self.queue = queue if queue is not None else WorkQueue()
        self._threads: list[threading.Thread] = []
        self._active = 0
        self._lock = threading.Lock()
        self.reconciles = 0
        self.errors = 0

    def start(self) -> Controller:
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"{self.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _worker(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            with self._lock:
                self._active += 1
            try:
                self._process(key)
            finally:
                with self._lock:
                    self._active -= 1
                self.queue.done(key)

    def _process(self, key: str) -> None:
        try:
            result = self.reconcile(key)
        except Exception:
            self.errors += 1
            log.exception("%s: reconcile %s failed (retry %d)", self.name, key,
                          self.queue.num_requeues(key) + 1)
            self.queue.add_rate_limited(key)
            return
        finally:
            self.reconciles += 1
        self.queue.forget(key)
        if result is None:
            return
        if result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after)
        elif result.requeue:
            self.queue.add_rate_limited(key)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking keys, let in-flight reconciles finish (up to `timeout`)."""
        self.queue.shut_down()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    @property
    def idle(self) -> bool:
        with self._lock:
            return self._active == 0 and self.queue.pending() == 0
