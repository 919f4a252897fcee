"""One connection of ``diffunfold serve`` (:mod:`.server`): its reading thread assembles
slices from the messages, hands them to the server's workers and a sender thread returns the
images in slice order; errors go back as TEXT messages before CLOSE. The stream can also be
saved as an MRD file (``--savedata``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .auth import TOKEN_PREFIX, token_matches
from .events import LOG, log_event
from .limits import START_MESSAGE_MAX, TEXT_MESSAGE_MAX
from .protocol import MessageID, ProtocolError, ReadTimeout, SocketReader, SocketWriter, reader_messages
from .rawfile import HDF5_LOCK
from .recon import ReconSettings, reconstruct_slice, to_images

# After an error, how long the reply (TEXT, CLOSE) is given to reach a client that is still sending.
REPLY_GRACE_S = 0.25


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
class Session:
    """One connection: the reading thread runs :meth:`run`; a sender thread returns images."""

    server: Any  # the MRDServer that accepted the connection
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
        limits = self.server.limits
        self.writer = SocketWriter(self.sock)
        self.outbox: queue.Queue = queue.Queue()
        self.pending: list = []
        self.account = self.server.ledger.account(limits.max_buffer_per_connection)
        self.authenticated = self.server.token is None
        self.start_deadline = time.monotonic() + limits.start_timeout
        # until its header has come, a connection may send only small messages, and soon
        text_max = TEXT_MESSAGE_MAX if self.authenticated else START_MESSAGE_MAX
        self.reader = SocketReader(
            self.sock,
            max_message=START_MESSAGE_MAX,
            max_text=text_max,
            idle_timeout=limits.start_timeout,
            message_timeout=limits.start_timeout,
            account=self.account,
        )

    # -- reading ---------------------------------------------------------------------------------
    def run(self) -> None:
        sender = threading.Thread(target=self._send_loop, name=f"send-{self.conn_id}", daemon=True)
        sender.start()
        try:
            self._read()
        except EOFError:
            self._ended_without_close()
        except ReadTimeout as exc:
            self.fail(
                str(exc)
                if self.encoding is not None
                else f"no header within {self.server.limits.start_timeout:g} s of connecting; the connection is closed"
            )
        except (ProtocolError, InputError) as exc:
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
        handlers = {
            MessageID.CONFIG_FILE: self._config_file,
            MessageID.CONFIG_TEXT: self._config_text,
            MessageID.HEADER: self._header,
            MessageID.ACQUISITION: self._acquisition,
            MessageID.TEXT: self._text,
        }
        for mid, obj in reader_messages(self.reader):
            if self.errors:
                return
            if not self.authenticated and mid not in (MessageID.CONFIG_FILE, MessageID.TEXT):
                raise InputError(
                    "this server needs a token: send a TEXT message 'token <the token>' before the "
                    "header (diffunfold send --token-file FILE)"
                )
            if mid == MessageID.CLOSE:
                self.closed_by_client = True
                for data in self.assembler.finish() if self.assembler else []:
                    self._submit(data)
                return
            handler = handlers.get(mid)
            if handler is None:
                log_event("ignored", conn=self.conn_id, message=MessageID(mid).name)
            else:
                handler(obj)
            self._set_bounds()

    def _set_bounds(self) -> None:
        """The reader's bounds for the next message: small and soon until the header has come."""
        limits, reader = self.server.limits, self.reader
        if self.encoding is not None:
            reader.max_message, reader.max_text = limits.max_message, TEXT_MESSAGE_MAX
            reader.idle_timeout, reader.message_timeout = limits.idle_timeout, limits.message_timeout
            return
        left = self.start_deadline - time.monotonic()
        if left <= 0:
            raise InputError(f"no header within {limits.start_timeout:g} s of connecting; the connection is closed")
        reader.idle_timeout = reader.message_timeout = left
        if self.authenticated:
            reader.max_text = TEXT_MESSAGE_MAX

    def _config_file(self, name) -> None:
        log_event("config", conn=self.conn_id, config_file=str(name)[:200])

    def _config_text(self, text) -> None:
        text = str(text).strip()
        if not text.startswith("{"):
            log_event("config", conn=self.conn_id, config_text=text[:200])
            return
        try:
            changes = json.loads(text)
        except ValueError as exc:  # not JSON, or an integer of thousands of digits
            raise InputError(f"CONFIG_TEXT is not valid JSON ({exc})") from None
        if not isinstance(changes, dict):
            raise InputError('CONFIG_TEXT must be a JSON object of settings, e.g. {"samples": 4}')
        settings = self.settings.updated(changes)
        self.server.limits.check_settings(settings)
        self.settings = settings
        log_event("config", conn=self.conn_id, settings=changes)

    def _header(self, header) -> None:
        from .assemble import SliceAssembler
        from .header import encoding_of

        if self.encoding is not None:
            raise InputError("a second HEADER in one stream; open a new connection for each measurement")
        self.encoding = encoding_of(header)
        self.assembler = SliceAssembler(self.encoding, account=self.account)
        self.header_xml = header.toXML().encode("utf-8")
        log_event(
            "header", conn=self.conn_id, grid=self.encoding.grid, slices=self.encoding.slices, coils=self.encoding.coils
        )

    def _acquisition(self, acq) -> None:
        if self.assembler is None:
            raise InputError("an ACQUISITION came before the HEADER; send the ISMRMRD XML header first")
        if self.save is None and self.server.savedata is not None:  # a stream with acquisitions only
            name = f"meas_{time.strftime('%Y%m%d-%H%M%S')}_{self.conn_id:04d}.h5"
            self.save = _SaveData(self.server.savedata, name, self.header_xml)
        if self.save is not None:
            self.save.append(acq)
        for data in self.assembler.add(acq):
            self._submit(data)

    def _text(self, text) -> None:
        text = str(text)
        if self.authenticated:
            if not text.startswith(TOKEN_PREFIX):  # never log a token
                log_event("client text", conn=self.conn_id, text=text[:500])
            return
        if not token_matches(text, self.server.token):
            raise InputError("wrong token; the connection is closed")
        self.authenticated = True
        log_event("authenticated", conn=self.conn_id, peer=self.peer)

    def _submit(self, data) -> None:
        settings, encoding = self.settings, self.encoding
        future = self.server.scheduler.submit(
            self.conn_id,
            self._reconstruct,
            data,
            encoding,
            settings,
            give_up=lambda: bool(self.errors) or self.server.stopping.is_set(),
        )
        if future is None:  # the server is shutting down, or this connection failed
            if not self.errors:
                self.lost.append(data.slice)
            self.account.release(data.nbytes)
            return
        self.pending.append(future)
        self.outbox.put((data, future))

    def _reconstruct(self, solver, data, encoding, settings) -> list:
        rec = reconstruct_slice(solver, data, encoding, settings)
        log_event(
            "reconstructed",
            conn=self.conn_id,
            slice=data.slice,
            seconds=round(rec.seconds, 3),
            acceleration=round(data.acceleration, 2),
            samples=settings.samples,
        )
        return to_images(rec, data, encoding, settings, self.server.package_name)

    # -- sending and closing ---------------------------------------------------------------------
    def _send_loop(self) -> None:
        while (item := self.outbox.get()) is not None:
            data, future = item
            try:
                self._send_result(data, future)
            finally:
                self.account.release(data.nbytes)  # the slice's k-space is no longer needed

    def _send_result(self, data, future) -> None:
        try:
            images = future.result()
        except CancelledError:
            self.lost.append(data.slice)
            return
        except InputError as exc:
            self.fail(str(exc))
            return
        except Exception as exc:
            LOG.exception("reconstruction failed", extra={"fields": {"conn": self.conn_id}})
            self.fail(f"the reconstruction of slice {data.slice} failed: {type(exc).__name__}: {exc}")
            return
        try:  # a slice reconstructed before an error still goes out
            for img in images:
                self.writer.send(img)
                self.sent += 1
        except OSError as exc:
            self.fail(f"cannot send images: {exc}", tell=False)

    def fail(self, message: str, tell: bool = True) -> None:
        """Record an error, stop queued work of this connection and stop reading."""
        if len(message) > 500:  # it may quote what the client sent
            message = message[:500] + " [...]"
        if not self.errors:
            log_event("error", logging.WARNING, conn=self.conn_id, peer=self.peer, error=message)
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

    def _let_the_reply_arrive(self) -> None:
        """After an error the client may still be sending: closing with its data unread resets
        the connection, and a reset can destroy the TEXT and CLOSE still in flight. So FIN after
        them, and a moment (bounded) for the client to read them before the socket closes."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        time.sleep(REPLY_GRACE_S)

    def _close(self) -> None:
        self.server.scheduler.forget(self.conn_id)
        tell = [m for m, t in self.errors if t] + self.notices
        if self.lost:
            tell.append(f"slices not reconstructed (server shutting down): {sorted(set(self.lost))}")
        try:
            for message in tell:
                self.writer.send(f"error: {message}")
        except OSError:
            pass
        self.writer.close()
        if self.errors:
            self._let_the_reply_arrive()
        try:
            self.sock.close()
        except OSError:
            pass
        self.account.close()
        ok = not (self.errors or self.notices or self.lost)
        saved = self.save.finish(keep=ok and self.closed_by_client) if self.save else None
        log_event(
            "closed", conn=self.conn_id, peer=self.peer, images=self.sent, ok=ok, saved=str(saved) if saved else None
        )
