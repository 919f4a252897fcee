"""The report of a ``diffunfold restore`` run: the per-image table and the summary on stdout, and
the JSON report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cluster import cluster_lines
from .command_common import report_runtime, scored_table, skipped_note, sum_timing, write_report


def restore_table(rows: list[dict], measured: bool, base_name: str) -> list[str]:
    if measured:
        return ["| image | size | restored | s |", "|---|---|---|---|"] + [
            f"| {Path(r['input']).name} | {r['size'][0]}x{r['size'][1]} | "
            f"{Path(r['outputs']['restored']).name} | {r['seconds']:.2f} |"
            for r in rows
        ]
    lead = [("image", lambda r: Path(r["input"]).name), ("size", lambda r: f"{r['size'][0]}x{r['size'][1]}")]
    return scored_table(rows, lead, [("", ""), (f"{base_name} ", "_baseline")])


def restore_report(args, pkg, job: Any, label: str, batch, wall: float, notes_first: list[str]) -> None:
    rows, out_dir = batch.rows, Path(args.out)
    base_name = rows[-1]["baseline"] if rows else "baseline"
    noise_label = "estimated per image" if args.noise is None else f"{args.noise:g}"
    print(f"{pkg.summary()}\n{args.mode} {label}, noise {noise_label}, {len(rows)} image(s) -> {out_dir}/")
    if rows:
        print("\n".join(restore_table(rows, args.mode == "measured", base_name)))
    for n in [n for r in rows for n in r.get("notes", [])] + skipped_note(batch, "image", out_dir):
        print(f"note: {n}")
    print("\n".join(report_runtime(job.solver, rows, "image", wall, args.samples)))
    if job.cluster:
        print("\n".join(cluster_lines(job.cluster, "image")))
    if args.json:
        timing = sum_timing(rows)
        write_report(
            args.json,
            {
                "command": "restore",
                "package": str(pkg.path),
                "mode": args.mode,
                "task": job.name,
                "params": {k: v for k, v in args.task.items() if k != "task"},
                "noise": args.noise,
                **sampling_of(args, pkg),
                "samples": args.samples,
                "seed": args.seed,
                "size": args.size,
                "nfe": rows[-1]["nfe"] if rows else None,
                "baseline": base_name,
                "backend": job.solver.backend_name,
                "backend_reason": job.solver.backend_reason,
                "timing": timing.as_dict(),
                "seconds_per_image": timing.total / max(len(rows), 1),
                "wall_s": wall,
                "notes": notes_first,
                **({"cluster": job.cluster} if job.cluster else {}),
            },
            batch,
            "name",
        )


def sampling_of(args, pkg) -> dict:
    """How the images were sampled, for the report: the unfolding sampler's settings, or the
    zero-shot method and its step count (None: the method's default; its settings are in
    ``diffunfold.runtime.zero_shot``)."""
    if pkg.kind == "denoiser":
        return {"method": args.method, "steps": args.steps}
    return {
        "method": "diff-unfolding",
        "steps": args.steps or pkg.schedule["steps"],
        "sampler": args.sampler or pkg.schedule["sampler"],
        "churn": (args.churn_setting or pkg.churn).as_dict(),
        "ensemble": args.ensemble or pkg.ensemble,
        "contrast": contrast_of(args.contrast, pkg),
    }


def contrast_of(chosen: str | None, pkg) -> dict | None:
    """The contrast stretch a restore ran with, for its report (None: off)."""
    from .contrast import Contrast

    contrast = pkg.contrast if chosen is None else Contrast.of(chosen)
    return None if contrast is None else contrast.as_dict()
