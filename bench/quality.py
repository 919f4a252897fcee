"""The quality harness: model packages side by side against strong classical baselines, on
held-out data, every task at several noise levels, in one run.

    python bench/quality.py samples/models/image-small samples/models/mri-small
    python bench/quality.py samples/models/image-small runs/my-run        # a run folder is exported first
    python bench/quality.py samples/models/image-small --quick --out /tmp/q

Each package is scored on the tasks of its data kind (the manifest's ``data.kind``):

* image: Gaussian blur (sigma 2), anisotropic blur (sigma 3 x 1, angle 0.6 rad), motion blur
  (length 7; no package has trained on it), SR x4 and x8 (box), inpainting with 20 / 40 / 60 %
  of the pixels missing; each at measurement noise sigma_y in {0, 0.01, 0.05, 0.1} (images in
  [0, 1]). Data: the held-out photos of ``diffunfold data photos`` (``--photos DIR/held-out``),
  or by default the held-out scikit-image photos (``diffunfold.demo_data.held_out_images``).
* mri: 15 simulated coils, uniform 1-D 4x and 8x, Gaussian 1-D 4x and Gaussian 2-D 8x masks,
  noise-free and at the paper's noise, 0.01 x max|A x| per image. Data: slices of the held-out
  real head of ``diffunfold data mri-volumes`` (``--mri-volumes DIR/held-out``), or by default
  synthetic phantoms (``diffunfold.demo_data.held_out_phantoms``).

Packages of the same kind share the data, the operators, the measurements and the baselines,
computed once. Image i's measurement noise and sampler start are seeded with ``seed + i``.
Each operator is shared by the images of a task: one inpainting mask (seeded with ``--seed``)
and one MRI mask per task, so the images and the posterior samples run in one batch.

Writes ``<out>/quality-<package>.md`` and ``.json`` per package (its rows and the baselines'),
``quality-<package>.png`` (PSNR against the noise level, one panel per task), and with more
than one package ``quality-compare-<kinds>.md`` (``-image``, ``-mri`` or ``-image-mri``). See ``--help`` for how to
read them.

The code is the package ``bench/quality_harness/``; this file is its entry point and keeps the
names the tests and ``trajectory.py`` import (``import quality``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_harness import (  # noqa: E402,F401  (the harness's names, as `import quality` gave them)
    IMAGE_NOISE,
    METHODS,
    MRI_NOISE,
    QUICK,
    RESULTS,
    SIGPY_METHODS,
    TASK_BY_KEY,
    TASKS,
    Case,
    Estimate,
    Method,
    QualityTask,
    Settings,
    build_parser,
    images_used,
    main,
    make_case,
    run,
    score,
)

if __name__ == "__main__":
    sys.exit(main())
