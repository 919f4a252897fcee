"""Load test of ``diffunfold serve``: N concurrent clients, each streaming a multi-slice MRD scan.

The server runs as a child process on the loopback interface (one backend, work queued over all
connections). Every client streams its own raw MRD file at the same moment; the run checks that
each client gets every image of its scan exactly once (none lost, none duplicated) within the
time limit, and records the per-slice latency (last acquisition of a slice sent -> its first
image back), the throughput (slices per second over the whole run) and the server's time per
slice, with the machine, in bench/results/mrd_load-<machine>.md and .json.

With ``--hostile``, a hostile client (``mrd_hostile.py``) attacks the same server during the
run: every honest client must still get all its images, every attack must be refused, and the
server's resident memory must stay under ``--rss-bound-mib``; written to
bench/results/mrd_load_hostile-<machine>.md and .json.

    python bench/mrd_load.py --clients 8 --slices 4 --size 64 --steps 18
    python bench/mrd_load.py --clients 8 --slices 4 --size 64 --steps 18 --hostile
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402
from machine import LoadWatch, machine_info, may_write, write_results  # noqa: E402
from mrd_hostile import HostileClient, PeakRSS  # noqa: E402

from diffunfold.mrd.client import send_file  # noqa: E402
from diffunfold.mrd.spawn import ServerProcess  # noqa: E402
from diffunfold.mrd.writer import write_phantom_mrd  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "samples" / "models" / "mri-small"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", default=str(PACKAGE))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--slices", type=int, default=4, help="slices per client's scan")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds for the whole run (600)")
    ap.add_argument("--hostile", action="store_true", help="a hostile client attacks the server during the run")
    ap.add_argument("--buffer-mib", type=int, default=256, help="the server's --max-buffer-mib with --hostile (256)")
    ap.add_argument(
        "--rss-bound-mib",
        type=float,
        default=1024.0,
        help="with --hostile: the server's resident memory must stay below this, MiB (1024)",
    )
    ap.add_argument("--out", help="results folder (default: bench/results)")
    ap.add_argument("--allow-busy", action="store_true", help="write results measured on a busy machine, marked so")
    ap.add_argument("--no-write", action="store_true")
    return ap.parse_args(argv)


def scans(folder: Path, args) -> list[Path]:
    return [
        write_phantom_mrd(
            folder / f"client{i}.h5", slices=args.slices, size=args.size, coils=args.coils, acceleration=4, seed=100 + i
        )
        for i in range(args.clients)
    ]


def stream_all(port: int, files: list[Path], limit: float) -> tuple[list, float]:
    """Every client at once; returns the replies (None for a client that did not finish) and the wall time."""
    replies: list = [None] * len(files)
    start = threading.Barrier(len(files) + 1)

    def client(i: int) -> None:
        start.wait()
        replies[i] = send_file(files[i], "127.0.0.1", port, timeout=limit)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(files))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(max(0.0, limit - (time.perf_counter() - t0)))
    return replies, time.perf_counter() - t0


def check(replies: list, args) -> list[str]:
    """What went wrong: a client that did not finish, an error, a lost or duplicated image."""
    problems = []
    want = sorted((s, i) for s in ([1, 2] if args.samples > 1 else [1]) for i in range(1, args.slices + 1))
    for n, r in enumerate(replies):
        if r is None:
            problems.append(f"client {n}: not finished within the time limit")
            continue
        if r.errors or not r.closed:
            problems.append(f"client {n}: {r.errors or r.failure}")
        got = sorted((int(im.image_series_index), int(im.image_index)) for im in r.images)
        if got != want:
            problems.append(f"client {n}: images {got}, expected {want} (lost or duplicated)")
    return problems


def summarise(replies: list, wall: float, server: ServerProcess, args) -> dict:
    lat = np.asarray([v for r in replies if r for v in r.latencies.values()])
    recon = np.asarray([e["seconds"] for e in server.named("reconstructed")])
    slices = args.clients * args.slices
    return {
        "clients": args.clients,
        "slices": slices,
        "wall_s": round(wall, 2),
        "throughput_slices_per_s": round(slices / wall, 3),
        "latency_median_s": round(float(np.median(lat)), 2),
        "latency_p90_s": round(float(np.percentile(lat, 90)), 2),
        "latency_max_s": round(float(lat.max()), 2),
        "server_s_per_slice_median": round(float(np.median(recon)), 3),
        "images_received": sum(len(r.images) for r in replies if r),
    }


def run_hostile(server: ServerProcess, files: list[Path], args) -> tuple[list, float, dict]:
    """The honest clients with a hostile one beside them; the attacks and the server's memory."""
    rss = PeakRSS(server.proc.pid)
    hostile = HostileClient(server.port).start()
    time.sleep(0.5)  # the held connections are open before the honest clients come
    try:
        replies, wall = stream_all(server.port, files, args.time_limit)
    finally:
        counts = hostile.stop()
        peak = rss.stop()
    return (
        replies,
        wall,
        {
            "rss_start_mib": round(rss.start),
            "rss_peak_mib": round(peak),
            "rss_bound_mib": args.rss_bound_mib,
            "attacks": counts,
        },
    )


def hostile_problems(result: dict) -> list[str]:
    problems = [f"attack {name!r}: refused {r} of {n}" for name, (r, n) in result["attacks"].items() if r < n]
    if result["rss_peak_mib"] >= result["rss_bound_mib"]:
        problems.append(f"server RSS peaked at {result['rss_peak_mib']} MiB, above {result['rss_bound_mib']} MiB")
    return problems


def describe(args, rows: list[dict], problems: list[str], hostile: dict | None) -> str:
    md = (
        f"{args.clients} clients at once, each streaming {args.slices} slices ({args.size}x{args.size}, "
        f"{args.coils} coils, Gaussian 1-D 4x) to one server (one backend, {args.steps} steps, "
        f"{args.samples} sample(s)). Latency: a slice's last acquisition sent -> its first image back.\n\n"
    )
    if hostile:
        md += (
            f"First the honest clients alone, then again (a fresh server) with a hostile client attacking "
            f"throughout from the same machine (`mrd_hostile.py`); both servers started with "
            f"`--max-buffer-mib {args.buffer_mib} --start-timeout 5`, other limits at their defaults. Server "
            f"resident memory during the attack: {hostile['rss_start_mib']} MiB before the clients, peak "
            f"{hostile['rss_peak_mib']} MiB, bound {hostile['rss_bound_mib']:g} MiB.\n\n"
            + markdown_table([{"attack": k, "refused": r, "tried": n} for k, (r, n) in hostile["attacks"].items()])
            + "\n\n"
        )
    return (
        md
        + markdown_table(rows)
        + (
            "\n\nProblems:\n" + "\n".join(f"- {p}" for p in problems)
            if problems
            else "\n\nEvery image came back exactly once."
        )
    )


def one_pass(files: list[Path], args, attacked: bool) -> tuple[dict, list[str], dict | None]:
    """One server, the honest clients (and the hostile one): the row, the problems, the attack."""
    extra = ["--max-buffer-mib", str(args.buffer_mib), "--start-timeout", "5"] if args.hostile else []
    server = ServerProcess(
        args.package,
        "--steps",
        str(args.steps),
        "--samples",
        str(args.samples),
        "--backend",
        args.backend,
        "--device",
        args.device,
        *extra,
        omp_threads=None,
    )
    hostile = None
    try:
        if attacked:
            replies, wall, hostile = run_hostile(server, files, args)
        else:
            replies, wall = stream_all(server.port, files, args.time_limit)
    finally:
        status = server.stop()
    problems = check(replies, args) + (hostile_problems(hostile) if hostile else [])
    problems += [f"the server exited with {status}"] if status else []
    row = {"hostile client": attacked} if args.hostile else {}
    row.update(summarise(replies, wall, server, args))
    row.update(backend=server.named("listening")[0].get("backend"), ok=not problems)
    if hostile:
        row.update(rss_start_mib=hostile["rss_start_mib"], rss_peak_mib=hostile["rss_peak_mib"])
    return row, problems, hostile


def main(argv=None) -> int:
    args = parse_args(argv)
    watch, info = LoadWatch(), machine_info()
    rows, problems, hostile = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        files = scans(Path(tmp), args)
        for attacked in [False, True] if args.hostile else [False]:
            row, found, result = one_pass(files, args, attacked)
            rows.append(row)
            problems += found
            hostile = result or hostile
    md = describe(args, rows, problems, hostile)
    print(md)
    info["load"] = watch.finish()
    if not args.no_write and may_write(info["load"], args.allow_busy):
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "no_write")}
        if hostile:
            rows[-1]["attacks"] = hostile["attacks"]
        path = write_results(
            "mrd_load_hostile" if args.hostile else "mrd_load",
            info,
            settings,
            rows,
            md,
            out_dir=args.out,
            title="MRD server under load" + (" and attack" if args.hostile else ""),
        )
        print(f"wrote {path}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
