"""What every benchmark records next to its numbers: the machine, the versions, the settings."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from diffunfold.hardware import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"

# Modules whose versions a result records when they are installed (read from the installed
# distributions, so nothing heavy is imported just to name its version).
VERSIONED = ("onnxruntime", "torch", "cupy", "tensorrt", "polygraphy", "onnx", "scipy")


def module_version(module: str) -> str | None:
    """The installed version of ``module`` (``cupy`` from ``cupy-cuda12x``, ``onnxruntime`` from
    ``onnxruntime-gpu``, ...), or None when it is not installed."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    for dist in packages_distributions().get(module, []):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    try:  # e.g. TensorRT from JetPack's Debian packages: no distribution metadata
        return str(getattr(__import__(module), "__version__", "unknown"))
    except Exception:  # a stub wheel or a missing shared library
        return "unknown (does not import)"


def gpu_info() -> dict:
    """``{"gpu": name, "gpu_compute_capability": "9.0"}`` of CUDA device 0, through torch, CuPy
    or nvidia-smi; empty when no GPU is visible."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"gpu": torch.cuda.get_device_name(0), "gpu_compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    try:
        from diffunfold.engines import current_gpu

        gpu = current_gpu(0)
    except Exception:  # no GPU, or a broken driver
        gpu = None
    return {"gpu": gpu.name, "gpu_compute_capability": gpu.compute_capability} if gpu else {}


def machine_info() -> dict:
    import numpy

    info = {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)  # > 0 before the run: something else is busy
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    info.update(gpu_info())
    for module, v in versions().items():
        info.setdefault(module, v)
    return info


# -- was the machine quiet? -------------------------------------------------------------------

# A run is quiet when other processes used at most a quarter of a core, on average, in a short
# window before it and while it ran. The load averages at the start and the end are reported
# beside it (the end's counts the benchmark's own threads).
QUIET_START_LOAD = 0.5  # per core; only where /proc/stat cannot tell what other processes use
QUIET_OTHERS_CORES = 0.25
# The load average is a decaying mean over a minute: right after another benchmark it still
# reads ~2 on an idle machine. So quiet is judged by what other processes use, measured: over
# this window before the run, and over the whole run.
START_SAMPLE_S = 2.0


def _cpu_busy_s() -> float | None:
    """Seconds of CPU all processes used since boot (user, nice, system, irq, softirq and the
    hypervisor's steal, which other guests take), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


class _OthersMeter:
    """Cores that other processes used since it was started: all CPU time in /proc/stat minus
    this process's and its children's, over the wall time (None without /proc/stat)."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), _cpu_busy_s(), _own_cpu_s()

    def cores(self) -> float | None:
        wall, busy1, own1 = time.perf_counter() - self.t0, _cpu_busy_s(), _own_cpu_s()
        if self.busy0 is None or busy1 is None or wall <= 0:
            return None
        return round(max(0.0, (busy1 - self.busy0) - (own1 - self.own0)) / wall, 2)


class LoadWatch:
    """The load around a benchmark: the load average at the start and the end (reported), and
    the cores other processes used in a short window before the run and during it (judged)."""

    def __init__(self, sample_s: float = START_SAMPLE_S):
        self.start_load = _load()
        before = _OthersMeter()
        time.sleep(sample_s)
        self.start_others = before.cores()
        self.during = _OthersMeter()

    def finish(self) -> dict:
        others = self.during.cores()
        if others is None or self.start_others is None:  # no /proc/stat: the load average alone
            cores = os.cpu_count() or 1
            quiet = self.start_load is not None and self.start_load <= QUIET_START_LOAD * cores
        else:
            quiet = max(others, self.start_others) <= QUIET_OTHERS_CORES
        return {
            "load_average_start": self.start_load,
            "load_average_end": _load(),
            "other_processes_cores_before": self.start_others,
            "other_processes_cores": others,
            "quiet": quiet,
        }


def describe_load(load: dict) -> str:
    before = load.get("other_processes_cores_before")
    return (
        f"load average {load['load_average_start']} at the start, {load['load_average_end']} at the end; "
        + (
            f"other processes used {before} cores just before the run and "
            if before is not None
            else "other processes used "
        )
        + f"{load['other_processes_cores']} cores on average during it: "
        + ("quiet" if load["quiet"] else "BUSY")
    )


def may_write(load: dict, allow_busy: bool, say=print) -> bool:
    """Whether results may be written: a quiet run, or a busy one with ``--allow-busy`` (then
    marked so in the results). Says which."""
    say(describe_load(load))
    if load["quiet"]:
        return True
    if allow_busy:
        load["recorded_busy"] = True
        say("the machine was busy: writing anyway (--allow-busy); the results are marked as measured on a busy machine")
        return True
    say(
        f"the machine was busy (other processes above {QUIET_OTHERS_CORES} cores before or during the run): "
        "no results written; rerun on a quiet machine, or pass --allow-busy to "
        "record them marked as busy"
    )
    return False


def add_output_arguments(ap) -> None:
    """``--out``, ``--no-write`` and ``--allow-busy``, as the benchmarks that record take them."""
    ap.add_argument("--out", default=str(RESULTS), help="folder for the results (default bench/results)")
    ap.add_argument("--no-write", action="store_true", help="print only; write no results")
    ap.add_argument("--allow-busy", action="store_true", help="write results measured on a busy machine, marked so")


def record(
    name: str, watch: LoadWatch, info: dict, args, rows, markdown: str, title: str, allow_busy: bool | None = None
) -> Path | None:
    """Print ``markdown``, then write ``<name>-<machine>.md/.json`` under ``args.out`` unless
    ``args.no_write`` or the machine was busy (see :func:`may_write`). Returns the path written."""
    print("\n" + markdown)
    info["load"] = watch.finish()
    busy_ok = args.allow_busy if allow_busy is None else allow_busy
    if args.no_write:
        print(describe_load(info["load"]))
        return None
    if not may_write(info["load"], busy_ok):
        return None
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "no_write")}
    path = write_results(name, info, settings, rows, markdown, out_dir=args.out, title=title)
    print(f"wrote {path}")
    return path


def busy_banner(load: dict | None) -> str:
    """A warning line for the top of a results file measured on a busy machine; '' when quiet."""
    if not load or load.get("quiet"):
        return ""
    return (
        f"**Measured on a busy machine, recorded with --allow-busy: {describe_load(load)}. Trust the ratios "
        "between rows measured in this run, not the absolute times.**\n\n"
    )


def versions() -> dict:
    """``{module: version}`` for the runtime's optional parts that are installed."""
    return {m: v for m in VERSIONED if (v := module_version(m)) is not None}


def machine_slug(info: dict) -> str:
    """A file name for the machine: GPU name if any, else CPU model and core count."""
    base = info.get("gpu") or f"{info['cpu']}-{info['cores']}cores"
    return re.sub(r"[^A-Za-z0-9]+", "-", base).strip("-").lower()


def write_results(
    name: str | None,
    info: dict,
    settings: dict,
    rows,
    markdown: str,
    out_dir: str | Path | None = None,
    title: str | None = None,
) -> Path:
    """Write ``<out_dir>/<name>-<machine>.md`` and ``.json`` (``<machine>.md`` when ``name`` is
    None; ``out_dir`` defaults to bench/results). Returns the Markdown path."""
    out = Path(out_dir) if out_dir else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    slug = machine_slug(info)
    stem = out / (f"{name}-{slug}" if name else slug)
    payload = {"benchmark": name or "run", "machine": info, "settings": settings, "results": rows}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    header = "\n".join(f"- {k}: {v}" for k, v in info.items())
    markdown = busy_banner(info.get("load")) + markdown
    settings_md = "\n".join(f"- {k}: {v}" for k, v in settings.items())
    stem.with_suffix(".md").write_text(
        f"# {title or name or slug}\n\nMachine:\n{header}\n\nSettings:\n{settings_md}\n\n{markdown}\n"
    )
    return stem.with_suffix(".md")
