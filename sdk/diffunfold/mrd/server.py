"""``diffunfold serve``: an MRD streaming reconstruction server.

One thread accepts connections (and only on the address it is given); each connection gets a
session thread (:mod:`.session`) that reads messages and assembles slices, and a sender thread
that returns images in slice order. Reconstructions go to a few workers (:mod:`.scheduler`), each with its
own copy of the model, which take the connections' slices in turn. Errors go back as TEXT
messages, and every connection ends with CLOSE. SIGTERM (or SIGINT) stops accepting, finishes
the slices being reconstructed, tells the clients what was not reconstructed, closes them and
exits. Logs are JSON lines on stderr.

Nothing a client sends is trusted: every limit in :class:`~.limits.ServerLimits` (message
sizes, bytes held, connections, timeouts, samples and steps) is checked before the server
spends what it bounds, a client that crosses one gets an error and a closed connection, and
the server goes on serving the others. Beyond loopback a token is required (:mod:`.auth`).
"""

from __future__ import annotations

import errno
import io
import itertools
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

from ..errors import InputError
from .events import LOG, configure_logging, log_event
from .limits import MemoryLedger, ServerLimits
from .recon import ReconSettings
from .scheduler import FairScheduler
from .session import Session

__all__ = ["LOG", "MRDServer", "configure_logging", "log_event"]

# accept() errors that mean "no descriptors or buffers now": wait and go on serving
_SCARCE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# accept() errors about the one connection being accepted (it went away first)
_TRANSIENT = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN, errno.ENETDOWN, errno.EHOSTUNREACH}


class MRDServer:
    """Listen on ``host:port`` (port 0: any free one, see :attr:`port`) and reconstruct MRD
    streams with ``solvers`` (one per worker; a single solver is one worker). ``token``: the
    shared secret clients must send (None: none needed; :func:`.auth.require_access` decides
    whether that is allowed)."""

    def __init__(
        self,
        solvers,
        settings: ReconSettings,
        host: str = "127.0.0.1",
        port: int = 9002,
        savedata: str | os.PathLike | None = None,
        limits: ServerLimits | None = None,
        token: str | None = None,
        package_name: str = "",
    ):
        self.solvers = list(solvers) if isinstance(solvers, (list, tuple)) else [solvers]
        self.limits = (limits or ServerLimits()).checked()
        self.settings = settings.checked()
        self.limits.check_settings(self.settings)
        self.token = token
        self.package_name = package_name
        self.savedata = Path(savedata) if savedata else None
        if self.savedata is not None:
            self.savedata.mkdir(parents=True, exist_ok=True)
            for stale in self.savedata.glob(".meas_*.h5.tmp"):  # left by a killed server
                stale.unlink(missing_ok=True)
        try:
            self.listener = socket.create_server((host, int(port)))
        except OSError as exc:
            raise InputError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host"
            ) from None
        self.host, self.port = self.listener.getsockname()[:2]
        self.stopping = threading.Event()
        self.ledger = MemoryLedger(self.limits.max_buffer_total)
        self.scheduler = FairScheduler(self.solvers, self.limits.queue_per_connection)
        self._sessions: dict[int, tuple[Session, threading.Thread]] = {}
        self._ids = itertools.count(1)
        self._reserve = _spare_descriptor()  # given up to refuse a connection when none are left
        self._scarce_since: float | None = None

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stop())

    def stop(self) -> None:
        self.stopping.set()

    def serve_forever(self) -> None:
        log_event(
            "listening",
            host=self.host,
            port=self.port,
            pid=os.getpid(),
            backend=getattr(self.solvers[0], "backend_name", "?"),
            workers=len(self.solvers),
            token=self.token is not None,
            limits=self.limits.describe(),
        )
        self.listener.settimeout(0.2)
        while not self.stopping.is_set():
            self._accept_one()
        self._shutdown()

    def _accept_one(self) -> None:
        try:
            sock, addr = self.listener.accept()
        except (TimeoutError, InterruptedError):
            return
        except OSError as exc:
            if self.stopping.is_set():
                return
            if exc.errno in _SCARCE:
                self._scarce(exc)
            elif exc.errno not in _TRANSIENT:
                log_event("accept failed", logging.WARNING, error=str(exc))
                time.sleep(0.1)
            return
        if self._scarce_since is not None:
            log_event("accepting again", seconds=round(time.monotonic() - self._scarce_since, 1))
            self._scarce_since = None
        self._admit(sock, f"{addr[0]}:{addr[1]}")

    def _scarce(self, exc: OSError) -> None:
        """Out of descriptors (or buffers): refuse the waiting connection with the spare
        descriptor, then wait a little for others to close."""
        if self._scarce_since is None:
            self._scarce_since = time.monotonic()
            log_event("out of descriptors", logging.WARNING, error=exc.strerror or str(exc), active=len(self._sessions))
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
            try:
                sock, addr = self.listener.accept()
                _refuse(sock, f"{addr[0]}:{addr[1]}", "the server has run out of file descriptors; try again later")
            except OSError:
                pass
            self._reserve = _spare_descriptor()
        time.sleep(0.1)

    def _admit(self, sock: socket.socket, peer: str) -> None:
        limit = self.limits.max_connections
        if len(self._sessions) >= limit:
            _refuse(sock, peer, f"the server is serving its limit of {limit} connections; try again later")
            return
        conn_id = next(self._ids)
        session = Session(self, sock, conn_id, peer, self.settings)
        thread = threading.Thread(target=self._run_session, args=(session,), name=f"conn-{conn_id}", daemon=True)
        self._sessions[conn_id] = (session, thread)
        try:
            thread.start()
        except RuntimeError:  # no more threads
            self._sessions.pop(conn_id, None)
            _refuse(sock, peer, "the server cannot start another connection now; try again later")
            return
        log_event("connection", conn=conn_id, peer=peer, active=len(self._sessions))

    def _run_session(self, session: Session) -> None:
        try:
            session.run()
        finally:
            self._sessions.pop(session.conn_id, None)

    def _shutdown(self) -> None:
        log_event("stopping", active=len(self._sessions))
        self.listener.close()
        self.scheduler.shutdown(timeout=0)  # waiting slices are cancelled; the ones in flight go on
        for session, _ in list(self._sessions.values()):
            try:
                session.sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        self.scheduler.shutdown()
        for _, thread in list(self._sessions.values()):
            thread.join(timeout=30)
        if self._reserve is not None:
            os.close(self._reserve)
        log_event("stopped", peak_buffered_mib=round(self.ledger.peak / (1 << 20), 1))


def _spare_descriptor() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


def _refuse(sock: socket.socket, peer: str, reason: str) -> None:
    """Tell a connection why it is not served (a TEXT and CLOSE), and close it."""
    from ismrmrd.serialization import ProtocolSerializer

    log_event("refused", logging.WARNING, peer=peer, reason=reason)
    buf = io.BytesIO()
    out = ProtocolSerializer(buf)
    out.serialize(f"error: {reason}")
    out.close()
    try:
        sock.settimeout(1.0)
        sock.sendall(buf.getvalue())
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.0)
        sock.recv(1 << 16)  # what it already sent, so that closing does not reset the connection
    except OSError:
        pass
    finally:
        sock.close()
