"""Per-step feedback on one long image: a progress bar over the sampler's steps that appears
only once the image has taken more than a few seconds (short ones stay quiet), fed by the
solver's ``progress(done, total)`` callback."""

from __future__ import annotations

from collections.abc import Callable

STEP_BAR_DELAY_S = 3.0


def step_bar(desc: str, quiet: bool = False, delay: float = STEP_BAR_DELAY_S) -> Callable[[int, int], None] | None:
    """A ``progress(done, total)`` callable for :meth:`Solver.solve` (None when ``quiet``);
    create it just before the solve, as its delay counts from its creation."""
    if quiet:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=None, desc=desc, unit="step", leave=False, delay=delay)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update
