"""The MRD streaming protocol on a socket, through ``ismrmrd.serialization``.

Messages are a little-endian uint16 ID and a payload: CONFIG_FILE (1, 1024 bytes), CONFIG_TEXT
(2), HEADER (3, the XML header), CLOSE (4), TEXT (5), ACQUISITION (1008), IMAGE (1022), ... .
ismrmrd 1.15's ``ProtocolDeserializer``/``ProtocolSerializer`` read and write all of them
(the config messages included: older versions did not). What this module adds is what a
server needs around them: a stream that tells a clean end of stream (between messages) from a
truncated message, and a writer that several threads may share.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Iterator

from ismrmrd.serialization import ISMRMRDMessageID as MessageID
from ismrmrd.serialization import ProtocolDeserializer, ProtocolSerializer

__all__ = ["MessageID", "ProtocolError", "TruncatedMessage", "SocketReader", "SocketWriter", "messages"]


class ProtocolError(Exception):
    """The peer broke the protocol (unknown message ID, malformed payload)."""


class TruncatedMessage(ProtocolError):
    """The stream ended inside a message."""


class SocketReader:
    """A binary stream over a socket for ``ProtocolDeserializer``: ``read(n)`` returns exactly n
    bytes, ``b""`` at a clean end of stream between messages, and raises
    :class:`TruncatedMessage` when the stream ends inside one."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self.at_boundary = True   # set before each message; the first read of one is its ID
        self.bytes_read = 0
        self.message_id: int | None = None

    def read(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = self._sock.recv(min(n - got, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        data = b"".join(chunks)
        self.bytes_read += got
        boundary, self.at_boundary = self.at_boundary, False
        if got < n and not (boundary and got == 0):
            raise TruncatedMessage(f"the stream ended inside a message ({got} of {n} bytes)")
        if boundary and got == 2:
            self.message_id = struct.unpack("<H", data)[0]
        return data


def messages(sock: socket.socket) -> Iterator[tuple[int, object]]:
    """``(message ID, object)`` for each message until CLOSE (then ``(CLOSE, None)``); raises
    ``EOFError`` when the peer stops between messages without CLOSE, :class:`TruncatedMessage`
    inside one and :class:`ProtocolError` on an unknown ID or a malformed payload."""
    reader = SocketReader(sock)
    stream = ProtocolDeserializer(reader)
    items = stream.deserialize()
    while True:
        reader.at_boundary = True
        try:
            obj = next(items)
        except StopIteration:
            yield MessageID.CLOSE, None
            return
        except (EOFError, TruncatedMessage, OSError):
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

    for kind, mid in ((ConfigFile, MessageID.CONFIG_FILE), (ConfigText, MessageID.CONFIG_TEXT),
                      (Acquisition, MessageID.ACQUISITION), (Image, MessageID.IMAGE),
                      (Waveform, MessageID.WAVEFORM), (ismrmrdHeader, MessageID.HEADER),
                      (np.ndarray, MessageID.NDARRAY), (str, MessageID.TEXT)):
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
