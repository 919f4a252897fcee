"""``quality-<package>.png``: PSNR against the noise level, one panel per task."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .baselines import METHODS
from .packages import Scored
from .report import best_baseline, find
from .tasks import TASK_BY_KEY, Settings


def figure(sc: Scored, others: list[Scored], baseline_rows: list[dict], s: Settings, path: Path) -> str | None:
    """PSNR against the noise level, one panel per task: the package (mean and one sample),
    the other packages of its kind (mean) and the best baseline. Returns why not, if not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no figure: matplotlib is not installed ({exc}); pip install -e '.[eval]'"
    tasks = [TASK_BY_KEY[k] for k in dict.fromkeys(r["task"] for r in sc.rows)]
    cols = min(4, len(tasks))
    nrows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.9 * nrows), squeeze=False)
    for ax, task in zip(axes.ravel(), tasks):
        levels = list(dict.fromkeys(r["noise"] for r in sc.rows if r["task"] == task.key))
        pos = np.arange(len(levels))

        def series(rows, method):
            return [(find(rows, task.key, lv, method) or {}).get("psnr", np.nan) for lv in levels]

        ax.plot(pos, series(sc.rows, "model_mean"), "o-", color="C0", label=f"{sc.name} (mean of {s.samples})")
        ax.plot(pos, series(sc.rows, "model_sample"), "o:", color="C0", alpha=0.6, label=f"{sc.name} (1 sample)")
        for j, other in enumerate(others, start=1):
            ax.plot(pos, series(other.rows, "model_mean"), "s-", color=f"C{j}", label=f"{other.name} (mean)")
        best = [best_baseline(baseline_rows, task.key, lv) for lv in levels]
        ax.plot(pos, [b["psnr"] if b else np.nan for b in best], "k^--", label="best baseline")
        for p, b in zip(pos, best):
            if b:
                ax.annotate(
                    METHODS[b["method"]].short,
                    (p, b["psnr"]),
                    fontsize=6,
                    textcoords="offset points",
                    xytext=(0, -9),
                    ha="center",
                )
        ax.set_xticks(pos, [f"{lv:g}" for lv in levels])
        ax.set_xlim(-0.5, len(levels) - 0.5)
        ax.set_title(task.label, fontsize=9)
        ax.set_xlabel("noise (x max|Ax|)" if task.kind == "mri" else "sigma_y", fontsize=8)
        ax.set_ylabel("PSNR (dB)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(tasks) :]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(f"{sc.name}: PSNR against the noise level (* = oracle)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (nrows == 1), 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
