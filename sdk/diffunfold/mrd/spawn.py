"""``diffunfold serve`` in a child process, for tests, benchmarks and scripts: it starts the
server on a free port, waits for its "listening" line and collects its JSON log events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

__all__ = ["ServerProcess"]


class ServerProcess:
    """``ServerProcess(package, *options)``: the server on ``127.0.0.1:<port>`` (OS-assigned)."""

    def __init__(self, package, *options: str, start_timeout: float = 60.0, omp_threads: str | None = "1"):
        env = dict(os.environ) if omp_threads is None else {**os.environ, "OMP_NUM_THREADS": omp_threads}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "diffunfold", "serve", str(package), "--port", "0", *options],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.events: list[dict] = []
        self._listening = threading.Event()
        threading.Thread(target=self._collect, daemon=True).start()
        if not self._listening.wait(start_timeout):
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {self.events}")
        self.port = next(e["port"] for e in self.events if e.get("event") == "listening")

    def _collect(self) -> None:
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "unstructured", "line": line.rstrip()}
            self.events.append(event)
            if event.get("event") == "listening":
                self._listening.set()
        self._listening.set()  # the process ended (before listening, if it never did)

    def named(self, name: str) -> list[dict]:
        return [e for e in list(self.events) if e.get("event") == name]

    def wait_for(self, name: str, timeout: float = 60.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if found := self.named(name):
                return found[0]
            time.sleep(0.05)
        raise TimeoutError(f"no {name!r} event from the server in {timeout} s")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)
