"""``diffunfold serve`` as a subprocess on the loopback interface: a whole stream gives the images
``diffunfold mri`` gives on the same file; each fault gets an error back and a clean close, and
the server goes on serving; a kill leaves no partial output; SIGTERM finishes the slice in flight."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ismrmrd", reason="the mrd extra is not installed")
pytest.importorskip("pydicom", reason="the mrd extra is not installed")

from diffunfold.mrd.client import send_file  # noqa: E402
from diffunfold.mrd.protocol import MessageID, messages  # noqa: E402
from diffunfold.mrd.rawfile import iter_acquisitions  # noqa: E402
from diffunfold.mrd.spawn import ServerProcess  # noqa: E402
from diffunfold.mrd.writer import write_phantom_mrd  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "samples" / "models" / "mri-small"
SOLVE = ["--steps", "3", "--threads", "1", "--backend", "onnxruntime"]
TIMEOUT = 120


def Server(*extra: str) -> ServerProcess:
    return ServerProcess(PACKAGE, *SOLVE, *extra)


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    return write_phantom_mrd(
        tmp_path_factory.mktemp("scan") / "scan.h5", slices=3, size=32, coils=4, acceleration=4, seed=2
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server("--samples", "2", "--savedata", str(tmp_path_factory.mktemp("saved")))
    yield srv
    assert srv.stop() == 0
    assert srv.events[-1]["event"] == "stopped"


def _exchange(port: int, payload: bytes, close_write: bool = True) -> list[tuple[int, object]]:
    """Send raw bytes, then read the server's messages until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(payload)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        out = []
        try:
            for mid, obj in messages(sock):
                out.append((mid, obj))
                if mid == MessageID.CLOSE:
                    break
        except EOFError:
            pass
        return out


def _payload(scan: Path, acquisitions=None, config: bool = True) -> tuple[bytes, list]:
    from ismrmrd.serialization import ConfigFile, ProtocolSerializer

    from diffunfold.mrd.header import parse_header

    items = iter_acquisitions(scan)
    xml = next(items)
    acqs = list(items)
    buf = io.BytesIO()
    out = ProtocolSerializer(buf)
    if config:
        out.serialize(ConfigFile("diffunfold"))
    out.serialize(parse_header(xml))
    for acq in acqs if acquisitions is None else acquisitions(acqs):
        out.serialize(acq)
    return buf.getvalue(), acqs


def _assert_error_and_close(reply, *words: str) -> None:
    texts = [str(o) for m, o in reply if m == MessageID.TEXT]
    assert reply and reply[-1][0] == MessageID.CLOSE, reply  # a clean close
    assert any(all(w in t for w in words) for t in texts), texts  # a clear error


def test_stream_equals_mri_on_the_same_file(server, scan, tmp_path):
    from diffunfold.cli import main
    from diffunfold.mrd.outputs import image_values

    reply = send_file(scan, "127.0.0.1", server.port, timeout=TIMEOUT).check()
    assert main(["mri", str(PACKAGE), str(scan), "--samples", "2", "--out", str(tmp_path / "mri"), *SOLVE]) == 0
    import ismrmrd

    dset = ismrmrd.Dataset(str(tmp_path / "mri" / "scan_images.h5"), "dataset", mode="r")
    local = {(s, i): dset.read_image(f"image_{s}", i) for s in (1, 2) for i in range(3)}
    dset.close()
    got = {(int(im.image_series_index), int(im.image_index) - 1): im for im in reply.images}
    assert sorted(got) == sorted(local)  # every image once, both series
    items = iter_acquisitions(scan)
    next(items)
    centre = {int(a.idx.slice): a for a in items if a.idx.kspace_encode_step_1 == 16}
    for key, im in got.items():
        ref = local[key]
        # the same computation on the same backend: equal to within one stored count (1/4095 of the maximum)
        assert np.abs(image_values(im) - image_values(ref)).max() <= float(ref.meta["DiffUnfoldScale"]) * 1.0001
        assert np.abs(im.data.astype(int) - ref.data.astype(int)).max() <= 1
        assert im.matrix_size == (32, 32, 1) and im.data.dtype == np.uint16 and int(im.slice) == key[1]
        np.testing.assert_allclose(list(im.position), list(centre[key[1]].position))
        np.testing.assert_allclose(list(im.slice_dir), [0, 0, 1])
        assert im.meta["ImageProcessingHistory"] == "DIFFUNFOLD"
        assert im.meta["ImageComment"] == ("diffunfold" if key[0] == 1 else "diffunfold_std")
    assert len(reply.latencies) == 3 and all(0 < v < TIMEOUT for v in reply.latencies.values())


def test_a_client_that_disconnects_does_not_stop_the_server(server, scan):
    payload, _ = _payload(scan)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(payload[: len(payload) // 2])
    reply = send_file(scan, "127.0.0.1", server.port, timeout=TIMEOUT).check()
    assert len(reply.images) == 6


@pytest.mark.parametrize(
    "fault, words",
    [
        ("truncated", ("ended inside a message",)),
        ("unknown id", ("Unknown MessageID", "999")),
        ("invalid xml", ("not a valid ISMRMRD XML header",)),
        ("sizes", ("sizes disagree",)),
        ("trajectory", ("non-Cartesian",)),
        ("nan", ("NaN",)),
    ],
)
def test_faults_get_an_error_and_a_clean_close(server, scan, fault, words):
    import ismrmrd

    def changed(acqs):
        acq = acqs[8]
        data = np.array(acq.data)
        if fault == "sizes":
            bad = ismrmrd.Acquisition.from_array(np.zeros((data.shape[0], data.shape[1] // 2), np.complex64))
        elif fault == "trajectory":
            bad = ismrmrd.Acquisition.from_array(data, trajectory=np.zeros((data.shape[1], 2), np.float32))
        else:
            data[1, 5] = np.nan
            bad = ismrmrd.Acquisition.from_array(data, center_sample=acq.center_sample)
        return acqs[:8] + [bad] + acqs[9:]

    if fault == "truncated":
        payload, _ = _payload(scan)
        payload = payload[:-100]
    elif fault == "unknown id":
        payload = _payload(scan, lambda a: a[:3])[0] + struct.pack("<H", 999) + b"\0" * 16
    elif fault == "invalid xml":
        payload = struct.pack("<H", int(MessageID.HEADER)) + struct.pack("<I", 12) + b"<ismrmrdHead"
    else:
        payload, _ = _payload(scan, changed)
    _assert_error_and_close(_exchange(server.port, payload), *words)
    assert server.proc.poll() is None


def _send_process(scan: Path, port: int, out: Path) -> subprocess.Popen:
    """``diffunfold send`` in a child process: the tests' own process stays single-threaded in
    HDF5 and ismrmrd (threaded clients inside pytest crashed it now and then)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "diffunfold", "send", str(scan), "--port", str(port), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _received(out: Path) -> list[tuple[int, int]]:
    import ismrmrd

    dset = ismrmrd.Dataset(str(out / "scan_images.h5"), "dataset", mode="r")
    try:
        return sorted(
            (s, int(dset.read_image(f"image_{s}", j).image_index))
            for s in (1, 2)
            if f"image_{s}" in dset.list()
            for j in range(dset.number_of_images(f"image_{s}"))
        )
    finally:
        dset.close()


def test_the_server_serves_several_clients_at_once(server, scan, tmp_path):
    clients = [_send_process(scan, server.port, tmp_path / f"client{i}") for i in range(3)]
    for i, c in enumerate(clients):
        _, err = c.communicate(timeout=TIMEOUT)
        assert c.returncode == 0, err
        assert _received(tmp_path / f"client{i}") == [(s, i) for s in (1, 2) for i in (1, 2, 3)]
    saved = [e for e in server.events if e.get("event") == "closed" and e.get("saved")]
    assert saved and all(Path(e["saved"]).exists() for e in saved)  # complete streams only


def test_only_the_given_address_is_listened_on(server):
    other = [
        a
        for a in {i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
        if not a.startswith("127.")
    ]
    for address in other:
        with pytest.raises(OSError):
            socket.create_connection((address, server.port), timeout=2).close()
    assert next(e for e in server.events if e.get("event") == "listening")["host"] == "127.0.0.1"


def test_a_killed_server_leaves_no_partial_output(scan, tmp_path):
    srv = Server("--samples", "2", "--steps", "12")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    client = subprocess.Popen(
        [sys.executable, "-m", "diffunfold", "send", str(scan), "--port", str(srv.port), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    srv.wait_for("header")
    srv.proc.kill()
    srv.proc.wait(30)
    _, err = client.communicate(timeout=60)
    assert client.returncode != 0 and "did not finish" in err
    assert not out.exists() or not any(out.rglob("*"))


def test_sigterm_finishes_the_slice_in_flight(scan, tmp_path):
    srv = Server("--steps", "12")
    client = _send_process(scan, srv.port, tmp_path / "out")
    srv.wait_for("header")
    time.sleep(0.3)
    assert srv.stop() == 0
    _, err = client.communicate(timeout=TIMEOUT)
    done = [e["slice"] for e in srv.events if e.get("event") == "reconstructed"]
    if len(done) == 3:  # every slice came back
        assert client.returncode == 0 and len(_received(tmp_path / "out")) == 3, err
    else:  # the client is told why
        assert client.returncode != 0 and "shutting down" in err, err
    assert srv.events[-1]["event"] == "stopped"
