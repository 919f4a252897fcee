"""The MRD commands: ``diffunfold serve``, ``send`` and ``mrd-phantom``. (``diffunfold mri`` on a
raw MRD file lives with the rest of that command, in :mod:`diffunfold.mri`.)"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import cli_values as V
from ..errors import InputError

__all__ = ["add_parsers"]

PORT = V.Bounded(0, 65535, integer=True, meaning="0: a free one")

SERVE_EPILOG = """\
examples:
  diffunfold serve samples/models/mri-small                      (127.0.0.1:9002)
  diffunfold serve samples/models/mri-small --port 9020 --samples 4 --coil-maps espirit
  diffunfold serve samples/models/mri-small --host 10.0.0.5 --token-file token.txt --savedata raw/
      (the scanner-side interface; clients send the token: diffunfold send --token-file token.txt)

Per connection, a CONFIG_TEXT message holding a JSON object overrides the settings, e.g.
{"samples": 4, "steps": 12, "coil_maps": "espirit", "seed": 0, "bits": 12}, up to the limits.
A client that crosses a limit gets an error message and a closed connection; the others go on.
Beyond loopback (--host other than 127.0.0.1/::1/localhost) a token is required, or
--insecure-no-auth. See docs/security.md.
Logs are JSON lines on stderr; the first says where it listens ("event": "listening").
SIGTERM or Ctrl-C: stop accepting, finish the slice in flight, close every connection.
"""

SEND_EPILOG = """\
examples:
  diffunfold mrd-phantom scan.h5 --slices 4 --size 64
  diffunfold send scan.h5 --port 9002 --out received/
  diffunfold send scan.h5 --config-text '{"samples": 4}' --formats mrd,dicom

outputs (in --out; only when the server finished without error; existing ones need --overwrite):
  FILE_images.h5          the MRD images (series 1: magnitude, series 2: std when samples > 1)
  reconstructions/FILE.h5 fastMRI's layout: 'reconstruction' (slices, H, W) float32
  FILE_dicom/             DICOM MR images (DERIVED), one file per image
  FILE_png/               PNGs for a quick look
"""


def _add_recon_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=V.STEPS, metavar="N", help="sampler steps (default: the package's schedule)")
    p.add_argument(
        "--samples",
        type=V.SAMPLES,
        default=1,
        metavar="N",
        help="posterior samples per slice: > 1 also returns a std map as series 2 (default: 1)",
    )
    p.add_argument("--seed", type=V.SEED, default=0, help="base seed; slice s uses seed + s (default: 0)")
    p.add_argument(
        "--coil-maps",
        choices=["espirit", "calibration"],
        default="espirit",
        help="coil maps by ESPIRiT from the calibration region (default; SigPy) or the "
        "low-resolution ratio maps (calibration). Noise-scan lines in the stream prewhiten "
        "the coils; without them the noise level is estimated from the data",
    )
    p.add_argument(
        "--bits", type=V.Bounded(8, 16, integer=True), default=12, help="stored bits of the uint16 images (default: 12)"
    )
    p.add_argument("--backend", default="auto", help="runtime backend (default: auto)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--threads", type=V.THREADS, metavar="N", help="CPU threads for the network (default: all)")


POSITIVE_SECONDS = V.Bounded(0, 86400, lo_open=True)
MIB = V.Bounded(1, 1 << 20, integer=True)


def _add_limit_options(p: argparse.ArgumentParser) -> None:
    from .limits import ServerLimits

    d = ServerLimits()
    g = p.add_argument_group("limits (what one client can make the server spend)")
    _add_memory_limits(g, d)
    _add_time_limits(g, d)
    _add_work_limits(g, d)
    _add_access_options(p)


def _add_memory_limits(g, d) -> None:
    """Message and buffer sizes, and connections at once (``d``: the default ServerLimits)."""
    from .limits import MiB

    g.add_argument(
        "--max-message-mib",
        type=MIB,
        default=d.max_message // MiB,
        metavar="MIB",
        help=f"largest message a client may send, MiB, checked before it is read; HEADER/TEXT "
        f"messages at most 1 MiB (default: {d.max_message // MiB})",
    )
    g.add_argument(
        "--max-buffer-mib",
        type=MIB,
        default=d.max_buffer_per_connection // MiB,
        metavar="MIB",
        help=f"k-space and messages held for one connection, MiB (default: {d.max_buffer_per_connection // MiB})",
    )
    g.add_argument(
        "--max-total-buffer-mib",
        type=MIB,
        default=d.max_buffer_total // MiB,
        metavar="MIB",
        help="... for all connections together, MiB (default: 4096 or half this machine's memory, "
        f"whichever is less: {d.max_buffer_total // MiB} here)",
    )
    g.add_argument(
        "--max-connections",
        type=V.Bounded(1, 10000, integer=True),
        default=d.max_connections,
        metavar="N",
        help=f"connections at once; more are told so and closed (default: {d.max_connections})",
    )


def _add_time_limits(g, d) -> None:
    """How long a connection may stay silent, take over a message, or take to start."""
    g.add_argument(
        "--idle-timeout",
        type=POSITIVE_SECONDS,
        default=d.idle_timeout,
        metavar="S",
        help=f"seconds a connection may send nothing (default: {d.idle_timeout:g})",
    )
    g.add_argument(
        "--message-timeout",
        type=POSITIVE_SECONDS,
        default=d.message_timeout,
        metavar="S",
        help=f"seconds one message may take to arrive once begun (default: {d.message_timeout:g})",
    )
    g.add_argument(
        "--start-timeout",
        type=POSITIVE_SECONDS,
        default=d.start_timeout,
        metavar="S",
        help=f"seconds a new connection has to send its token and header (default: {d.start_timeout:g})",
    )


def _add_work_limits(g, d) -> None:
    """Samples and steps a client may ask for, the queue per connection and the workers."""
    g.add_argument(
        "--max-samples",
        type=V.SAMPLES,
        metavar="N",
        help=f"most samples a connection's CONFIG_TEXT may ask for (default: {d.max_samples}, or "
        "--samples where higher)",
    )
    g.add_argument(
        "--max-steps",
        type=V.STEPS,
        metavar="N",
        help=f"most steps a connection's CONFIG_TEXT may ask for (default: {d.max_steps}, or --steps where higher)",
    )
    g.add_argument(
        "--queue",
        type=V.Bounded(1, 1000, integer=True),
        default=d.queue_per_connection,
        metavar="N",
        help="slices of one connection waiting for a worker; beyond, its reading waits "
        f"(default: {d.queue_per_connection})",
    )
    g.add_argument(
        "--workers",
        type=V.Bounded(1, 64, integer=True),
        default=d.workers,
        metavar="N",
        help="reconstructions at once, each with its own copy of the model and cores/N threads "
        f"(default: {d.workers}); connections take turns in any case",
    )


def _add_access_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("access")
    g.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="clients must send this file's token (a TEXT message 'token ...' before the header)",
    )
    g.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="listen beyond loopback without a token: any host that can reach the port can use it",
    )


def add_parsers(sub) -> None:
    """Register ``serve``, ``send`` and ``mrd-phantom`` on the CLI's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    _add_serve_parser(sub, fmt)
    _add_send_parser(sub, fmt)
    _add_phantom_parser(sub)


def _add_serve_parser(sub, fmt) -> None:
    p = sub.add_parser(
        "serve",
        help="an MRD (ISMRMRD) streaming reconstruction server",
        formatter_class=fmt,
        description="Receive MRD acquisitions over TCP (the ismrmrd streaming protocol), "
        "reconstruct each slice with an MRI model package and send MRD images back.",
        epilog=SERVE_EPILOG,
    )
    p.add_argument("package", help="an MRI model package folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on, and only there (default: 127.0.0.1)")
    p.add_argument("--port", type=PORT, default=9002, help="TCP port; 0 picks a free one (default: 9002)")
    p.add_argument("--savedata", type=Path, metavar="DIR", help="also save each complete stream as an MRD file")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _add_recon_options(p)
    _add_limit_options(p)
    p.set_defaults(func=_cmd_serve)


def _add_send_parser(sub, fmt) -> None:
    p = sub.add_parser(
        "send",
        help="stream a raw MRD file to a server and save the images",
        formatter_class=fmt,
        epilog=SEND_EPILOG,
        description="Stream a raw MRD (ISMRMRD HDF5) file to `diffunfold serve` (or any MRD "
        "server) and save the images it sends back.",
    )
    p.add_argument("file", type=Path, metavar="FILE.h5")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=PORT, default=9002)
    p.add_argument("--config", default="diffunfold", help="the CONFIG_FILE name sent first (default: diffunfold)")
    p.add_argument("--config-text", metavar="JSON", help="a CONFIG_TEXT message, e.g. '{\"samples\": 4}'")
    p.add_argument("--out", type=Path, default=Path("received"), help="output folder (default: received/)")
    p.add_argument("--formats", default="mrd,fastmri,dicom,png", help="which outputs (default: all four)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the server (600)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument(
        "--token-file", type=Path, metavar="FILE", help="send this file's token (a server with --token-file)"
    )
    p.set_defaults(func=_cmd_send)


def _add_phantom_parser(sub) -> None:
    p = sub.add_parser(
        "mrd-phantom",
        help="write a raw MRD file of simulated multi-coil phantoms (or a fastMRI volume)",
        description="Simulate phantoms on birdcage coils (or take a fastMRI volume) and write a raw "
        "MRD file: a full ISMRMRD header, noise scans, an oversampled readout and the "
        "lines of a 1-D mask, flagged as a scanner does.",
    )
    p.add_argument("out", type=Path, metavar="OUT.h5")
    p.add_argument("--from-fastmri", type=Path, metavar="FILE.h5", help="convert this fastMRI volume instead")
    p.add_argument("--slices", type=V.COUNT, default=4)
    p.add_argument("--size", type=V.image_side(16, 4096), default=64)
    p.add_argument("--coils", type=V.COILS, default=8)
    p.add_argument("--mask", default="gaussian1d", choices=["uniform1d", "random1d", "gaussian1d"])
    p.add_argument("--acceleration", type=float, default=4.0, help="1 writes every line (default: 4)")
    p.add_argument(
        "--noise",
        type=float,
        default=0.0,
        metavar="STD",
        help="std of the complex Gaussian noise the simulation adds to each k-space sample, in the "
        "k-space's units (phantom magnitudes in [0, 1], orthonormal FFT; default 0)",
    )
    p.add_argument("--seed", type=V.SEED, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_phantom)


def _settings(args):
    from .recon import ReconSettings

    return ReconSettings(
        steps=args.steps, samples=args.samples, seed=args.seed, coil_maps=args.coil_maps, bits=args.bits
    ).checked()


def _solver(args, threads: int | None = None):
    from ..package import ModelPackage
    from ..runtime.solver import Solver

    pkg = ModelPackage.open(args.package)
    if pkg.space.kind != "mri":
        raise InputError(f"{pkg.path} is not an MRI model package ({pkg.space.kind} data)")
    return Solver.load(pkg, backend=args.backend, device=args.device, threads=threads or args.threads or None)


def _limits(args):
    from .limits import MiB, ServerLimits

    return ServerLimits(
        max_message=args.max_message_mib * MiB,
        max_buffer_per_connection=args.max_buffer_mib * MiB,
        max_buffer_total=args.max_total_buffer_mib * MiB,
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        message_timeout=args.message_timeout,
        start_timeout=args.start_timeout,
        max_samples=args.max_samples or max(ServerLimits.max_samples, args.samples),
        max_steps=args.max_steps or max(ServerLimits.max_steps, args.steps or 0),
        queue_per_connection=args.queue,
        workers=args.workers,
    ).checked()


def _cmd_serve(args) -> int:
    import logging
    import os

    from .auth import read_token, require_access
    from .limits import descriptor_warning
    from .server import MRDServer, configure_logging, log_event

    configure_logging(args.log_level)
    settings, limits = _settings(args), _limits(args)
    token = read_token(args.token_file) if args.token_file else None
    warning = require_access(args.host, token, args.insecure_no_auth)
    # several workers share the cores unless --threads says otherwise
    threads = args.threads or (None if limits.workers == 1 else max(1, (os.cpu_count() or 1) // limits.workers))
    solvers = [_solver(args, threads) for _ in range(limits.workers)]
    server = MRDServer(
        solvers,
        settings,
        args.host,
        args.port,
        savedata=args.savedata,
        limits=limits,
        token=token,
        package_name=Path(args.package).name,
    )
    if warning:
        log_event("insecure", logging.WARNING, warning=warning)
    if fds := descriptor_warning(limits.max_connections):
        log_event("descriptors", logging.WARNING, warning=fds)
    server.install_signal_handlers()
    log_event("ready", package=str(args.package), settings=vars(settings))
    server.serve_forever()
    return 0


def _cmd_send(args) -> int:
    from .client import send_file
    from .outputs import planned_outputs, refuse_existing, write_outputs

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    refuse_existing(planned_outputs(args.out, args.file.stem, formats).values(), args.overwrite)
    token = None
    if args.token_file:
        from .auth import read_token

        token = read_token(args.token_file)
    reply = send_file(
        args.file,
        args.host,
        args.port,
        config=args.config,
        config_text=args.config_text,
        timeout=args.timeout,
        token=token,
    ).check()
    paths = write_outputs(reply.images, reply.header_xml, args.out, args.file.stem, formats, args.overwrite)
    lat = sorted(reply.latencies.values())
    print(
        f"{len(reply.images)} image(s) from {args.host}:{args.port} in {reply.finished - reply.started:.2f} s"
        + (f"; per-slice latency median {lat[len(lat) // 2]:.2f} s" if lat else "")
    )
    for text in reply.texts:
        print(f"server: {text}")
    for kind, path in paths.items():
        print(f"wrote {path} ({kind})")
    return 0


def _cmd_phantom(args) -> int:
    from .writer import fastmri_to_mrd, write_phantom_mrd

    if args.from_fastmri:
        path = fastmri_to_mrd(
            args.from_fastmri, args.out, args.mask, args.acceleration, args.seed, overwrite=args.overwrite
        )
    else:
        path = write_phantom_mrd(
            args.out,
            args.slices,
            args.size,
            args.coils,
            args.mask,
            args.acceleration,
            noise_std=args.noise,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    print(f"wrote {path}")
    return 0
