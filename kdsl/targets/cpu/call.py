"""Calling one compiled specialization: arguments to the entry's order, results
allocated, error codes turned into the user's errors."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from kdsl.errors import BoundsError, KdslError, KernelArgumentError, SourceLoc
from kdsl.ir.checks import failed_check_error
from kdsl.ir.evaluate import evaluate
from kdsl.ir.nodes import Kernel, Store
from kdsl.ir.visit import walk_stmts
from kdsl.targets.cpu.backend import CpuKernel, compile_kernel
from kdsl.targets.cpu.overlap import Layout, one_view, share_memory
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
        # nothing to allocate: the call passes them straight through (`direct`).
        self.order = self.array_pos + self.scalar_pos
        self.direct = not self.results and self.order == tuple(range(len(self.param_names)))

    def run(self, args: Sequence[object]) -> object:
        if not self.results:  # (the calls with the least between Python and the kernel:
            # the arguments as given, or in the entry's order without the constexpr ones)
            call = args if self.direct else [args[i] for i in self.order]
            try:
                code = self.compiled.cfunc(*call)
            except ctypes.ArgumentError as exc:
                raise self._unpassable(exc) from None
            if code:
                self._raise_or_retry(code, args, call, [])
            return None
        results = [np.empty(self._shape(shape, args), dtype) for shape, dtype in self.results]
        call = [*[args[i] for i in self.array_pos], *results, *[args[i] for i in self.scalar_pos]]
        code = self._invoke(self.compiled, call)
        if code:
            self._raise_or_retry(code, args, call, results)
        return results[0] if len(results) == 1 else tuple(results)

    def _invoke(self, compiled: CpuKernel, call: Sequence[object]) -> int:
        try:
            return compiled.cfunc(*call)  # type: ignore[no-any-return]
        except ctypes.ArgumentError as exc:
            raise self._unpassable(exc) from None

    def _unpassable(self, exc: ctypes.ArgumentError) -> KdslError:
        return KdslError(f"a scalar argument can't be passed: {exc}", kernel=self.name)

    def _raise_or_retry(
        self, code: int, args: Sequence[object], call: Sequence[object], results: list[np.ndarray]
    ) -> None:
        """Raise the error that `code` reports. The entry refuses written arrays whose
        address ranges meet another's before doing anything; where they share no byte
        after all (the halves of a matrix's rows), the call runs without that check."""
        index = code & 0xFFFFFFFF
        if ErrorKind(code >> 32) is ErrorKind.ALIAS and index >> 16 != index & 0xFFFF:
            sharing = self._sharing(args)
            if sharing is not None:
                raise _alias_error(self.name, *sharing)
            code = self._invoke(self._disjoint, call)
        if code:
            raise self.error(code, args, results)

    def _sharing(self, args: Sequence[object]) -> tuple[str, str] | None:
        """A written array argument and another one that share memory, if any (but the
        same view of an array that the kernel may update in place)."""
        arrays = {self.param_names[i]: args[i] for i in self.array_pos}
        layouts = {n: Layout.of(a) for n, a in arrays.items()}  # type: ignore[arg-type]
        for w in sorted(self._written & layouts.keys()):
            for other, layout in layouts.items():
                if other == w or ((w, other) in self._in_place and one_view(layouts[w], layout)):
                    continue
                if share_memory(layouts[w], layout):
                    return w, other
        return None

    @functools.cached_property
    def _in_place(self) -> frozenset[tuple[str, str]]:
        """The pairs the lowering found (Kernel.in_place), which the entry's check lets
        through as well."""
        return frozenset(self.compiled.kernel.in_place)

    @functools.cached_property
    def _written(self) -> set[str]:
        return {s.buffer for s in walk_stmts(self.ir.body) if isinstance(s, Store)}

    @functools.cached_property
    def _disjoint(self) -> CpuKernel:
        """This kernel compiled without the entry's check of overlapping arguments."""
        scheduled = replace(self.compiled.kernel, disjoint=True)
        return compile_kernel(scheduled, self.compiled.checks, self.compiled.strict_fp)

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
                return _alias_error(self.name, arrays[index >> 16], arrays[index & 0xFFFF])
            case ErrorKind.BOUNDS:
                buffer, loc = self.compiled.sites.accesses[index]
                return out_of_bounds(self.name, buffer, loc, self._environment(args, results)[0])
        return KdslError(
            "out of memory for the kernel's temporaries: the arrays it allocates (kd.empty, "
            "kd.zeros) and the copies its schedule makes (s.cache, s.rfactor) don't fit at "
            "these sizes",
            kernel=self.name,
            fix="check their sizes: a large s.cache block pads each copy to whole blocks; "
            "or call the kernel on smaller arrays",
        )


def _alias_error(kernel: str, written: str, other: str) -> KernelArgumentError:
    if written == other:
        return overlaps_itself_error(kernel, written)
    return KernelArgumentError(
        f"arguments '{written}' and '{other}' share memory, and the kernel writes '{written}'",
        kernel=kernel,
        fix=f"pass a copy: np.copy({other})",
    )


def overlaps_itself_error(kernel: str, name: str) -> KernelArgumentError:
    return KernelArgumentError(
        f"argument '{name}' overlaps itself (two of its elements share memory: a stride "
        "of 0, or as_strided rows that meet), and the kernel writes it",
        kernel=kernel,
        fix=f"write into an array whose elements are apart (e.g. np.empty({name}.shape)), "
        "then copy or reduce it as you meant",
    )


def out_of_bounds(
    kernel: str, buffer: str, loc: SourceLoc | None, shapes: Mapping[str, tuple[int, ...]]
) -> BoundsError:
    """A subscript checked where it ran fell outside its array (an argument's, of the
    shape in `shapes`, or a temporary). A buffer that a schedule step made (`x.c`, the
    copy of `x`, checked against x's shape; `t.1`) is named by the user's array it
    stands for."""
    name = buffer.split(".")[0]  # (a user's name has no dot)
    shape = shapes.get(buffer, shapes.get(name))
    of = f"'{name}'" + ("" if shape is None else f" of shape {tuple(shape)}")
    return BoundsError(
        f"a subscript of {of} fell outside it",
        kernel=kernel,
        loc=loc,
        fix="keep the subscript inside the array's shape, or guard it with kd.when / kd.where "
        "(kernel.interpret(...) names the subscript's values)",
    )
