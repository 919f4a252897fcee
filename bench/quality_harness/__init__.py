"""The quality harness behind ``bench/quality.py`` (its docstring and ``--help`` say what it does).

- ``tasks``: the tasks, noise levels and :class:`Settings` (``--quick`` is :data:`QUICK`)
- ``cases``: one task at one noise level (:class:`Case`), a method's estimates and their scores
- ``baselines``: the classical baselines, oracles included
- ``packages``: the packages scored (run folders exported first) and their solves
- ``report``: the Markdown reports and the JSON summary; ``figure``: the PSNR figure
- ``harness``: one run, from settings to the files written; ``cli``: the command line

It imports ``machine`` from ``bench/``, which must be on ``sys.path`` (``bench/quality.py`` puts it there).
"""

from .baselines import METHODS, SIGPY_METHODS, Method
from .cases import Case, Estimate, make_case, score
from .cli import RESULTS, build_parser, main
from .harness import run
from .report import images_used
from .tasks import IMAGE_NOISE, MRI_NOISE, QUICK, TASK_BY_KEY, TASKS, QualityTask, Settings

__all__ = [
    "Case",
    "Estimate",
    "IMAGE_NOISE",
    "METHODS",
    "MRI_NOISE",
    "Method",
    "QUICK",
    "QualityTask",
    "RESULTS",
    "SIGPY_METHODS",
    "Settings",
    "TASKS",
    "TASK_BY_KEY",
    "build_parser",
    "images_used",
    "main",
    "make_case",
    "run",
    "score",
]
