"""Calling one compiled specialization: arguments to the entry's order, results
allocated, error codes turned into the user's errors."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdsl.errors import BoundsError, KdslError, KernelArgumentError
from kdsl.ir.checks import failed_check_error
from kdsl.ir.evaluate import evaluate
from kdsl.ir.nodes import Kernel
from kdsl.targets.cpu.backend import CpuKernel
from kdsl.targets.cpu.state import ErrorKind


@dataclass(frozen=True)
class CallLayout:
    """How call arguments map to the compiled entry: which are arrays and which scalars
    (by call position), the parameters' names, and the arrays the kernel returns."""

    array_pos: tuple[int, ...]
    scalar_pos: tuple[int, ...]
    param_names: tuple[str, ...]
    results: tuple[tuple[tuple[Any, ...], np.dtype], ...]  # type: ignore[type-arg]

    def specialization(self, name: str, traced: Kernel, compiled: CpuKernel) -> Specialization:
        return Specialization(
            name,
            traced,
            compiled,
            self.array_pos,
            self.scalar_pos,
            self.param_names,
            self.results,
        )


@dataclass
class Specialization:
    """One compiled version of a kernel, for one argument signature."""

    name: str
    ir: Kernel
    compiled: CpuKernel
    array_pos: tuple[int, ...]  # which call arguments are arrays, in parameter order
    scalar_pos: tuple[int, ...]
    param_names: tuple[str, ...]  # names of the non-constexpr parameters, by call position
    results: tuple[tuple[tuple[Any, ...], np.dtype], ...] = field(default=())

    def __post_init__(self) -> None:
        # Arguments already in the compiled function's order (arrays, then scalars) and
        # nothing to allocate: the call passes them straight through.
        order = self.array_pos + self.scalar_pos
        self.direct = not self.results and order == tuple(range(len(self.param_names)))

    def run(self, args: Sequence[object]) -> object:
        if self.direct:
            try:
                code = self.compiled.cfunc(*args)
            except ctypes.ArgumentError as exc:
                raise KdslError(
                    f"a scalar argument can't be passed: {exc}", kernel=self.name
                ) from None
            if code:
                raise self.error(code, args, ())
            return None
        results = [np.empty(self._shape(shape, args), dtype) for shape, dtype in self.results]
        try:
            code = self.compiled.cfunc(
                *[args[i] for i in self.array_pos], *results, *[args[i] for i in self.scalar_pos]
            )
        except ctypes.ArgumentError as exc:
            raise KdslError(f"a scalar argument can't be passed: {exc}", kernel=self.name) from None
        if code:
            raise self.error(code, args, results)
        if not results:
            return None
        return results[0] if len(results) == 1 else tuple(results)

    def _shape(self, shape: tuple[Any, ...], args: Sequence[object]) -> tuple[int, ...]:
        shapes, scalars = self._environment(args)
        return tuple(max(0, int(evaluate(d, shapes, scalars))) for d in shape)

    def _environment(
        self, args: Sequence[object], results: Sequence[np.ndarray] = ()
    ) -> tuple[dict, dict]:  # type: ignore[type-arg]
        names = self.param_names
        shapes = {names[i]: args[i].shape for i in self.array_pos}  # type: ignore[attr-defined]
        shapes.update({r: a.shape for r, a in zip(self.ir.results, results)})
        scalars = {names[i]: args[i] for i in self.scalar_pos}
        return shapes, scalars

    def error(self, code: int, args: Sequence[object], results: Sequence[np.ndarray]) -> KdslError:
        kind, index = ErrorKind(code >> 32), code & 0xFFFFFFFF
        arrays = [self.param_names[i] for i in self.array_pos]
        match kind:
            case ErrorKind.CHECK:
                check = self.compiled.sites.checks[index]
                return failed_check_error(check, *self._environment(args, results), self.name)
            case ErrorKind.READONLY:
                return KernelArgumentError(
                    f"argument '{arrays[index]}' is read-only, but the kernel writes to it",
                    kernel=self.name,
                    fix="pass a writeable array (e.g. np.array(x) makes a writeable copy)",
                )
            case ErrorKind.ALIAS:
                written, other = arrays[index >> 16], arrays[index & 0xFFFF]
                return KernelArgumentError(
                    f"arguments '{written}' and '{other}' share memory, and the kernel "
                    f"writes '{written}'",
                    kernel=self.name,
                    fix=f"pass a copy: np.copy({other})",
                )
            case ErrorKind.BOUNDS:
                buffer, loc = self.compiled.sites.accesses[index]
                return BoundsError(
                    f"subscript out of bounds on '{buffer}'",
                    kernel=self.name,
                    loc=loc,
                    fix="check the subscript against the array's shape",
                )
        return KdslError("out of memory for the kernel's temporaries", kernel=self.name)
