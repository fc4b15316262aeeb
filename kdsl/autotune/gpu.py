"""Tuning a kernel's CUDA schedule on the GPU (`kdsl autotune --target cuda`,
`kernel.autotune(..., target=kd.cuda)`).

Each config of the CUDA schedule's `s.param` space is compiled to PTX in this process
(PTX is quick to make: no worker processes), run once on device copies of one
example's arguments and compared with what the CPU computes for the same arguments (an
oracle independent of every GPU schedule), then timed with CUDA events: the median of
batches of launches. Configs whose PTX is the same are run once. The fastest goes to
the tuning database under the GPU's target key (`cuda/sm_90/NVIDIA H200`), where CUDA
calls of the kernel find it (`kdsl.dispatch.CudaDispatch`).

`GpuBench` is the GPU's side (arguments on the device, checking and timing); the search
takes any object with its two methods, which lets the tests drive it with the SIMT
emulator instead of a GPU.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from kdsl import types as T
from kdsl.autotune.budget import Budget
from kdsl.autotune.keys import shape_of, tuning_key
from kdsl.autotune.measure import compare, returned
from kdsl.autotune.strategies import Config, make_strategy
from kdsl.autotune.tuner import (
    Trial,
    TuneReport,
    check_budget,
    example_values,
    observe,
    progress_bar,
    record_best,
    tune,
)
from kdsl.errors import ScheduleError
from kdsl.specs import ArgExample, make_arguments
from kdsl.targets.cuda import arrays as A
from kdsl.targets.cuda import driver
from kdsl.targets.cuda.call import CudaSpecialization

if TYPE_CHECKING:
    from kdsl.kernel import KernelFunction

BATCH_S = 1e-3  # launches timed together until a batch takes this long
SAMPLES = 7  # batches per config; the median counts


def gpu_target_key(device: int = 0) -> str:
    """The tuning database's target for a GPU: its architecture and name."""
    return f"cuda/{driver.device_arch(device)}/{driver.device_name(device)}"


class Bench(Protocol):
    """Runs a config compiled as `spec` (from the params `config`): every array after a
    call (the arguments, then the results), and the seconds a call takes."""

    def outputs(self, spec: CudaSpecialization, config: Config) -> list[np.ndarray]: ...

    def seconds(self, spec: CudaSpecialization, config: Config) -> float: ...


class GpuBench:
    """One example's arguments on the GPU: `outputs` runs a compiled config on fresh
    device copies and brings every array back (the arguments, then the results);
    `seconds` times it."""

    def __init__(self, host: Sequence[object]) -> None:
        self.host = list(host)
        self.device = self._upload()  # for timing: outputs overwritten run after run

    def _upload(self) -> tuple[list[object], list[driver.DeviceBuffer]]:
        args: list[object] = []
        buffers = []
        for value in self.host:
            if isinstance(value, np.ndarray):
                dtype = T.from_numpy(value.dtype)
                assert dtype is not None  # (the kernel's specs took this array)
                buffer = driver.DeviceBuffer.of(np.ascontiguousarray(value), dtype)
                buffers.append(buffer)
                strides = A._c_strides(value.shape, value.itemsize)
                args.append(
                    A.DeviceArray(buffer.ptr, value.shape, strides, dtype, 0, False, "cai", None)
                )
            else:
                args.append(value)
        return args, buffers

    def outputs(self, spec: CudaSpecialization, config: Config) -> list[np.ndarray]:
        args, buffers = self._upload()
        out = []
        for buffer in [*buffers, *returned(spec.run(args))]:
            host = np.empty(buffer.shape, buffer.dtype.to_numpy())  # type: ignore[union-attr]
            buffer.copy_to(host)  # type: ignore[union-attr]
            out.append(host)
        return out

    def seconds(self, spec: CudaSpecialization, config: Config) -> float:
        args = self.device[0]
        once = driver.elapsed_s(lambda: spec.run(args))  # (also the warm-up)
        batch = max(1, int(BATCH_S / max(once, 1e-7)))

        def launches() -> None:
            for _ in range(batch):
                spec.run(args)

        return statistics.median(driver.elapsed_s(launches) / batch for _ in range(SAMPLES))


def tune_gpu(
    fn: KernelFunction,
    example: Mapping[str, ArgExample],
    *,
    budget_s: float = 60.0,
    strategy: str = "auto",
    seed: int = 0,
    progress: bool = True,
    bench: Bench | None = None,
    target: str | None = None,
) -> TuneReport:
    """Tune `fn`'s CUDA schedule params for one example call on the GPU (or on `bench`,
    under `target`, the database's target key); record the best config."""
    from kdsl.kernel import cuda

    budget = Budget(check_budget(budget_s, fn.name))
    names = fn.signature.names
    values = example_values(fn, example)
    if bench is None:
        driver.require()
    with budget.phase("setup"):
        made = make_arguments(dict(zip(names, values)), np.random.default_rng(seed))
        host = list(made.values())
        specs, bound = fn._specs(host, {})
        traced = fn.trace(specs)
        layout = fn.call_layout(specs, traced)
        space = fn.search_space(traced, cuda)
        reference = _on_the_cpu(fn, host)
        bench = bench or GpuBench(host)
    report = TuneReport(fn.name, shape_of(bound), space, budget_s=budget.seconds)
    search = make_strategy(strategy, space, seed=seed)
    times: dict[str, float | None] = {}  # PTX entry symbol → seconds (None: dropped)
    bar = progress_bar(report, progress, " (cuda)")
    try:
        # one config at a time: the default params first, whatever the budget; then each
        # only if the time left covers what the configs before took on average
        while configs := search.propose(1):
            first = not report.trials
            if not first and not budget.fitting(1, 0):
                break
            with budget.phase("default params" if first else "search"):
                start = budget.clock()
                trial = _trial(fn, traced, layout, configs[0], bench, reference, times)
                if trial.status not in ("same", "invalid"):
                    budget.measured(budget.clock() - start)
            observe(report, search, trial)
            bar.update(1)
    finally:
        bar.close()
    report.elapsed_s = budget.elapsed()
    report.phases = dict(budget.phases)
    record_best(report, tuning_key(fn, specs, traced, space, target or gpu_target_key()))
    return report


def tune_on(
    target: str,
    fn: KernelFunction,
    example: Mapping[str, ArgExample],
    *,
    jobs: int | None = None,
    **options: Any,
) -> TuneReport:
    """`tune` for target "cpu", `tune_gpu` for "cuda" (it compiles in this process: no
    `jobs`); `options` are theirs (budget_s, strategy, seed, progress)."""
    if target == "cuda":
        return tune_gpu(fn, example, **options)
    return tune(fn, example, jobs=jobs, **options)


def _trial(
    fn: KernelFunction,
    traced: object,
    layout: object,
    config: Config,
    bench: Bench,
    reference: list[np.ndarray],
    times: dict[str, float | None],
) -> Trial:
    """Compile, check and time one config."""
    try:
        code = fn.ptx_code(traced, config)  # type: ignore[arg-type]
    except ScheduleError as exc:
        return Trial(config, "invalid", detail=str(exc.args[0]))
    except Exception as exc:  # a candidate's failure, reported, never fatal
        return Trial(config, "compile-error", detail=f"{type(exc).__name__}: {exc}")
    if code.symbol in times:
        return Trial(config, "same", times[code.symbol])
    spec = CudaSpecialization(
        fn.name,
        traced,  # type: ignore[arg-type]
        code,
        layout.array_pos,  # type: ignore[attr-defined]
        layout.scalar_pos,  # type: ignore[attr-defined]
        layout.param_names,  # type: ignore[attr-defined]
    )
    times[code.symbol] = None
    try:
        wrong = compare(bench.outputs(spec, config), reference)
        if wrong:
            return Trial(config, "wrong", detail=wrong)
        seconds = bench.seconds(spec, config)
    except Exception as exc:
        return Trial(config, "error", detail=f"{type(exc).__name__}: {exc}")
    times[code.symbol] = seconds
    return Trial(config, "ok", seconds)


def _on_the_cpu(fn: KernelFunction, host: Sequence[object]) -> list[np.ndarray]:
    """Every array after a CPU call on copies of `host` (the arguments, then the
    results): the reference each GPU config must reproduce."""
    from kdsl.kernel import cpu

    args = [a.copy() if isinstance(a, np.ndarray) else a for a in host]
    results = returned(fn[cpu](*args))
    return [a for a in args if isinstance(a, np.ndarray)] + [np.asarray(r) for r in results]
