"""``diffunfold send``: stream a raw MRD file to a server and collect the images it returns.

A reader thread takes the server's messages while the main thread sends, so neither side can
block the other on full socket buffers. The reply records, per slice, when its last
acquisition left and when its first image came back (the latency a scanner would see).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field

from ..errors import DiffUnfoldError, InputError
from .auth import token_message
from .limits import CLIENT_MESSAGE_MAX, TEXT_MESSAGE_MAX
from .protocol import MessageID, ProtocolError, SocketWriter, messages

__all__ = ["Reply", "StreamError", "stream", "send_file"]

_LAST_IN_SLICE = 8


class StreamError(DiffUnfoldError):
    """The server reported an error, or the stream did not finish cleanly."""


@dataclass
class Reply:
    images: list = field(default_factory=list)
    texts: list = field(default_factory=list)
    closed: bool = False  # the server ended with CLOSE
    failure: str | None = None  # how the stream broke, if it did
    sent_at: dict = field(default_factory=dict)  # slice -> time its last acquisition was sent
    received_at: dict = field(default_factory=dict)  # slice -> time its first image arrived
    header_xml: bytes = b""
    started: float = 0.0
    finished: float = 0.0

    @property
    def errors(self) -> list[str]:
        return [t for t in self.texts if t.startswith("error")]

    @property
    def latencies(self) -> dict[int, float]:
        return {s: self.received_at[s] - self.sent_at[s] for s in self.received_at if s in self.sent_at}

    def check(self) -> Reply:
        """Raise :class:`StreamError` unless the server closed cleanly without errors."""
        if self.errors:
            raise StreamError("the server reported: " + "; ".join(self.errors))
        if not self.closed:
            raise StreamError(
                f"the stream did not finish: {self.failure or 'the server closed without CLOSE'} "
                f"({len(self.images)} image(s) received)"
            )
        return self


def _receive(sock: socket.socket, reply: Reply) -> None:
    try:
        for mid, obj in messages(sock, max_message=CLIENT_MESSAGE_MAX, max_text=TEXT_MESSAGE_MAX):
            if mid == MessageID.CLOSE:
                reply.closed = True
                return
            if mid == MessageID.IMAGE:
                reply.images.append(obj)
                reply.received_at.setdefault(int(obj.slice), time.perf_counter())
            elif mid == MessageID.TEXT:
                reply.texts.append(str(obj))
    except (EOFError, ProtocolError, OSError) as exc:
        reply.failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def stream(
    host: str,
    port: int,
    header_xml: bytes,
    acquisitions,
    config: str = "diffunfold",
    config_text: str | None = None,
    timeout: float = 600.0,
    token: str | None = None,
) -> Reply:
    """Send a header and acquisitions, then CLOSE; wait for the server's CLOSE and return the
    reply (check it with :meth:`Reply.check`). ``token``: for a server that asks for one."""
    from ismrmrd.serialization import ConfigFile, ConfigText

    from .header import parse_header

    header = parse_header(header_xml)
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        raise StreamError(
            f"cannot connect to {host}:{port} ({exc.strerror or exc}); is `diffunfold serve` running there?"
        ) from None
    reply = Reply(header_xml=header_xml, started=time.perf_counter())
    receiver = threading.Thread(target=_receive, args=(sock, reply), daemon=True)
    receiver.start()
    writer = SocketWriter(sock)
    try:
        writer.send(ConfigFile(config))
        if token is not None:
            writer.send(token_message(token))
        if config_text:
            writer.send(ConfigText(config_text))
        writer.send(header)
        for acq in acquisitions:
            writer.send(acq)
            if acq.is_flag_set(_LAST_IN_SLICE):
                reply.sent_at[int(acq.idx.slice)] = time.perf_counter()
        writer.close()
    except OSError as exc:
        reply.failure = f"sending failed: {exc}"
    receiver.join(timeout)
    reply.finished = time.perf_counter()
    sock.close()
    return reply


def send_file(path: str | os.PathLike, host: str = "127.0.0.1", port: int = 9002, **options) -> Reply:
    """Stream a raw MRD file (see :func:`diffunfold.mrd.rawfile.iter_acquisitions`)."""
    from .rawfile import iter_acquisitions

    items = iter_acquisitions(path)
    try:
        try:
            header_xml = next(items)
        except StopIteration:  # pragma: no cover - iter_acquisitions always yields the header
            raise InputError(f"{path} has no header") from None
        return stream(host, port, header_xml, items, **options)
    finally:
        # Close the file here, in this thread: left to the garbage collector, an unfinished
        # reader would close its HDF5 file in whichever thread happens to collect it.
        items.close()
