"""Tuned calls: the schedule params of a call come from the tuning database, per shape
(`TunedDispatch` on the CPU, `CudaDispatch` on a GPU).

A kernel signature with tuning results (or `@kd.kernel(autotune=...)`) is served by a
`TunedDispatch`: each new shape finds its nearest tuned shape once (exact first), and
each distinct config is compiled (or loaded from the object cache) once; later calls of
a shape already seen cost one dict lookup.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from kdsl.autotune import registry
from kdsl.autotune.database import Entry, nearest
from kdsl.autotune.gpu import gpu_target_key
from kdsl.autotune.keys import (
    Shape,
    format_shape,
    kernel_identity,
    shape_of,
    signature_key,
    target_key,
)
from kdsl.autotune.strategies import config_key
from kdsl.autotune.tuner import example_of, tune
from kdsl.errors import ScheduleError
from kdsl.ir.nodes import Kernel
from kdsl.targets.cpu.call import CallLayout, Specialization
from kdsl.targets.cuda.call import CudaSpecialization
from kdsl.trace.tracer import ArgSpec

if TYPE_CHECKING:
    from kdsl.kernel import KernelFunction

_Built = TypeVar("_Built")


class TunedDispatch:
    """The calls of one kernel signature whose schedule params are looked up by shape."""

    def __init__(
        self,
        fn: KernelFunction,
        traced: Kernel,
        layout: CallLayout,
        key: tuple[str, str, str],
    ) -> None:
        self.fn, self.traced, self.layout, self.key = fn, traced, layout, key
        self._by_shape: dict[Shape, tuple[dict[str, object], Specialization]] = {}
        self._variants: dict[tuple[object, ...], Specialization] = {}

    @classmethod
    def find(
        cls, fn: KernelFunction, specs: tuple[ArgSpec, ...], traced: Kernel, layout: CallLayout
    ) -> TunedDispatch | None:
        """A dispatcher when this signature has tuning results or may make them; else None
        (always for a schedule without params: there is nothing to look up)."""
        space = fn.search_space(traced)
        if not space:
            return None
        key = (
            kernel_identity(traced, space),
            target_key(),
            signature_key(fn.signature.names, specs),
        )
        if registry.lookup(*key) or fn.autotune_budget:
            return cls(fn, traced, layout, key)
        return None

    def run(self, args: Sequence[object]) -> object:
        return self.variant(args).run(args)

    def variant(self, args: Sequence[object]) -> Specialization:
        return self._for_shape(args)[1]

    def config(self, args: Sequence[object]) -> dict[str, object]:
        return self._for_shape(args)[0]

    def _for_shape(self, args: Sequence[object]) -> tuple[dict[str, object], Specialization]:
        shape = shape_of(args)
        found = self._by_shape.get(shape)
        if found is None:
            with self.fn._lock:
                found = self._by_shape.get(shape) or self._choose(shape, args)
                self._by_shape[shape] = found
        return found

    def _choose(
        self, shape: Shape, args: Sequence[object]
    ) -> tuple[dict[str, object], Specialization]:
        entry = nearest(registry.lookup(*self.key), shape)
        if self.fn.autotune_budget and (entry is None or entry.shape != shape):
            # Not `fn.autotune`: it drops the kernel's specializations, this one included,
            # so the next call would trace and compile again.
            example = example_of(self.fn.signature.names, tuple(args))
            tune(self.fn, example, budget_s=self.fn.autotune_budget, progress=False)
        config = _tuned_config(self.fn, registry.lookup(*self.key), shape, "")
        known = self._variants.get(config_key(config))
        if known is not None:
            return config, known

        def build(c: dict[str, object]) -> Specialization:
            return self.fn.build(self.traced, self.layout, c)

        config, spec = _build_or_default(self.fn, build, config, shape, "kdsl autotune")
        self._variants[config_key(config)] = spec
        return config, spec


def _tuned_config(
    fn: KernelFunction, entries: list[Entry], shape: Shape, target: str
) -> dict[str, object]:
    """The config of the tuned shape nearest `shape` ({}: none), noted in `fn.tuning`."""
    entry = nearest(entries, shape)
    if entry is None:
        config, source = {}, "untuned (default params)"
    elif entry.shape == shape:
        config, source = entry.config, f"tuned{target}"
    else:
        config, source = entry.config, f"nearest tuned shape {format_shape(entry.shape)}{target}"
    fn.tuning[format_shape(shape)] = source
    return config


def _build_or_default(
    fn: KernelFunction,
    build: Callable[[dict[str, object]], _Built],
    config: dict[str, object],
    shape: Shape,
    command: str,
) -> tuple[dict[str, object], _Built]:
    """`build(config)`, or the default params' build (with a warning) when the tuned
    params no longer apply to the schedule."""
    try:
        return config, build(config)
    except ScheduleError as exc:
        warnings.warn(
            f"kernel '{fn.name}': the tuned params {config} no longer apply "
            f"({exc.args[0] if exc.args else exc}); using the default params. "
            f"Tune again with `{command}`.",
            RuntimeWarning,
            stacklevel=3,
        )
        fn.tuning[format_shape(shape)] = "stale tuning ignored (default params)"
        return {}, build({})


class CudaDispatch:
    """The GPU calls of one kernel signature with tuning results for this GPU: each
    shape's config is the nearest tuned shape's (looked up once per shape), each
    distinct config compiled once; a call then costs a shape tuple and a dict lookup
    more than an untuned one."""

    def __init__(
        self, fn: KernelFunction, traced: Kernel, layout: CallLayout, entries: list[Entry]
    ) -> None:
        self.fn, self.traced, self.layout, self.entries = fn, traced, layout, entries
        self._by_shape: dict[Shape, tuple[dict[str, object], CudaSpecialization]] = {}
        self._variants: dict[tuple[object, ...], CudaSpecialization] = {}

    @classmethod
    def find(
        cls, fn: KernelFunction, specs: tuple[ArgSpec, ...], traced: Kernel, layout: CallLayout
    ) -> CudaDispatch | None:
        """A dispatcher when this signature has tuning results for the current GPU."""
        from kdsl.kernel import cuda

        space = fn.search_space(traced, cuda)
        if not space:
            return None
        key = (
            kernel_identity(traced, space),
            gpu_target_key(),
            signature_key(fn.signature.names, specs),
        )
        entries = registry.lookup(*key)
        return cls(fn, traced, layout, entries) if entries else None

    def run(self, args: Sequence[object], stream: object = None) -> object:
        return self._for_shape(args)[1].run(args, stream)

    def run_tensors(self, args: Sequence[Any]) -> object:
        return self._for_shape(args)[1].run_tensors(args)

    def config(self, args: Sequence[object]) -> dict[str, object]:
        return self._for_shape(args)[0]

    def _for_shape(self, args: Sequence[Any]) -> tuple[dict[str, object], CudaSpecialization]:
        shape = tuple(tuple(args[i].shape) for i in self.layout.array_pos)
        found = self._by_shape.get(shape)
        if found is None:
            with self.fn._lock:
                found = self._by_shape.get(shape) or self._choose(shape)
                self._by_shape[shape] = found
        return found

    def _choose(self, shape: Shape) -> tuple[dict[str, object], CudaSpecialization]:
        config = _tuned_config(self.fn, self.entries, shape, " (cuda)")
        known = self._variants.get(config_key(config))
        if known is not None:
            return config, known

        def build(c: dict[str, object]) -> CudaSpecialization:
            return self.fn.build_cuda(self.traced, self.layout, c)

        command = "kdsl autotune --target cuda"
        config, spec = _build_or_default(self.fn, build, config, shape, command)
        self._variants[config_key(config)] = spec
        return config, spec
