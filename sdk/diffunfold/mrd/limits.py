"""Every bound on what a client can make ``diffunfold serve`` spend, in one place.

:class:`ServerLimits` holds the operator's settings (``diffunfold serve --help`` lists them
with their units and defaults); :class:`MemoryLedger` counts the bytes the server holds for
its connections (messages being read, k-space being assembled, slices waiting for their
reconstruction) against a limit per connection and one for all of them together, and refuses
the bytes that would cross either before they are allocated.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass

from .. import cli_values as V
from ..errors import InputError

__all__ = [
    "MiB",
    "ServerLimits",
    "LimitExceeded",
    "MemoryLedger",
    "Account",
    "TEXT_MESSAGE_MAX",
    "START_MESSAGE_MAX",
    "CLIENT_MESSAGE_MAX",
    "default_total_buffer",
    "descriptor_warning",
]

MiB = 1 << 20
# HEADER, TEXT and CONFIG_TEXT hold XML or JSON of kilobytes; a parser needs many times the
# text's size in memory, so these messages get a tighter bound than k-space lines.
TEXT_MESSAGE_MAX = 1 * MiB
# Before a connection has sent its header (and its token, where one is required) it has no
# business sending anything large.
START_MESSAGE_MAX = 64 * 1024
# What `diffunfold send` accepts from a server per message (an image).
CLIENT_MESSAGE_MAX = 1024 * MiB


def default_total_buffer() -> int:
    """4 GiB, or half the machine's memory where that is less."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux/macOS
        physical = 8 << 30
    return int(min(4 << 30, physical // 2))


@dataclass(frozen=True)
class ServerLimits:
    """The server's limits (bytes and seconds). ``max_samples``/``max_steps`` bound what a
    connection's CONFIG_TEXT may ask for; they never exceed the command line's own caps."""

    max_message: int = 16 * MiB  # one message's declared size
    max_buffer_per_connection: int = min(1024 * MiB, default_total_buffer())  # held for one connection
    max_buffer_total: int = default_total_buffer()  # ... and all connections together
    max_connections: int = 64  # open at once; more are refused with a message
    idle_timeout: float = 300.0  # seconds without a message before closing
    message_timeout: float = 60.0  # seconds one message may take to arrive once begun
    start_timeout: float = 30.0  # seconds a new connection has to send its header
    max_samples: int = 16  # posterior samples per slice a client may ask for
    max_steps: int = 100  # sampler steps a client may ask for
    queue_per_connection: int = 8  # slices of one connection waiting for a worker
    workers: int = 1  # reconstructions at once (each its own model copy)

    def checked(self) -> ServerLimits:
        for name in (
            "max_message",
            "max_buffer_per_connection",
            "max_buffer_total",
            "max_connections",
            "queue_per_connection",
            "workers",
            "max_samples",
            "max_steps",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("idle_timeout", "message_timeout", "start_timeout"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name.replace('_', '-')} must be a positive number of seconds")
        if self.max_samples > V.SAMPLES.hi or self.max_steps > V.STEPS.hi:
            raise InputError(
                f"--max-samples and --max-steps go up to the command line's caps "
                f"({int(V.SAMPLES.hi)} and {int(V.STEPS.hi)})"
            )
        if self.max_buffer_per_connection > self.max_buffer_total:
            raise InputError("--max-buffer-mib (per connection) is larger than --max-total-buffer-mib")
        return self

    def check_settings(self, settings) -> None:
        """Refuse reconstruction settings above the caps (a connection's CONFIG_TEXT)."""
        for name, cap, flag in (
            ("samples", self.max_samples, "--max-samples"),
            ("steps", self.max_steps, "--max-steps"),
        ):
            value = getattr(settings, name)
            if value is not None and value > cap:
                raise InputError(
                    f"{name} {value} is above this server's limit of {cap} ({flag}); ask for at most {cap}"
                )
        if settings.seed > V.SEED.hi:
            raise InputError(f"seed must be at most {int(V.SEED.hi)}, got {settings.seed}")

    def describe(self) -> dict:
        """For the log: sizes in MiB, the rest as they are."""
        sized = ("max_message", "max_buffer")
        return {
            (f"{k}_mib" if k.startswith(sized) else k): (round(v / MiB, 1) if k.startswith(sized) else v)
            for k, v in asdict(self).items()
        }


def descriptor_warning(max_connections: int) -> str | None:
    """A warning when the process may run out of file descriptors before reaching
    ``max_connections`` (the server survives that, but refuses connections it could serve)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return None
    if soft == resource.RLIM_INFINITY or soft >= max_connections + 32:
        return None
    return (
        f"the descriptor limit ({soft}, ulimit -n) is close to --max-connections {max_connections}: raise "
        "it, or lower --max-connections"
    )


class LimitExceeded(InputError):
    """Holding more bytes would cross a connection's or the server's limit."""


class MemoryLedger:
    """The bytes held for all connections; each connection charges through its :class:`Account`."""

    def __init__(self, total: int):
        self.total = int(total)
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()

    def account(self, limit: int) -> Account:
        return Account(self, int(limit))

    def _take(self, account: Account, nbytes: int, what: str) -> None:
        with self._lock:
            if account.used + nbytes > account.limit:
                raise LimitExceeded(
                    f"{what} would make this connection hold {_mib(account.used + nbytes)} MiB, above the "
                    f"server's limit of {_mib(account.limit)} MiB per connection (--max-buffer-mib)"
                )
            if self.used + nbytes > self.total:
                raise LimitExceeded(
                    f"the server is busy: {what} would make it hold {_mib(self.used + nbytes)} MiB for all "
                    f"connections, above its limit of {_mib(self.total)} MiB (--max-total-buffer-mib); "
                    "try again later"
                )
            account.used += nbytes
            self.used += nbytes
            self.peak = max(self.peak, self.used)

    def _give(self, account: Account, nbytes: int) -> None:
        with self._lock:
            nbytes = min(nbytes, account.used)
            account.used -= nbytes
            self.used -= nbytes


class Account:
    """One connection's share of the :class:`MemoryLedger`."""

    def __init__(self, ledger: MemoryLedger, limit: int):
        self.ledger, self.limit, self.used = ledger, limit, 0

    def charge(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` more, or raise :class:`LimitExceeded` (nothing counted)."""
        if nbytes > 0:
            self.ledger._take(self, int(nbytes), what)

    def release(self, nbytes: int) -> None:
        if nbytes > 0:
            self.ledger._give(self, int(nbytes))

    def close(self) -> None:
        """Give back everything still counted (the connection has ended)."""
        self.ledger._give(self, self.used)


def _mib(nbytes: int) -> str:
    return f"{nbytes / MiB:.0f}" if nbytes >= 10 * MiB else f"{nbytes / MiB:.1f}"
