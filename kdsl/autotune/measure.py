"""Measuring candidates in a process of their own, so that a crash never takes the tuner down.

The measuring process makes the example's arguments once (random data for its specs)
and holds them, several copies of them (used in turn, so a candidate never finds its
data warm in cache from its own previous call) and the reference outputs; no candidate
makes arrays. For each candidate it loads the machine code (no LLVM here), runs it once
on a copy given the example's values again, compares every output with the reference
(a chunk at a time), and only then times it: one warm-up call, then samples until
`min_time` has passed (at least `MIN_SAMPLES`), each sample one call or, for calls
under `BATCH_S`, a batch of calls; the result is the median. A candidate whose median
after a few samples is far over `cutoff` stops early. A candidate measured again (the
tuner's final turns) is not checked again.

`Measurer` is the parent's side: it starts the process (`worker.Worker`), restarts it
when a candidate kills it or runs past its time, and replays the setup so the next
candidate finds the same inputs and reference.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdsl.autotune.worker import Failure, Request, Worker
from kdsl.errors import KdslError
from kdsl.ir.nodes import Kernel
from kdsl.specs import ArgExample, make_arguments
from kdsl.targets.cpu import backend, runtime
from kdsl.targets.cpu.call import CallLayout, Specialization

MIN_SAMPLES = 5
MAX_SAMPLES = 100
BATCH_S = 1e-3  # calls shorter than this are timed in batches
EARLY_SAMPLES = 3  # samples after which a candidate over its cutoff stops
ROTATION_BYTES = 64 << 20  # input copies together span at least this (twice the L3)
MAX_COPIES = 8
COMPARE_CHUNK = 1 << 18  # elements compared at a time


@dataclass(frozen=True)
class Candidate:
    """Everything the measuring process needs to call one compiled version of a kernel."""

    name: str
    traced: Kernel  # result shapes are expressions over it
    scheduled: Kernel
    obj: backend.ObjectCode
    layout: CallLayout
    checks: bool
    strict_fp: bool

    def load(self) -> Specialization:
        compiled = backend.from_object(self.scheduled, self.obj, self.checks, self.strict_fp)
        return self.layout.specialization(self.name, self.traced, compiled)


@dataclass(frozen=True)
class Outcome:
    """ok: timed (median seconds); slow: stopped early over the cutoff; wrong: outputs
    differ from the reference; error: raised; crashed / timeout: took the process down."""

    status: str
    time_s: float | None = None
    detail: str = ""


def turn_s(time_s: float, min_time: float) -> float:
    """About how long `Bench.measure` takes without its check for a kernel call of
    `time_s`: the warm-up, then at least `MIN_SAMPLES` samples and `min_time`."""
    sample = max(time_s, BATCH_S)
    return time_s + min(MAX_SAMPLES * sample, max(min_time, MIN_SAMPLES * sample))


# ----------------------------------------------------------- the measuring process


def _tolerance(dtype: np.dtype) -> float:  # type: ignore[type-arg]
    if dtype.kind != "f" and dtype.kind != "V":
        return 0.0
    return {8: 1e-9, 4: 1e-3}.get(dtype.itemsize, 3e-2)  # f16/bf16: a few ulps of 8 bits


def returned(result: object) -> list[Any]:
    """What a kernel call returned, as a list: nothing, one result, or a tuple of them."""
    if result is None:
        return []
    return list(result) if isinstance(result, tuple) else [result]


def compare(
    got: Sequence[np.ndarray], want: Sequence[np.ndarray], names: Sequence[str] = ()
) -> str | None:
    """Where `got` differs from `want` beyond reassociation's rounding, or None; each
    output called by its name in `names` (else by its position)."""
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for n, (g, w) in enumerate(zip(got, want)):
        name = names[n] if n < len(names) else f"output {n}"
        if g.shape != w.shape:
            return f"{name} has shape {g.shape}, expected {w.shape}"
        wrong = _differs(g.reshape(-1), w.reshape(-1))
        if wrong:
            return f"{name} {wrong}"
    return None


def output_names(param_names: Sequence[str], args: Sequence[object], results: int) -> list[str]:
    """What `compare` calls the outputs of a call with `args` (the array arguments, then
    the `results` arrays returned): 'y', 'the result', 'result 1'."""
    arrays = [f"'{n}'" for n, a in zip(param_names, args) if isinstance(a, np.ndarray)]
    if results == 1:
        return [*arrays, "the result"]
    return arrays + [f"result {k}" for k in range(results)]


def _differs(got: np.ndarray, want: np.ndarray) -> str | None:
    """`compare` for one flat array, a chunk at a time (the float64 temporaries of a
    256 MiB output took seconds of page faults): chunks that are equal bit for bit (an
    input the kernel left alone, most integer outputs) are done with at once."""
    unequal = _unequal_chunks(got, want)
    if not unequal:
        return None
    if want.dtype.kind in "biu":
        at = unequal[0]
        first = at + int(np.argmax(got[at : at + COMPARE_CHUNK] != want[at : at + COMPARE_CHUNK]))
        return f"differs at {first} (integers must match)"
    rtol = _tolerance(want.dtype)
    scale = max(
        (
            float(np.nanmax(np.abs(want[at : at + COMPARE_CHUNK].astype(np.float64)), initial=0.0))
            for at in range(0, want.size, COMPARE_CHUNK)
        ),
        default=0.0,
    )
    for at in unequal:
        g64 = got[at : at + COMPARE_CHUNK].astype(np.float64)
        w64 = want[at : at + COMPARE_CHUNK].astype(np.float64)
        close = np.isclose(g64, w64, rtol=rtol, atol=rtol * max(scale, 1e-30), equal_nan=True)
        if not close.all():
            bad = int(np.argmin(close))
            got_at, want_at = float(g64[bad]), float(w64[bad])
            return f"differs: {got_at!r} vs {want_at!r} at flat index {at + bad}"
    return None


def _unequal_chunks(got: np.ndarray, want: np.ndarray) -> list[int]:
    """Where the chunks of two flat arrays start that are not equal bit for bit (NaNs
    equal)."""
    return [
        at
        for at in range(0, want.size, COMPARE_CHUNK)
        if not np.array_equal(
            got[at : at + COMPARE_CHUNK], want[at : at + COMPARE_CHUNK], equal_nan=True
        )
    ]


class Bench:
    """The measuring process's state: the example's arguments, made once, their copies,
    the reference outputs."""

    def __init__(self) -> None:
        self.inputs: list[object] = []
        self.copies: list[list[object]] = []
        self.reference: list[np.ndarray] = []

    def setup(self, examples: Sequence[ArgExample], seed: int, threads: int) -> None:
        """The example's arguments (random data for its specs) and copies of them to run
        candidates on: the only arrays made, once for every candidate."""
        runtime.set_num_threads(threads)
        named = {f"a{n}": e for n, e in enumerate(examples)}
        self.inputs = list(make_arguments(named, np.random.default_rng(seed)).values())
        nbytes = sum(a.nbytes for a in self.inputs if isinstance(a, np.ndarray))
        count = min(MAX_COPIES, max(1, -(-ROTATION_BYTES // max(nbytes, 1))))
        self.copies = [
            [a.copy() if isinstance(a, np.ndarray) else a for a in self.inputs]
            for _ in range(count)
        ]

    def _outputs(self, spec: Specialization) -> list[np.ndarray]:
        """Every array after a call (the arguments, then the results) on the first copy,
        given the example's values again first: a kernel may write any argument, and its
        previous runs did. The next call overwrites them."""
        args = self.copies[0]
        for copy, value in zip(args, self.inputs):
            if isinstance(copy, np.ndarray):
                np.copyto(copy, value)  # type: ignore[arg-type]
        results = returned(spec.run(args))
        return [a for a in args if isinstance(a, np.ndarray)] + results

    def reference_run(self, candidate: Candidate) -> None:
        """The reference's outputs, kept; an argument it leaves as it was is its own."""
        given = [a for a in self.inputs if isinstance(a, np.ndarray)]
        self.reference = [
            given[n]
            if n < len(given) and not _unequal_chunks(out.reshape(-1), given[n].reshape(-1))
            else out.copy()
            for n, out in enumerate(self._outputs(candidate.load()))
        ]

    def _wrong(self, spec: Specialization, layout: CallLayout) -> str | None:
        """Where the candidate's outputs differ from the reference's, naming the output."""
        names = output_names(layout.param_names, self.inputs, len(layout.results))
        return compare(self._outputs(spec), self.reference, names)

    def measure(
        self, candidate: Candidate, min_time: float, cutoff: float | None, check: bool = True
    ) -> Outcome:
        """The candidate's outputs checked against the reference (unless `check` is
        False: it was checked before), then its time."""
        spec = candidate.load()
        if check and (wrong := self._wrong(spec, candidate.layout)):
            return Outcome("wrong", detail=wrong)
        copies, turn = self.copies, 0
        start = time.perf_counter()
        spec.run(copies[0])  # warm-up: page faults, the pool's threads
        once = time.perf_counter() - start
        batch = max(1, int(BATCH_S / max(once, 1e-9)))
        samples: list[float] = []
        began = time.perf_counter()
        while len(samples) < MAX_SAMPLES:
            t0 = time.perf_counter()
            for _ in range(batch):
                turn = (turn + 1) % len(copies)
                spec.run(copies[turn])
            samples.append((time.perf_counter() - t0) / batch)
            median = statistics.median(samples)
            if cutoff is not None and len(samples) >= EARLY_SAMPLES and median > cutoff:
                return Outcome("slow", median, f"over {cutoff:.3g} s after {len(samples)}")
            if len(samples) >= MIN_SAMPLES and time.perf_counter() - began >= min_time:
                break
        return Outcome("ok", statistics.median(samples))


def failure_text(failure: Failure) -> str:
    """What a worker's failure says: the error it raised, or what happened to the
    process (it crashed, timed out)."""
    return failure.detail if failure.status == "error" else f"{failure.status}: {failure.detail}"


class Measurer:
    """The parent's handle on the measuring process: restarted after a crash or a
    timeout, with its setup replayed."""

    def __init__(self, examples: Sequence[ArgExample], seed: int, reference: Candidate) -> None:
        self._setup: list[Request] = [
            ("setup", (list(examples), seed, runtime.get_num_threads())),
            ("reference_run", (reference,)),
        ]
        self._worker: Worker | None = None
        self.restarts = 0

    def _ready(self) -> Worker:
        if self._worker is None:
            self._worker = Worker()
            for request in self._setup:
                reply = self._worker.ask(request, timeout=600.0)
                if isinstance(reply, Failure):
                    self.close()
                    raise KdslError(f"the reference run failed: {failure_text(reply)}")
        return self._worker

    def start(self) -> None:
        """Start the process: it makes the example's arrays and runs the reference (else
        the first `measure` does)."""
        self._ready()

    def measure(
        self,
        candidate: Candidate,
        min_time: float,
        cutoff: float | None,
        timeout: float,
        check: bool = True,
    ) -> Outcome:
        request = ("measure", (candidate, min_time, cutoff, check))
        reply = self._ready().ask(request, timeout)
        if isinstance(reply, Failure):
            if reply.status != "error":  # the process is gone: start afresh next time
                self.close()
                self.restarts += 1
            return Outcome(reply.status, detail=reply.detail)
        assert isinstance(reply, Outcome)
        return reply

    def close(self) -> None:
        if self._worker is not None:
            if self._worker.alive:
                self._worker.close()
            self._worker = None
