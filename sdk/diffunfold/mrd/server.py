"""``diffunfold serve``: an MRD streaming reconstruction server.

One thread accepts connections (and only on the address it is given); each connection gets a
session thread that reads messages and assembles slices, and a sender thread that returns
images in slice order. Reconstructions go to one backend through a single-worker queue, so
any number of connections share one model without blocking the accept loop or each other's
reading. Errors go back as TEXT messages, and every connection ends with CLOSE. SIGTERM (or
SIGINT) stops accepting, finishes the slice being reconstructed, tells the clients what was
not reconstructed, closes them and exits. Logs are JSON lines on stderr.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .protocol import MessageID, ProtocolError, SocketWriter, TruncatedMessage, messages
from .rawfile import HDF5_LOCK
from .recon import ReconSettings, reconstruct_slice, to_images

__all__ = ["MRDServer", "configure_logging", "log_event"]

LOG = logging.getLogger("diffunfold.mrd")


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z", "level": record.levelname.lower(), "event": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for the ``diffunfold.mrd`` logger."""
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonLines())
    LOG.handlers[:] = [handler]
    LOG.setLevel(level.upper())
    LOG.propagate = False


def log_event(event: str, level: int = logging.INFO, **fields) -> None:
    LOG.log(level, event, extra={"fields": fields})


class _SaveData:
    """The stream as an MRD file, visible under its final name only after a clean CLOSE."""

    def __init__(self, folder: Path, name: str, header_xml: bytes):
        import ismrmrd

        self.final = folder / name
        self.tmp = folder / f".{name}.tmp"
        with HDF5_LOCK:
            self._dset = ismrmrd.Dataset(str(self.tmp), "dataset", mode="w")
            self._dset.write_xml_header(header_xml)

    def append(self, acq) -> None:
        with HDF5_LOCK:
            self._dset.append_acquisition(acq)

    def finish(self, keep: bool) -> Path | None:
        with HDF5_LOCK:
            self._dset.close()
        if keep:
            os.replace(self.tmp, self.final)
            return self.final
        self.tmp.unlink(missing_ok=True)
        return None


@dataclass
class _Session:
    """One connection: the reading thread runs :meth:`run`; a sender thread returns images."""

    server: "MRDServer"
    sock: socket.socket
    conn_id: int
    peer: str
    settings: ReconSettings
    encoding: object = None
    assembler: object = None
    header_xml: bytes = b""
    errors: list = field(default_factory=list)
    lost: list = field(default_factory=list)
    notices: list = field(default_factory=list)
    sent: int = 0
    closed_by_client: bool = False
    save: _SaveData | None = None

    def __post_init__(self):
        self.writer = SocketWriter(self.sock)
        self.outbox: queue.Queue = queue.Queue()
        self.pending: list = []

    # -- reading ---------------------------------------------------------------------------------
    def run(self) -> None:
        sender = threading.Thread(target=self._send_loop, name=f"send-{self.conn_id}", daemon=True)
        sender.start()
        try:
            self._read()
        except EOFError:
            self._ended_without_close()
        except (TruncatedMessage, ProtocolError, InputError) as exc:
            self.fail(str(exc))
        except OSError as exc:
            if self.server.stopping.is_set():
                self._ended_without_close()
            else:
                self.fail(f"connection error: {exc}", tell=False)
        except Exception as exc:  # a bug must not take the server down, and the client must know
            LOG.exception("internal error", extra={"fields": {"conn": self.conn_id}})
            self.fail(f"internal error in the server: {type(exc).__name__}: {exc}")
        finally:
            self.outbox.put(None)
            sender.join()
            self._close()

    def _read(self) -> None:
        handlers = {MessageID.CONFIG_FILE: self._config_file, MessageID.CONFIG_TEXT: self._config_text,
                    MessageID.HEADER: self._header, MessageID.ACQUISITION: self._acquisition,
                    MessageID.TEXT: self._text}
        for mid, obj in messages(self.sock):
            if self.errors:
                return
            if mid == MessageID.CLOSE:
                self.closed_by_client = True
                for data in (self.assembler.finish() if self.assembler else []):
                    self._submit(data)
                return
            handler = handlers.get(mid)
            if handler is None:
                log_event("ignored", conn=self.conn_id, message=MessageID(mid).name)
            else:
                handler(obj)

    def _config_file(self, name) -> None:
        log_event("config", conn=self.conn_id, config_file=str(name))

    def _config_text(self, text) -> None:
        text = str(text).strip()
        if not text.startswith("{"):
            log_event("config", conn=self.conn_id, config_text=text[:200])
            return
        try:
            changes = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"CONFIG_TEXT is not valid JSON ({exc})") from None
        if not isinstance(changes, dict):
            raise InputError("CONFIG_TEXT must be a JSON object of settings, e.g. {\"samples\": 4}")
        self.settings = self.settings.updated(changes)
        log_event("config", conn=self.conn_id, settings=changes)

    def _header(self, header) -> None:
        from .assemble import SliceAssembler
        from .header import encoding_of

        self.encoding = encoding_of(header)
        self.assembler = SliceAssembler(self.encoding)
        self.header_xml = header.toXML().encode("utf-8")
        if self.server.savedata is not None:
            name = f"meas_{time.strftime('%Y%m%d-%H%M%S')}_{self.conn_id:04d}.h5"
            self.save = _SaveData(self.server.savedata, name, self.header_xml)
        log_event("header", conn=self.conn_id, grid=self.encoding.grid, slices=self.encoding.slices,
                  coils=self.encoding.coils)

    def _acquisition(self, acq) -> None:
        if self.assembler is None:
            raise InputError("an ACQUISITION came before the HEADER; send the ISMRMRD XML header first")
        if self.save is not None:
            self.save.append(acq)
        for data in self.assembler.add(acq):
            self._submit(data)

    def _text(self, text) -> None:
        log_event("client text", conn=self.conn_id, text=str(text)[:500])

    def _submit(self, data) -> None:
        settings, encoding = self.settings, self.encoding
        future = self.server.submit(self._reconstruct, data, encoding, settings)
        if future is None:  # the server is shutting down
            self.lost.append(data.slice)
            return
        self.pending.append(future)
        self.outbox.put((data, future))

    def _reconstruct(self, data, encoding, settings) -> list:
        rec = reconstruct_slice(self.server.solver, data, encoding, settings)
        log_event("reconstructed", conn=self.conn_id, slice=data.slice, seconds=round(rec.seconds, 3),
                  acceleration=round(data.acceleration, 2), samples=settings.samples)
        return to_images(rec, data, encoding, settings, self.server.package_name)

    # -- sending and closing ---------------------------------------------------------------------
    def _send_loop(self) -> None:
        while (item := self.outbox.get()) is not None:
            data, future = item
            try:
                images = future.result()
            except CancelledError:
                self.lost.append(data.slice)
                continue
            except InputError as exc:
                self.fail(str(exc))
                continue
            except Exception as exc:
                LOG.exception("reconstruction failed", extra={"fields": {"conn": self.conn_id}})
                self.fail(f"the reconstruction of slice {data.slice} failed: {type(exc).__name__}: {exc}")
                continue
            try:  # a slice reconstructed before an error still goes out
                for img in images:
                    self.writer.send(img)
                    self.sent += 1
            except OSError as exc:
                self.fail(f"cannot send images: {exc}", tell=False)

    def fail(self, message: str, tell: bool = True) -> None:
        """Record an error, stop queued work of this connection and stop reading."""
        if not self.errors:
            log_event("error", logging.WARNING, conn=self.conn_id, error=message)
        self.errors.append((message, tell))
        for future in self.pending:
            future.cancel()
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def _ended_without_close(self) -> None:
        if self.errors:  # the reading was stopped on purpose after an error
            return
        if self.server.stopping.is_set():  # images already reconstructed still go out
            self.notices.append("the server is shutting down; the stream was not finished")
            log_event("interrupted by shutdown", conn=self.conn_id)
        else:
            self.fail("the client disconnected without CLOSE", tell=False)

    def _close(self) -> None:
        tell = [m for m, t in self.errors if t] + self.notices
        if self.lost:
            tell.append(f"slices not reconstructed (server shutting down): {sorted(set(self.lost))}")
        try:
            for message in tell:
                self.writer.send(f"error: {message}")
        except OSError:
            pass
        self.writer.close()
        try:
            self.sock.close()
        except OSError:
            pass
        ok = not (self.errors or self.notices or self.lost)
        saved = self.save.finish(keep=ok and self.closed_by_client) if self.save else None
        log_event("closed", conn=self.conn_id, peer=self.peer, images=self.sent, ok=ok,
                  saved=str(saved) if saved else None)


class MRDServer:
    """Listen on ``host:port`` (port 0: any free one, see :attr:`port`) and reconstruct MRD
    streams with ``solver``."""

    def __init__(self, solver, settings: ReconSettings, host: str = "127.0.0.1", port: int = 9002,
                 savedata: str | os.PathLike | None = None, idle_timeout: float = 300.0, package_name: str = ""):
        self.solver = solver
        self.settings = settings.checked()
        self.package_name = package_name
        self.idle_timeout = float(idle_timeout)
        self.savedata = Path(savedata) if savedata else None
        if self.savedata is not None:
            self.savedata.mkdir(parents=True, exist_ok=True)
            for stale in self.savedata.glob(".meas_*.h5.tmp"):  # left by a killed server
                stale.unlink(missing_ok=True)
        try:
            self.listener = socket.create_server((host, int(port)))
        except OSError as exc:
            raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                             "or --host") from None
        self.host, self.port = self.listener.getsockname()[:2]
        self.stopping = threading.Event()
        self._backend = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recon")
        self._submit_lock = threading.Lock()
        self._sessions: dict[int, tuple[_Session, threading.Thread]] = {}
        self._ids = itertools.count(1)

    def submit(self, fn, *args):
        """Queue work for the one backend (FIFO over all connections); None once stopping."""
        with self._submit_lock:
            if self.stopping.is_set():
                return None
            return self._backend.submit(fn, *args)

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stop())

    def stop(self) -> None:
        self.stopping.set()

    def serve_forever(self) -> None:
        log_event("listening", host=self.host, port=self.port, pid=os.getpid(),
                  backend=getattr(self.solver, "backend_name", "?"))
        self.listener.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                sock, addr = self.listener.accept()
            except (socket.timeout, InterruptedError):
                continue
            except OSError:
                if self.stopping.is_set():
                    break
                raise
            self._start_session(sock, f"{addr[0]}:{addr[1]}")
        self._shutdown()

    def _start_session(self, sock: socket.socket, peer: str) -> None:
        sock.settimeout(self.idle_timeout)
        conn_id = next(self._ids)
        session = _Session(self, sock, conn_id, peer, self.settings)
        thread = threading.Thread(target=self._run_session, args=(session,), name=f"conn-{conn_id}", daemon=True)
        self._sessions[conn_id] = (session, thread)
        log_event("connection", conn=conn_id, peer=peer, active=len(self._sessions))
        thread.start()

    def _run_session(self, session: _Session) -> None:
        try:
            session.run()
        finally:
            self._sessions.pop(session.conn_id, None)

    def _shutdown(self) -> None:
        log_event("stopping", active=len(self._sessions))
        self.listener.close()
        with self._submit_lock:
            self._backend.shutdown(wait=False, cancel_futures=True)  # the slice in flight goes on
        for session, _ in list(self._sessions.values()):
            try:
                session.sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        self._backend.shutdown(wait=True)
        for _, thread in list(self._sessions.values()):
            thread.join(timeout=30)
        log_event("stopped")
