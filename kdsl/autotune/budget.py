"""The time budget of one tuning run (a kernel and an example): its deadline, what each
phase of the run spent, and how many more candidates fit, judged by the earlier ones.

The budget covers the whole run: tracing, compiling, making the example's arrays, the
reference run, every candidate's check and timing, and the final turns. The default
params are measured whatever it says (they are the baseline); after them, a batch of
candidates starts only as far as the time left is expected to cover it, keeping the
final turns' share.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Budget:
    """`seconds` from now, by `clock` (tests give a fake one)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds = seconds
        self.clock = clock
        self.started = clock()
        self.phases: dict[str, float] = {}  # seconds spent in each phase, in order
        self._compiles: list[tuple[float, int, int]] = []  # seconds, candidates, workers
        self._measure_s: list[float] = []  # seconds per candidate checked and timed

    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """The block's time, added to phase `name`'s."""
        start = self.clock()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + self.clock() - start

    def compiled(self, seconds: float, count: int, jobs: int) -> None:
        """`count` candidates took `seconds` to compile on `jobs` workers (0: here)."""
        if count:
            self._compiles.append((seconds, count, jobs))

    def measured(self, seconds: float) -> None:
        """A candidate took `seconds` to check and time."""
        self._measure_s.append(seconds)

    def measure_s(self) -> float:
        """What checking and timing one more candidate is expected to take."""
        return statistics.fmean(self._measure_s) if self._measure_s else 0.0

    def compile_s(self, count: int, jobs: int) -> float:
        """What compiling `count` more candidates on `jobs` workers is expected to take:
        a round of compiles (one per worker) takes what the rounds before took on
        average; until several candidates were compiled together, compiles are not
        expected to run in parallel (a loaded machine, a new worker starting)."""
        if not self._compiles:
            return 0.0
        per_round = statistics.fmean(s / _rounds(n, j) for s, n, j in self._compiles)
        together = any(n > 1 and j > 1 for _, n, j in self._compiles)
        return per_round * (_rounds(count, jobs) if together else count)

    def batch_s(self, count: int, jobs: int) -> float:
        """What compiling, checking and timing `count` more candidates is expected to take."""
        return self.compile_s(count, jobs) + count * self.measure_s()

    def fitting(self, most: int, jobs: int, reserve: Callable[[int], float] = lambda _: 0.0) -> int:
        """How many more candidates, up to `most`, the time left covers, keeping
        `reserve(count)` seconds for after them."""
        count = most
        while count and self.batch_s(count, jobs) + reserve(count) > self.left():
            count -= 1
        return count


def _rounds(count: int, jobs: int) -> int:
    """Rounds of compiles for `count` candidates on `jobs` workers (0: one at a time here)."""
    return math.ceil(count / max(jobs, 1))
