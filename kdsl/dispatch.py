"""Tuned calls: the schedule params of a call come from the tuning database, per shape
(`TunedDispatch` on the CPU, `CudaDispatch` on a GPU).

A kernel signature with tuning results (or `@kd.kernel(autotune=...)`) is served by a
`TunedDispatch`: each new shape finds its nearest tuned shape once per thread count
(`kd.set_num_threads`; the exact shape and count first), and each distinct config is
compiled (or loaded from the object cache) once; later calls of a shape already seen
cost a look at the thread count and one dict lookup.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kdsl.autotune import registry, shipped
from kdsl.autotune.database import Entry, nearest, tuned_for
from kdsl.autotune.gpu import gpu_target_key
from kdsl.autotune.keys import Shape, format_shape, shape_of, target_key, tuning_key
from kdsl.autotune.strategies import config_key
from kdsl.autotune.tuner import example_of, tune
from kdsl.config import user_stacklevel
from kdsl.errors import ScheduleError
from kdsl.ir.nodes import Kernel
from kdsl.targets.cpu import runtime
from kdsl.targets.cpu.call import CallLayout, Specialization
from kdsl.targets.cuda.call import CudaSpecialization
from kdsl.trace.tracer import ArgSpec

if TYPE_CHECKING:
    from kdsl.kernel import KernelFunction

_Built = TypeVar("_Built")


class _ByShape(Generic[_Built]):
    """What both dispatchers do: a shape's config chosen once per thread count (the
    nearest tuned shape's), each distinct config built once (the default params' instead,
    with a warning, when tuned ones no longer apply to the schedule)."""

    target = ""  # noted after "tuned" in `fn.tuning`
    command = "kdsl autotune"  # what a stale tuning's warning says to run

    def __init__(
        self, fn: KernelFunction, traced: Kernel, layout: CallLayout, key: tuple[str, str, str]
    ) -> None:
        self.fn, self.traced, self.layout, self.key = fn, traced, layout, key
        # the choices per thread count, and the current count's (one attribute: a thread
        # that reads it never sees one count's choices under another's)
        self._by_count: dict[int, dict[Shape, tuple[dict[str, object], _Built]]] = {}
        self._current: tuple[int, dict[Shape, tuple[dict[str, object], _Built]]] = (-1, {})
        self._variants: dict[tuple[object, ...], _Built] = {}

    def _for_shape(
        self, shape: Shape, args: Sequence[object], calling: bool = False
    ) -> tuple[dict[str, object], _Built]:
        """The params and code for this shape: chosen (and built) on first meeting it, in
        a call's slow path where `calling` (a compile counts there, for stats())."""
        threads = self._threads()
        count, by_shape = self._current
        if count != threads:
            with self.fn._lock:
                by_shape = self._by_count.setdefault(threads, {})
                self._current = (threads, by_shape)
        found = by_shape.get(shape)
        if found is None:
            scope = self.fn._stats.slow_path() if calling else contextlib.nullcontext()
            with scope, self.fn._lock:
                found = by_shape.get(shape) or self._choose(shape, threads, args)
                by_shape[shape] = found
        return found

    def _threads(self) -> int:
        """The thread count tuned rows are chosen for; 0 where it has no say."""
        return 0

    def _entries(self, shape: Shape, threads: int, args: Sequence[object]) -> list[Entry]:
        return registry.lookup(*self.key)

    def _build(self, config: dict[str, object]) -> _Built:
        raise NotImplementedError

    def _choose(
        self, shape: Shape, threads: int, args: Sequence[object]
    ) -> tuple[dict[str, object], _Built]:
        entry = nearest(self._entries(shape, threads, args), shape, threads)
        if entry is None:
            config, source = {}, "untuned (default params)"
        else:
            where = self.target + (" (shipped with kdsl)" if entry.source == shipped.SOURCE else "")
            if entry.threads not in (0, threads):
                where = f" on {entry.threads} thread{'s' * (entry.threads > 1)}{where}"
            if tuned_for(entry, shape, threads):
                config, source = entry.config, f"tuned{where}"
            else:
                nearby = format_shape(entry.shape)
                config, source = entry.config, f"nearest tuned shape {nearby}{where}"
        self.fn.tuning[format_shape(shape)] = source
        known = self._variants.get(config_key(config))
        if known is not None:
            return config, known
        try:
            spec = self._build(config)
        except ScheduleError as exc:
            warnings.warn(
                f"kernel '{self.fn.name}': the tuned params {config} no longer apply "
                f"({exc.args[0] if exc.args else exc}); using the default params. "
                f"Tune again with `{self.command}`.",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
            self.fn.tuning[format_shape(shape)] = "stale tuning ignored (default params)"
            config = {}
            spec = self._build(config)
        self._variants[config_key(config)] = spec
        return config, spec


def _tuning_key(
    fn: KernelFunction, specs: tuple[ArgSpec, ...], traced: Kernel, on_gpu: bool
) -> tuple[str, str, str] | None:
    """What the tuning database files this signature's results under, on the CPU or the
    GPU; None for a schedule without params (there is nothing to look up)."""
    from kdsl.kernel import cpu, cuda

    space = fn.search_space(traced, cuda if on_gpu else cpu)
    if not space:
        return None
    target = gpu_target_key() if on_gpu else target_key()
    return tuning_key(fn, specs, traced, space, target)


class TunedDispatch(_ByShape[Specialization]):
    """The calls of one kernel signature whose schedule params are looked up by shape."""

    @classmethod
    def find(
        cls, fn: KernelFunction, specs: tuple[ArgSpec, ...], traced: Kernel, layout: CallLayout
    ) -> TunedDispatch | None:
        """A dispatcher when this signature has tuning results or may make them; else None
        (always for a schedule without params: there is nothing to look up)."""
        key = _tuning_key(fn, specs, traced, on_gpu=False)
        if key is not None and (registry.lookup(*key) or fn.autotune_budget):
            return cls(fn, traced, layout, key)
        if key is not None:  # results made for this kernel's earlier code or params?
            registry.warn_if_stale(fn.name, key, cls.command)
        return None

    def run(self, args: Sequence[object]) -> object:
        return self._for_shape(shape_of(args), args, calling=True)[1].run(args)

    def variant(self, args: Sequence[object]) -> Specialization:
        return self._for_shape(shape_of(args), args)[1]

    def config(self, args: Sequence[object]) -> dict[str, object]:
        return self._for_shape(shape_of(args), args)[0]

    def _threads(self) -> int:
        return runtime.get_num_threads()

    def _entries(self, shape: Shape, threads: int, args: Sequence[object]) -> list[Entry]:
        entry = nearest(registry.lookup(*self.key), shape, threads)
        if self.fn.autotune_budget and (entry is None or not tuned_for(entry, shape, threads)):
            # Not `fn.autotune`: it drops the kernel's specializations, this one included,
            # so the next call would trace and compile again.
            example = example_of(self.fn.signature.names, tuple(args))
            tune(self.fn, example, budget_s=self.fn.autotune_budget, progress=False)
        return registry.lookup(*self.key)

    def _build(self, config: dict[str, object]) -> Specialization:
        return self.fn.build(self.traced, self.layout, config)


class CudaDispatch(_ByShape[CudaSpecialization]):
    """The GPU calls of one kernel signature with tuning results for this GPU: each
    shape's config is the nearest tuned shape's (looked up once per shape), each
    distinct config compiled once; a call then costs a shape tuple and a dict lookup
    more than an untuned one."""

    target = " (cuda)"
    command = "kdsl autotune --target cuda"

    @classmethod
    def find(
        cls, fn: KernelFunction, specs: tuple[ArgSpec, ...], traced: Kernel, layout: CallLayout
    ) -> CudaDispatch | None:
        """A dispatcher when this signature has tuning results for the current GPU."""
        key = _tuning_key(fn, specs, traced, on_gpu=True)
        if key is not None and registry.lookup(*key):
            return cls(fn, traced, layout, key)
        if key is not None:
            registry.warn_if_stale(fn.name, key, cls.command)
        return None

    def run(self, args: Sequence[object], stream: object = None) -> object:
        return self._for_shape(self._shape(args), args, calling=True)[1].run(args, stream)

    def run_tensors(self, args: Sequence[Any]) -> object:
        return self._for_shape(self._shape(args), args, calling=True)[1].run_tensors(args)

    def config(self, args: Sequence[object]) -> dict[str, object]:
        return self._for_shape(self._shape(args), args)[0]

    def _shape(self, args: Sequence[Any]) -> Shape:
        return tuple(tuple(args[i].shape) for i in self.layout.array_pos)

    def _build(self, config: dict[str, object]) -> CudaSpecialization:
        return self.fn.build_cuda(self.traced, self.layout, config)
