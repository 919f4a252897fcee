"""Reconstructions from many connections on a few workers, the connections served in turn.

Each connection has its own queue of at most ``per_client`` waiting jobs (one job: one slice);
a connection that has more to submit waits, so its reading pauses and TCP slows its client.
The workers take one job at a time from the connections in rotation, not in arrival order, so
a client that queued many slices, or slow ones, delays another client by at most one of its
jobs per turn. Each worker owns one solver (the backends are not shared between threads).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

__all__ = ["FairScheduler"]


class FairScheduler:
    """``submit(client, fn, *args)`` runs ``fn(solver, *args)`` on a worker; returns a Future."""

    def __init__(self, solvers: list, per_client: int):
        self.per_client = int(per_client)
        self._cond = threading.Condition()
        self._queues: dict[int, deque] = {}
        self._turns: deque[int] = deque()  # clients with waiting jobs, next first
        self._stopping = False
        self._workers = [
            threading.Thread(target=self._work, args=(s,), name=f"recon-{i}", daemon=True)
            for i, s in enumerate(solvers)
        ]
        for w in self._workers:
            w.start()

    def submit(self, client: int, fn: Callable, *args, give_up: Callable[[], bool] = lambda: False):
        """Queue a job, waiting while ``client`` has ``per_client`` jobs waiting; None once the
        scheduler stops or ``give_up()`` turns true while waiting."""
        with self._cond:
            queue = self._queues.setdefault(client, deque())
            while len(queue) >= self.per_client and not self._stopping and not give_up():
                self._cond.wait(0.5)
            if self._stopping or give_up():
                return None
            future: Future = Future()
            queue.append((future, fn, args))
            if client not in self._turns:
                self._turns.append(client)
            self._cond.notify_all()
            return future

    def forget(self, client: int) -> None:
        """Cancel a client's waiting jobs and drop its queue (the connection has ended)."""
        with self._cond:
            for future, _, _ in self._queues.pop(client, ()):
                future.cancel()
            if client in self._turns:
                self._turns.remove(client)
            self._cond.notify_all()

    def waiting(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def _next(self):
        """The next job in rotation (blocking), or None when stopping."""
        with self._cond:
            while not self._stopping:
                while self._turns:
                    client = self._turns.popleft()
                    queue = self._queues.get(client, deque())
                    while queue:
                        future, fn, args = queue.popleft()
                        if future.set_running_or_notify_cancel():
                            if queue:
                                self._turns.append(client)  # its next job waits for the others' turns
                            self._cond.notify_all()
                            return future, fn, args
                self._cond.wait()
            return None

    def _work(self, solver) -> None:
        while (job := self._next()) is not None:
            future, fn, args = job
            try:
                future.set_result(fn(solver, *args))
            except BaseException as exc:  # the session reports it to its client
                future.set_exception(exc)

    def shutdown(self, timeout: float | None = None) -> None:
        """Cancel every waiting job; the jobs running finish; then the workers end."""
        with self._cond:
            self._stopping = True
            for queue in self._queues.values():
                for future, _, _ in queue:
                    future.cancel()
                queue.clear()
            self._turns.clear()
            self._cond.notify_all()
        for w in self._workers:
            w.join(timeout)
