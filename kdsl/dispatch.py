"""Tuned calls: the schedule params of a call come from the tuning database, per shape.

A kernel signature with tuning results (or `@kd.kernel(autotune=...)`) is served by a
`TunedDispatch`: each new shape finds its nearest tuned shape once (exact first), and
each distinct config is compiled (or loaded from the object cache) once; later calls of
a shape already seen cost one dict lookup.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kdsl.autotune import registry
from kdsl.autotune.database import nearest
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
from kdsl.trace.tracer import ArgSpec

if TYPE_CHECKING:
    from kdsl.kernel import KernelFunction


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
            entry = nearest(registry.lookup(*self.key), shape)
        if entry is None:
            config, source = {}, "untuned (default params)"
        elif entry.shape == shape:
            config, source = entry.config, "tuned"
        else:
            config, source = entry.config, f"nearest tuned shape {format_shape(entry.shape)}"
        self.fn.tuning[format_shape(shape)] = source
        spec = self._variants.get(config_key(config))
        if spec is None:
            try:
                spec = self.fn.build(self.traced, self.layout, config)
            except ScheduleError as exc:
                warnings.warn(
                    f"kernel '{self.fn.name}': the tuned params {config} no longer apply "
                    f"({exc.args[0] if exc.args else exc}); using the default params. "
                    "Tune again with `kdsl autotune`.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                config = {}
                self.fn.tuning[format_shape(shape)] = "stale tuning ignored (default params)"
                spec = self.fn.build(self.traced, self.layout, config)
            self._variants[config_key(config)] = spec
        return config, spec
