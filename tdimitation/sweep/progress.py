"""The sweep's progress line: trials done of the total, failures, best so far, ETA."""

from __future__ import annotations

import sys
import time

from ray.tune import Callback

from tdimitation.sweep.trial import FINAL

#: Trials ended (finished, stopped early or failed) per phase, as last counted in this
#: process: how the driver tells a phase that ended from one that was interrupted (a resumed
#: phase runs with the callback Ray Tune saved, not with a new one).
ENDED: dict[str, int] = {}


class SweepProgress(Callback):
    """Prints one line to stderr each time a trial ends.

    Args:
        label: what is running (the sweep's name and phase).
        total: trials of this phase.
        metric: the metric whose best value so far is shown.
        mode: ``"max"`` or ``"min"``: which value is best.
    """

    def __init__(self, label: str, total: int, metric: str, mode: str = "max") -> None:
        self.label, self.total, self.metric = label, total, metric
        self.pick = max if mode == "max" else min
        self.started = time.monotonic()
        self.done = 0
        self.failed = 0
        self.best: float | None = None

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        self.started = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._count(trials, trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._count(trials, trial, failed=True)

    def _count(self, trials, ending, failed: bool) -> None:
        # The ending trial's status changes only after these hooks; trials a resumed sweep
        # finished before count too.
        others = [t for t in trials if t is not ending]
        self.done = sum(t.status in ("TERMINATED", "ERROR") for t in others) + 1
        self.failed = sum(t.status == "ERROR" for t in others) + int(failed)
        ENDED[self.label] = self.done
        finals = [
            float(t.last_result[self.metric])
            for t in trials
            if (t.last_result or {}).get(FINAL) and self.metric in t.last_result
        ]
        self.best = self.pick(finals) if finals else None
        elapsed = time.monotonic() - self.started
        left = max(self.total - self.done, 0)
        eta = f"{elapsed / self.done * left:.0f} s" if self.done and left else "-"
        failed = f", {self.failed} failed" if self.failed else ""
        best = "" if self.best is None else f", best final {self.metric} {self.best:.4g}"
        print(
            f"sweep {self.label}: {self.done}/{self.total} trials done{failed}{best}, "
            f"{elapsed:.0f} s elapsed, ETA {eta}",
            file=sys.stderr,
            flush=True,
        )
