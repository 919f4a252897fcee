"""The MRD streaming protocol on a socket, through ``ismrmrd.serialization``.

Messages are a little-endian uint16 ID and a payload: CONFIG_FILE (1, 1024 bytes), CONFIG_TEXT
(2), HEADER (3, the XML header), CLOSE (4), TEXT (5), ACQUISITION (1008), IMAGE (1022), ... .
ismrmrd 1.15's ``ProtocolDeserializer``/``ProtocolSerializer`` read and write all of them
(the config messages included: older versions did not). What this module adds is what a
server needs around them: a stream that tells a clean end of stream (between messages) from a
truncated message and checks each message's declared size (and the time it takes to arrive)
before it buffers a byte of it, and a writer that several threads may share.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

from ismrmrd.serialization import ISMRMRDMessageID as MessageID
from ismrmrd.serialization import ProtocolDeserializer, ProtocolSerializer

from ..errors import InputError

__all__ = [
    "MessageID",
    "ProtocolError",
    "TruncatedMessage",
    "MessageTooLarge",
    "ReadTimeout",
    "SocketReader",
    "SocketWriter",
    "messages",
    "reader_messages",
]


class ProtocolError(Exception):
    """The peer broke the protocol (unknown message ID, malformed payload)."""


class TruncatedMessage(ProtocolError):
    """The stream ended inside a message."""


class MessageTooLarge(ProtocolError):
    """A message declared more bytes than the reader takes; nothing of it was buffered."""


class ReadTimeout(ProtocolError):
    """No message came within the idle timeout, or one did not finish within its own."""


_TEXT_IDS = {MessageID.HEADER, MessageID.TEXT, MessageID.CONFIG_TEXT}


class SocketReader:
    """A binary stream over a socket for ``ProtocolDeserializer``: ``read(n)`` returns exactly n
    bytes, ``b""`` at a clean end of stream between messages, and raises
    :class:`TruncatedMessage` when the stream ends inside one.

    Bounds (None: none): a message may declare at most ``max_message`` bytes in all
    (``max_text`` for HEADER, TEXT and CONFIG_TEXT), checked before a byte of it is received;
    the next message must begin within ``idle_timeout`` seconds and, once begun, arrive whole
    within ``message_timeout``; the bytes being read are charged to ``account`` (a
    :class:`~diffunfold.mrd.limits.Account`) and given back when the next message begins.
    """

    def __init__(
        self,
        sock: socket.socket,
        max_message: int | None = None,
        max_text: int | None = None,
        idle_timeout: float | None = None,
        message_timeout: float | None = None,
        account=None,
    ):
        self._sock = sock
        self.max_message, self.max_text = max_message, max_text
        self.idle_timeout, self.message_timeout = idle_timeout, message_timeout
        self.account = account
        self.at_boundary = True  # set before each message; the first read of one is its ID
        self.bytes_read = 0
        self.message_id: int | None = None
        self._message_bytes = 0
        self._deadline: float | None = None

    def read(self, n: int) -> bytes:
        n = int(n)
        boundary, self.at_boundary = self.at_boundary, False
        if boundary:
            self._begin_message()
        self._admit(n)
        chunks, got = [], 0
        while got < n:
            chunk = self._recv(min(n - got, 1 << 20), first=boundary and got == 0)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        data = b"".join(chunks)
        self.bytes_read += got
        if got < n and not (boundary and got == 0):
            raise TruncatedMessage(f"the stream ended inside a message ({got} of {n} bytes)")
        if boundary and got == 2:
            self.message_id = struct.unpack("<H", data)[0]
            if self.message_timeout is not None:
                self._deadline = time.monotonic() + self.message_timeout
        return data

    def _begin_message(self) -> None:
        if self.account is not None:
            self.account.release(self._message_bytes)
        self._message_bytes, self._deadline, self.message_id = 0, None, None

    def _admit(self, n: int) -> None:
        """Check (and charge) ``n`` more bytes of the current message before receiving them."""
        if n < 0:
            raise ProtocolError(f"a malformed {self._name()} message (it declares a negative size)")
        total = self._message_bytes + n
        limit = self.max_text if self.message_id in _TEXT_IDS and self.max_text is not None else self.max_message
        if limit is not None and total > limit:
            raise MessageTooLarge(
                f"a {self._name()} message declares {n} bytes ({total} in all); this server takes "
                f"at most {limit} bytes per message"
            )
        if self.account is not None:
            self.account.charge(n, f"a {self._name()} message of {total} bytes")
        self._message_bytes = total

    def _recv(self, n: int, first: bool) -> bytes:
        if first:
            timeout = self.idle_timeout
        elif self._deadline is not None:
            timeout = self._deadline - time.monotonic()
            if timeout <= 0:
                raise ReadTimeout(f"a {self._name()} message did not arrive whole within {self.message_timeout:g} s")
        else:
            timeout = self.idle_timeout
        if timeout is not None:
            self._sock.settimeout(timeout)
        try:
            return self._sock.recv(n)
        except TimeoutError:
            if first:
                raise ReadTimeout(f"no message for {self.idle_timeout:g} s; the connection is closed") from None
            raise ReadTimeout(
                f"a {self._name()} message did not arrive whole within {self.message_timeout:g} s"
            ) from None

    def _name(self) -> str:
        try:
            return MessageID(self.message_id).name
        except ValueError:
            return f"message of ID {self.message_id}"


def messages(sock: socket.socket, **bounds) -> Iterator[tuple[int, object]]:
    """``(message ID, object)`` for each message until CLOSE (then ``(CLOSE, None)``); raises
    ``EOFError`` when the peer stops between messages without CLOSE, :class:`TruncatedMessage`
    inside one and :class:`ProtocolError` on an unknown ID, a malformed payload or a bound
    crossed (``bounds``: those of :class:`SocketReader`)."""
    yield from reader_messages(SocketReader(sock, **bounds))


def reader_messages(reader: SocketReader) -> Iterator[tuple[int, object]]:
    """:func:`messages` from a :class:`SocketReader` the caller keeps (to change its bounds
    between messages)."""
    stream = ProtocolDeserializer(reader)
    items = stream.deserialize()
    while True:
        reader.at_boundary = True
        try:
            obj = next(items)
        except StopIteration:
            yield MessageID.CLOSE, None
            return
        except (EOFError, ProtocolError, OSError, InputError):  # InputError: a memory limit
            raise
        except Exception as exc:  # an unknown ID, or a payload ismrmrd could not parse
            raise ProtocolError(_describe(reader.message_id, exc)) from None
        yield _message_id(obj), obj


def _describe(message_id: int | None, exc: Exception) -> str:
    first = (str(exc).splitlines() or [""])[0]
    if message_id not in set(MessageID):
        return f"{first} (not an MRD message ID; is the peer speaking the MRD protocol?)"
    name = MessageID(message_id).name
    if message_id == MessageID.HEADER:
        return f"the HEADER is not a valid ISMRMRD XML header ({first})"
    return f"a malformed {name} message ({type(exc).__name__}: {first})"


def _message_id(obj) -> int:
    import numpy as np
    from ismrmrd import Acquisition, Image, Waveform
    from ismrmrd.serialization import ConfigFile, ConfigText
    from ismrmrd.xsd import ismrmrdHeader

    for kind, mid in (
        (ConfigFile, MessageID.CONFIG_FILE),
        (ConfigText, MessageID.CONFIG_TEXT),
        (Acquisition, MessageID.ACQUISITION),
        (Image, MessageID.IMAGE),
        (Waveform, MessageID.WAVEFORM),
        (ismrmrdHeader, MessageID.HEADER),
        (np.ndarray, MessageID.NDARRAY),
        (str, MessageID.TEXT),
    ):
        if isinstance(obj, kind):
            return int(mid)
    raise ProtocolError(f"unexpected object {type(obj).__name__}")  # pragma: no cover


class SocketWriter:
    """Serialise MRD objects onto a socket; safe to share between threads."""

    def __init__(self, sock: socket.socket):
        self._file = sock.makefile("wb")
        self._out = ProtocolSerializer(self._file)
        self._lock = threading.Lock()
        self.closed = False

    def send(self, obj) -> None:
        with self._lock:
            self._out.serialize(obj)
            self._file.flush()

    def close(self) -> None:
        """Send CLOSE once (a peer that has gone away is not an error here)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            try:
                self._out.close()
            except OSError:
                pass
            finally:
                try:
                    self._file.close()
                except OSError:
                    pass
