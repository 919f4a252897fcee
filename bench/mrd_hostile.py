"""A hostile MRD client for ``mrd_load.py --hostile``: while the honest clients stream, it goes
round a list of attacks on the server (each on its own connection) until told to stop, and
watches the server's resident memory.

Attacks, in a loop: a HEADER that declares 2 GiB (32 MiB sent), k-space lines under indices
the header does not declare, lines under declared indices past the per-connection budget, a
CONFIG_TEXT asking for 2000 samples. Held for the whole run: connections that stay silent or
begin a message and never finish it (the server must close them after its start timeout). An
attack counts as refused when the server answered it with an error or a close.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time

import numpy as np

from diffunfold.mrd.protocol import MessageID, ProtocolError, messages

MB = 1 << 20


def _serialize(*objects, close: bool = True) -> bytes:
    from ismrmrd.serialization import ProtocolSerializer

    buf = io.BytesIO()
    out = ProtocolSerializer(buf)
    for obj in objects:
        out.serialize(obj)
    if close:
        out.close()
    return buf.getvalue()


def _index_bomb(declared: bool) -> list[bytes]:
    """A 4096-sample readout, 4 coils, and 8 lines of one slice under 8 repetitions."""
    import ismrmrd
    from ismrmrd import xsd
    from ismrmrd.serialization import ConfigFile

    from diffunfold.mrd.header import make_header

    header = make_header((2048, 512), coils=4, slices=1)
    if declared:
        header.encoding[0].encodingLimits.repetition = xsd.limitType(minimum=0, maximum=7, center=0)
    chunks = [_serialize(ConfigFile("hostile"), header, close=False)]
    for rep in range(8):
        acq = ismrmrd.Acquisition.from_array(np.ones((4, 4096), np.complex64), center_sample=2048)
        acq.idx.kspace_encode_step_1, acq.idx.repetition = 256, rep
        chunks.append(_serialize(acq, close=False))
    return chunks + [_serialize()]


def attacks() -> dict[str, list[bytes]]:
    from ismrmrd.serialization import ConfigFile, ConfigText

    from diffunfold.mrd.header import make_header

    return {
        "huge header": [struct.pack("<HI", int(MessageID.HEADER), 1 << 31)] + [b" " * MB] * 32,
        "undeclared indices": _index_bomb(False),
        "indices past the budget": _index_bomb(True),
        "2000 samples": [
            _serialize(
                ConfigFile("hostile"),
                ConfigText('{"samples": 2000, "steps": 2}'),
                make_header((32, 32), coils=4, slices=1),
            )
        ],
    }


def _attack(port: int, chunks: list[bytes], timeout: float = 60.0) -> bool:
    """Send the chunks while reading the reply; True when the server answered with an error
    or a close."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    answered = threading.Event()

    def read():
        try:
            for mid, obj in messages(sock):
                if mid == MessageID.CLOSE or (mid == MessageID.TEXT and str(obj).startswith("error")):
                    answered.set()
                if mid == MessageID.CLOSE:
                    return
        except (EOFError, ProtocolError, OSError):
            answered.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for chunk in chunks:
            sock.sendall(chunk)
    except OSError:
        pass
    reader.join(timeout)
    sock.close()
    return answered.is_set()


class HostileClient:
    """``start()``; ``stop()`` returns ``{attack: [refused, tried]}``."""

    def __init__(self, port: int, idle_connections: int = 8, hold_s: float = 6.0):
        self.port, self.idle_connections, self.hold_s = port, idle_connections, hold_s
        self.counts: dict[str, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> HostileClient:
        self._thread.start()
        return self

    def _run(self) -> None:
        from ismrmrd.serialization import ConfigFile

        t0 = time.monotonic()
        plan = attacks()
        begun = _serialize(ConfigFile("hostile"), close=False)[:100]
        held = []  # silent, or with a message begun and never finished
        for i in range(self.idle_connections):
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                if i % 2:
                    sock.sendall(begun)
                held.append(sock)
            except OSError:
                break
        while not self._stop.is_set():
            for name, chunks in plan.items():
                if self._stop.is_set():
                    break
                refused = _attack(self.port, chunks)
                entry = self.counts.setdefault(name, [0, 0])
                entry[0] += refused
                entry[1] += 1
        time.sleep(max(0.0, self.hold_s - (time.monotonic() - t0)))  # past the server's start timeout
        self.counts["connections held silent or unfinished"] = [sum(_closed_by_server(s) for s in held), len(held)]

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(120)
        return self.counts


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        sock.settimeout(0.5)
        return any(mid == MessageID.CLOSE for mid, _ in messages(sock))
    except (EOFError, ProtocolError, OSError):
        return False
    finally:
        sock.close()


class PeakRSS:
    """The server's resident memory, sampled every 50 ms: ``start``/``peak`` in MiB."""

    def __init__(self, pid: int):
        self.pid = pid
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self) -> float:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
        except (OSError, StopIteration):
            return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.05)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak
