"""``diffunfold serve`` against hostile clients, on the loopback interface: each attack gets an
error and a closed connection (or a polite refusal), the server's memory stays bounded, and
the server goes on serving an honest client. Also: the protocol reader under fuzzing, and
access control (a token; no listening beyond loopback without one)."""

from __future__ import annotations

import io
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ismrmrd", reason="the mrd extra is not installed")

from diffunfold.mrd.client import send_file  # noqa: E402
from diffunfold.mrd.protocol import MessageID, ProtocolError, messages  # noqa: E402
from diffunfold.mrd.rawfile import iter_acquisitions  # noqa: E402
from diffunfold.mrd.spawn import ServerProcess  # noqa: E402
from diffunfold.mrd.writer import write_phantom_mrd  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "samples" / "models" / "mri-small"
SOLVE = ["--steps", "3", "--threads", "1", "--backend", "onnxruntime"]
TIMEOUT = 60
MB = 1 << 20


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    return write_phantom_mrd(
        tmp_path_factory.mktemp("scan") / "scan.h5", slices=3, size=32, coils=4, acceleration=4, seed=2
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("saved")


@pytest.fixture(scope="module")
def server(saved):
    srv = ServerProcess(
        PACKAGE,
        *SOLVE,
        "--max-buffer-mib",
        "64",
        "--max-connections",
        "4",
        "--start-timeout",
        "2",
        "--message-timeout",
        "1.5",
        "--savedata",
        str(saved),
    )
    yield srv
    if srv.proc.poll() is None:
        srv.proc.kill()
    srv.proc.wait(30)


# -- helpers -------------------------------------------------------------------------------------
def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


class _PeakRSS:
    """The highest resident memory of a process while the block runs, above its start."""

    def __enter__(self):
        self.start, self.peak, self._stop = _rss(self.pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __init__(self, pid: int):
        self.pid = pid

    def _poll(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, _rss(self.pid))
            except (OSError, StopIteration):
                return
            time.sleep(0.01)

    def __exit__(self, *exc):
        time.sleep(0.05)
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.start)


def _serialize(*objects, close: bool = True) -> bytes:
    from ismrmrd.serialization import ProtocolSerializer

    buf = io.BytesIO()
    out = ProtocolSerializer(buf)
    for obj in objects:
        out.serialize(obj)
    if close:
        out.close()
    return buf.getvalue()


def _attack(port: int, chunks, timeout: float = TIMEOUT) -> list[tuple[int, object]]:
    """Send ``chunks`` (bytes) while a thread reads the server's reply, until it closes: the
    reply is read even when the server stops the attack early and resets the connection."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    reply: list = []

    def read():
        try:
            for mid, obj in messages(sock):
                reply.append((mid, obj))
                if mid == MessageID.CLOSE:
                    return
        except (EOFError, ProtocolError, OSError):
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for chunk in chunks:
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
    except OSError:  # the server stopped reading and closed: that is the point
        pass
    reader.join(timeout)
    sock.close()
    return reply


def _texts(reply) -> list[str]:
    return [str(o) for m, o in reply if m == MessageID.TEXT]


def _assert_refused(reply, *words: str) -> None:
    assert reply and reply[-1][0] == MessageID.CLOSE, reply
    assert any(all(w in t for w in words) for t in _texts(reply)), _texts(reply)


def _honest(scan: Path, port: int, **options) -> None:
    reply = send_file(scan, "127.0.0.1", port, timeout=TIMEOUT, **options).check()
    assert sorted(int(im.image_index) for im in reply.images) == [1, 2, 3]


def _big_header(repetitions: int | None):
    """A 4096-sample readout (2048 x 512 grid), 4 coils, one slice; the repetition limit
    declared when ``repetitions`` is given."""
    from ismrmrd import xsd

    from diffunfold.mrd.header import make_header

    header = make_header((2048, 512), coils=4, slices=1)
    if repetitions is not None:
        header.encoding[0].encodingLimits.repetition = xsd.limitType(minimum=0, maximum=repetitions - 1, center=0)
    return header


def _line(repetition: int):
    import ismrmrd

    acq = ismrmrd.Acquisition.from_array(np.ones((4, 4096), np.complex64), center_sample=2048)
    acq.idx.kspace_encode_step_1 = 256
    acq.idx.repetition = repetition
    return acq


# -- case 1: memory grown through indices ----------------------------------------------------------
@pytest.mark.parametrize(
    "declared, words",
    [
        (None, ("repetition 1", "beyond the header's encoding limits")),  # an index the header does not have
        (8, ("per connection",)),  # declared, but past the budget
    ],
)
def test_buffers_keyed_by_index_are_bounded(server, scan, declared, words):
    from ismrmrd.serialization import ConfigFile

    payload = [_serialize(ConfigFile("x"), _big_header(declared), close=False)]
    payload += [_serialize(_line(r), close=False) for r in range(8)] + [_serialize()]
    with _PeakRSS(server.proc.pid) as rss:
        reply = _attack(server.port, payload)
    _assert_refused(reply, *words)
    # one 2048 x 512 x 4-coil buffer is 32 MiB; eight of them were held before
    assert rss.growth < 120 * MB, rss.growth / MB
    _honest(scan, server.port)


# -- case 2: file descriptors run out ----------------------------------------------------------------
def test_out_of_descriptors_the_server_goes_on(scan):
    srv = ServerProcess(PACKAGE, *SOLVE, "--max-connections", "1000")
    try:
        open_now = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
        resource.prlimit(srv.proc.pid, resource.RLIMIT_NOFILE, (open_now + 24, open_now + 24))
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(60)]
        time.sleep(1.5)
        assert srv.proc.poll() is None, srv.events[-3:]
        refused = 0
        for sock in idle[-10:]:  # the last ones found no descriptor: told so, and closed
            sock.settimeout(10)
            try:
                refused += any("file descriptors" in str(o) for m, o in messages(sock) if m == MessageID.TEXT)
            except (EOFError, ProtocolError, OSError):
                pass
        for sock in idle:
            sock.close()
        assert refused >= 1 and srv.named("out of descriptors")
        time.sleep(0.5)
        _honest(scan, srv.port)
        assert srv.proc.poll() is None
    finally:
        assert srv.stop() == 0


# -- case 3: samples and steps from a connection, and one client's long jobs -----------------------
@pytest.mark.parametrize(
    "config, words",
    [
        ('{"samples": 2000, "steps": 2}', ("samples 2000", "limit of 16")),
        ('{"steps": 5000}', ("steps 5000", "limit of 100")),
        ('{"seed": 1' + "0" * 5000 + "}", ("not valid JSON",)),
        ('{"coil_maps": "' + "x" * 100_000 + '"}', ("coil maps must be one of",)),
    ],
)
def test_a_connection_cannot_ask_for_unbounded_work(server, scan, config, words):
    t0 = time.monotonic()
    reply = send_file(scan, "127.0.0.1", server.port, config_text=config, timeout=20)
    assert any(all(w in t for w in words) for t in reply.errors), (reply.errors, reply.failure)
    assert time.monotonic() - t0 < 10 and not reply.images
    assert all(len(t) < 1000 for t in reply.errors)  # what the client sent is not echoed whole


def _stream_bytes(scan: Path, config_text: str | None = None, slices: int | None = None) -> bytes:
    from ismrmrd.serialization import ConfigFile, ConfigText

    from diffunfold.mrd.header import parse_header

    items = iter_acquisitions(scan)
    header = parse_header(next(items))
    first = [ConfigFile("x")] + ([ConfigText(config_text)] if config_text else []) + [header]
    return _serialize(*first, *[a for a in items if slices is None or int(a.idx.slice) < slices])


def _wait_until_idle(server, timeout: float = TIMEOUT) -> None:
    """Until every connection the server admitted has closed: earlier attacks linger a moment
    (their reply grace, their timeouts), and a test of scheduling needs all the slots."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        opened = {e["conn"] for e in server.named("connection")}
        if opened <= {e["conn"] for e in server.named("closed")}:
            return
        time.sleep(0.05)
    raise TimeoutError(f"connections still open after {timeout} s")


def test_one_clients_long_jobs_do_not_starve_another(server, tmp_path):
    _wait_until_idle(server)
    many = write_phantom_mrd(tmp_path / "many.h5", slices=5, size=32, coils=4, acceleration=4, seed=3)
    heavy = _stream_bytes(many, '{"samples": 2, "steps": 12}')
    light = _stream_bytes(many, slices=1)
    results = {}
    long_client = threading.Thread(target=lambda: results.setdefault("long", _attack(server.port, [heavy])))
    long_client.start()
    conn, end = None, time.monotonic() + TIMEOUT
    while conn is None and time.monotonic() < end:  # the heavy client's connection, by its settings
        conn = next((e["conn"] for e in server.named("config") if e.get("settings", {}).get("samples") == 2), None)
        time.sleep(0.02)
    assert conn is not None, ("the heavy client was not served", list(server.events)[-8:])
    while not any(e["conn"] == conn for e in server.named("reconstructed")) and time.monotonic() < end:
        time.sleep(0.02)
    results["short"] = _attack(server.port, [light])  # arrives with 3-4 heavy slices waiting
    long_client.join(TIMEOUT)
    order = [e["conn"] for e in server.named("reconstructed") if e["conn"] >= conn]
    short = next(c for c in order if c != conn)
    assert len([c for c in order if c == conn]) == 5
    # served in turn: the short client's slice did not wait for all of the heavy client's
    assert order.index(short) < len(order) - 1 - order[::-1].index(conn), order
    assert sum(m == MessageID.IMAGE for m, _ in results["short"]) == 1


# -- case 4: a message that declares more than it should -----------------------------------------------
@pytest.mark.parametrize("mid", [MessageID.HEADER, MessageID.TEXT])
def test_a_huge_declared_message_is_refused_before_it_is_read(server, mid):
    declared = 1 << 31
    chunks = [struct.pack("<HI", int(mid), declared)] + [b" " * MB] * 64
    with _PeakRSS(server.proc.pid) as rss:
        reply = _attack(server.port, chunks)
    _assert_refused(reply, f"declares {declared} bytes", "at most")
    assert rss.growth < 32 * MB, rss.growth / MB


def test_a_header_only_stream_is_not_saved(server, scan, saved):
    from ismrmrd.serialization import ConfigFile

    from diffunfold.mrd.header import parse_header

    before = set(saved.iterdir())
    reply = _attack(server.port, [_serialize(ConfigFile("x"), parse_header(next(iter_acquisitions(scan))))])
    assert reply and reply[-1][0] == MessageID.CLOSE and not _texts(reply)
    time.sleep(0.2)
    assert set(saved.iterdir()) == before


# -- the other limits ---------------------------------------------------------------------------------
def test_connections_beyond_the_limit_are_refused_politely(server, scan):
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(4)]
    try:
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
            reply = list(messages(extra))
        _assert_refused(reply, "limit of 4 connections")
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    _honest(scan, server.port)


def test_slow_and_silent_connections_are_closed(server, scan):
    from ismrmrd.serialization import ConfigFile

    from diffunfold.mrd.header import parse_header

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent:
        t0 = time.monotonic()
        reply = list(messages(silent))
        _assert_refused(reply, "no header within 2 s")
        assert time.monotonic() - t0 < 6
    slow = _serialize(ConfigFile("x"), close=False)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(slow[:100])  # a message begun and never finished, before the header
        _assert_refused(list(messages(sock)), "no header within 2 s")
    header = _serialize(ConfigFile("x"), parse_header(next(iter_acquisitions(scan))), close=False)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(header + slow[:100])  # ... after it: the message timeout
        _assert_refused(list(messages(sock)), "did not arrive whole within 1.5 s")
    assert server.proc.poll() is None


# -- the protocol reader, fuzzed -----------------------------------------------------------------------
class _BytesSocket:
    """What SocketReader needs of a socket, over bytes; records the largest read asked for."""

    def __init__(self, data: bytes):
        self._buf, self.largest = io.BytesIO(data), 0

    def recv(self, n: int) -> bytes:
        self.largest = max(self.largest, n)
        return self._buf.read(n)

    def settimeout(self, _):
        pass


def _fuzz_inputs():
    from hypothesis import strategies as st

    ids = st.sampled_from([int(m) for m in MessageID] + [0, 6, 999, 65535])
    framed = st.builds(
        lambda mid, n, tail: struct.pack("<HI", mid, n) + tail,
        ids,
        st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)),
        st.binary(max_size=300),
    )
    import ismrmrd

    acq = _serialize(ismrmrd.Acquisition.from_array(np.ones((2, 16), np.complex64)), close=False)
    mutated = st.builds(
        lambda at, b: acq[:at] + b + acq[at + len(b) :], st.integers(0, len(acq)), st.binary(min_size=1, max_size=8)
    )
    return st.lists(st.one_of(st.binary(max_size=200), framed, mutated), max_size=4).map(b"".join)


def test_the_protocol_reader_under_fuzzing():
    from hypothesis import HealthCheck, given, settings

    limit = 64 * 1024

    @settings(max_examples=300, deadline=1000, suppress_health_check=list(HealthCheck), database=None)
    @given(_fuzz_inputs())
    def check(data):
        sock = _BytesSocket(data)
        try:
            for mid, _ in messages(sock, max_message=limit, max_text=limit):
                if mid == MessageID.CLOSE:
                    break
        except (EOFError, ProtocolError):
            pass
        assert sock.largest <= limit

    check()


# -- access control -------------------------------------------------------------------------------------
def test_a_token_is_required_and_checked(scan, tmp_path):
    token = "s3cret-token-0123456789abcdef"
    (tmp_path / "token").write_text(token + "\n")
    srv = ServerProcess(PACKAGE, *SOLVE, "--token-file", str(tmp_path / "token"), "--workers", "2")
    try:
        from diffunfold.mrd.client import StreamError

        with pytest.raises(StreamError, match="needs a token"):
            _honest(scan, srv.port)
        with pytest.raises(StreamError, match="wrong token"):
            _honest(scan, srv.port, token="s3cret-token-0123456789abcdeF")
        _honest(scan, srv.port, token=token)  # on two workers
        assert srv.named("listening")[0]["workers"] == 2
        assert not any(token in str(e) for e in srv.events)  # never logged
    finally:
        assert srv.stop() == 0


def test_no_listening_beyond_loopback_without_a_token(tmp_path):
    cmd = [sys.executable, "-m", "diffunfold", "serve", str(PACKAGE), "--port", "0", "--host", "0.0.0.0"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2 and "not a loopback address" in run.stderr and "--insecure-no-auth" in run.stderr
    (tmp_path / "short").write_text("tooshort")
    run = subprocess.run(
        cmd + ["--token-file", str(tmp_path / "short")], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 2 and "at least 16 characters" in run.stderr
    srv = ServerProcess(PACKAGE, *SOLVE, "--host", "0.0.0.0", "--insecure-no-auth")
    try:
        assert srv.named("insecure") and srv.named("listening")[0]["host"] == "0.0.0.0"
    finally:
        assert srv.stop() == 0
