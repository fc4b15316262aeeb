"""`@kd.kernel`: the user's function, its specializations, the call path and inspection."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdsl.arguments import Signature, fast_key, spec_of
from kdsl.config import CONFIG, dumps
from kdsl.errors import BoundsError, KdslError, KernelArgumentError, ShapeError
from kdsl.ir.checks import describe_failed_check
from kdsl.ir.evaluate import evaluate
from kdsl.ir.hashing import structural_hash
from kdsl.ir.nodes import CheckKind, DimOf, Kernel, ScalarArg
from kdsl.ir.passes import lower
from kdsl.ir.passes.expand import expand_schedule
from kdsl.ir.printer import format_kernel
from kdsl.ir.verify import verify
from kdsl.ir.visit import walk_expr
from kdsl.schedule.default import default_schedule
from kdsl.schedule.recipe import Schedule
from kdsl.targets.cpu.backend import CpuKernel, compile_kernel
from kdsl.targets.cpu.state import ErrorKind
from kdsl.targets.cpu.vector import vector_obstacle
from kdsl.targets.interp.interpreter import interpret
from kdsl.trace.tracer import ArgSpec, ArraySpec, ScalarSpec, trace


class Target:
    """Where a kernel runs: `kd.cpu` or `kd.cuda`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"kd.{self.name}"


cpu = Target("cpu")
cuda = Target("cuda")


class IRView:
    """Printable IR: text in a terminal, a <pre> block in a notebook."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def __str__(self) -> str:
        return format_kernel(self.kernel)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(str(self))}</pre>"

    @property
    def hash(self) -> str:
        return structural_hash(self.kernel)


@dataclass
class _Specialization:
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
                shapes, scalars = self._environment(args, results)
                values = {
                    e: evaluate(e, shapes, scalars)
                    for e in walk_expr(check.cond)
                    if isinstance(e, DimOf | ScalarArg)
                }
                what = describe_failed_check(check, values)
                cls = ShapeError if check.kind is CheckKind.SHAPE else BoundsError
                return cls(
                    what, kernel=self.name, loc=check.loc, fix="pass arrays whose dimensions agree"
                )
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


class KernelFunction:
    """A Python function compiled by kdsl on first call for each argument signature."""

    def __init__(
        self,
        fn: Callable[..., object],
        *,
        static_shapes: bool = False,
        checks: bool | None = None,
        strict_fp: bool = False,
        name: str | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.static_shapes = static_shapes
        self.checks = CONFIG.debug if checks is None else checks
        self.strict_fp = strict_fp
        self.signature = Signature.of(fn, self.name)
        self._fast: dict[tuple[object, ...], _Specialization] = {}
        self._by_spec: dict[tuple[ArgSpec, ...], _Specialization] = {}
        self._lock = threading.Lock()
        self._fast_ok = not self.signature.constexpr and not static_shapes
        self._stats = {"compilations": 0, "calls": 0}
        self._schedules: dict[str, Callable[[Schedule], object]] = {}

    def __repr__(self) -> str:
        return f"<kdsl kernel {self.signature}>"

    def schedule(self, target: Target = cpu) -> Callable[[Callable[[Schedule], object]], Any]:
        """Attach a schedule for `target`: `@kernel.schedule(kd.cpu) def _(s): ...`."""
        if not isinstance(target, Target):
            raise TypeError(f"{target!r} is not a kdsl target; use kd.cpu or kd.cuda")

        def attach(fn: Callable[[Schedule], object]) -> Callable[[Schedule], object]:
            with self._lock:
                self._schedules[target.name] = fn
                self._fast.clear()
                self._by_spec.clear()
            return fn

        return attach

    def scheduled(self, kernel: Kernel, target: Target = cpu) -> Schedule:
        """Apply this kernel's schedule for `target` (or the default one) to traced IR."""
        s = Schedule(
            lower(kernel),
            target=target.name,
            strict_fp=self.strict_fp,
            vector_check=vector_obstacle if target is cpu else None,
        )
        fn = self._schedules.get(target.name)
        if fn is None:
            default_schedule(s)
        else:
            fn(s)
        return s

    def _final_ir(self, kernel: Kernel) -> Kernel:
        final = expand_schedule(self.scheduled(kernel).kernel, contract=not self.strict_fp)
        if CONFIG.debug:
            verify(final, "scheduled")
        if dumps("schedule"):
            print(format_kernel(final))
        return final

    def __getitem__(self, target: Target) -> Callable[..., object]:
        if target is cpu:
            return self
        if target is cuda:
            raise KernelArgumentError(
                "the CUDA target is not available in this version of kdsl",
                kernel=self.name,
                fix=f"call {self.name}[kd.cpu](...) with host arrays",
            )
        raise TypeError(f"{target!r} is not a kdsl target; use kd.cpu or kd.cuda")

    def __call__(self, *args: object, **kwargs: object) -> object:
        self._stats["calls"] += 1
        try:
            if not kwargs and self._fast_ok and len(args) == len(self.signature.names):
                key = fast_key(args)
                if key is not None:
                    spec = self._fast.get(key)
                    if spec is not None:
                        return spec.run(args)
            spec, bound = self._specialize(args, kwargs)
            return spec.run(bound)
        except KdslError as err:  # the user's call is the last frame shown
            raise (err if CONFIG.debug else err.with_traceback(None)) from None

    # ----------------------------------------------------------- specialization

    def _specs(
        self, args: Sequence[object], kwargs: dict[str, object]
    ) -> tuple[tuple[ArgSpec, ...], list[object]]:
        bound = self.signature.bind(args, dict(kwargs))
        specs, values = [], []
        for name, value in zip(self.signature.names, bound):
            spec, passed = spec_of(name, value, self.signature, self.static_shapes)
            specs.append(spec)
            values.append(passed)
        return tuple(specs), values

    def _specialize(
        self, args: Sequence[object], kwargs: dict[str, object]
    ) -> tuple[_Specialization, list[object]]:
        specs, bound = self._specs(args, kwargs)
        spec = self._by_spec.get(specs)
        if spec is None:
            with self._lock:
                spec = self._by_spec.get(specs) or self._compile(specs)
                self._by_spec[specs] = spec
        if self._fast_ok and not kwargs:
            key = fast_key(args)
            if key is not None:
                self._fast[key] = spec
        return spec, bound

    def trace(self, specs: tuple[ArgSpec, ...]) -> Kernel:
        named = list(zip(self.signature.names, specs))
        kernel = trace(self.fn, self.name, named)
        if dumps("trace"):
            print(format_kernel(kernel))
        return kernel

    def _compile(self, specs: tuple[ArgSpec, ...]) -> _Specialization:
        kernel = self.trace(specs)
        compiled = compile_kernel(
            self._final_ir(kernel), checks=self.checks, strict_fp=self.strict_fp
        )
        self._stats["compilations"] += 1
        array_pos = tuple(n for n, s in enumerate(specs) if isinstance(s, ArraySpec))
        scalar_pos = tuple(n for n, s in enumerate(specs) if isinstance(s, ScalarSpec))
        buffers = {b.name: b for b in kernel.buffers}
        results = tuple((buffers[r].shape, buffers[r].dtype.to_numpy()) for r in kernel.results)
        return _Specialization(
            self.name, kernel, compiled, array_pos, scalar_pos, self.signature.names, results
        )

    # --------------------------------------------------------------- inspection

    def _spec_for(self, args: Sequence[object], kwargs: dict[str, object]) -> _Specialization:
        try:
            return self._specialize(args, kwargs)[0]
        except KdslError as err:
            raise (err if CONFIG.debug else err.with_traceback(None)) from None

    def _traced(
        self, args: Sequence[object], kwargs: dict[str, object]
    ) -> tuple[Kernel, list[object]]:
        try:
            specs, bound = self._specs(args, kwargs)
            return self.trace(specs), bound
        except KdslError as err:
            raise (err if CONFIG.debug else err.with_traceback(None)) from None

    def ir(self, *args: object, **kwargs: object) -> IRView:
        """The traced IR for these arguments (printable; shown as HTML in notebooks)."""
        return IRView(self._traced(args, kwargs)[0])

    def lowered(self, *args: object, **kwargs: object) -> IRView:
        """The IR after scheduling and lowering, as the target compiles it."""
        traced = self._traced(args, kwargs)[0]
        try:
            return IRView(self._final_ir(traced))
        except KdslError as err:
            raise (err if CONFIG.debug else err.with_traceback(None)) from None

    def schedule_of(self, *args: object, **kwargs: object) -> Schedule:
        """The schedule applied for these arguments: prints as steps, `.to_json()` saves it."""
        traced = self._traced(args, kwargs)[0]
        try:
            return self.scheduled(traced)
        except KdslError as err:
            raise (err if CONFIG.debug else err.with_traceback(None)) from None

    def llvm(self, *args: object, optimized: bool = True, **kwargs: object) -> str:
        """LLVM IR for these arguments (after LLVM's optimizations unless optimized=False)."""
        compiled = self._spec_for(args, kwargs).compiled
        return compiled.optimized_ir if optimized else compiled.llvm_ir

    def asm(self, *args: object, **kwargs: object) -> str:
        """The host assembly for these arguments."""
        return self._spec_for(args, kwargs).compiled.asm

    def interpret(self, *args: object, **kwargs: object) -> object:
        """Run the kernel in the reference interpreter (slow, exact): the oracle for tests."""
        traced, bound = self._traced(args, kwargs)
        kernel = lower(traced)
        named = {p.name: bound[self.signature.names.index(p.name)] for p in kernel.params}
        try:
            results = interpret(kernel, named)
        except KdslError as err:
            err = err.with_kernel(self.name)
            raise (err if CONFIG.debug else err.with_traceback(None)) from None
        if not results:
            return None
        return results[0] if len(results) == 1 else tuple(results)

    def stats(self) -> dict[str, object]:
        """Compilations, calls and specializations so far: makes recompiles visible."""
        return {
            **self._stats,
            "specializations": len(self._by_spec),
            "cache_hits": self._stats["calls"] - self._stats["compilations"],
        }


def kernel(fn: Callable[..., object] | None = None, **options: Any) -> Any:
    """Decorate a function to make it a kdsl kernel: `@kd.kernel` or `@kd.kernel(...)`.

    Options: static_shapes (bake shapes in), checks (bounds checks with the source line;
    default on under KDSL_DEBUG=1), strict_fp (forbid reassociating reductions), name.
    """
    if fn is None:
        return lambda f: KernelFunction(f, **options)
    return KernelFunction(fn, **options)
