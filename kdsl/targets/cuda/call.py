"""Calling a compiled GPU kernel: the host's checks, results and temporaries allocated
by the caller's framework, the launches queued on the caller's stream (asynchronously,
as PyTorch and CuPy users expect), and device errors turned into the user's errors."""

from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kdsl.errors import BoundsError, KdslError, KernelArgumentError, ShapeError
from kdsl.ir.checks import describe_failed_check
from kdsl.ir.evaluate import compile_evaluator, evaluate
from kdsl.ir.nodes import BufferRole, Const, DimOf, Kernel, ScalarArg, Store
from kdsl.ir.visit import walk_expr, walk_stmts
from kdsl.targets.cpu.state import ErrorKind
from kdsl.targets.cuda import arrays as A
from kdsl.targets.cuda import driver
from kdsl.targets.cuda.backend import PtxCode
from kdsl.targets.cuda.plan import MAX_GRID, scratch_bytes
from kdsl.types import INDEX

BLOCKS_PER_SM = 32  # more iterations of a block-bound loop than this: blocks loop over them


@dataclass
class CudaSpecialization:
    """One compiled GPU version of a kernel, for one argument signature."""

    name: str
    ir: Kernel  # as traced
    code: PtxCode
    array_pos: tuple[int, ...]
    scalar_pos: tuple[int, ...]
    param_names: tuple[str, ...]
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def __post_init__(self) -> None:
        plan = self.code.plan
        # the compiled kernel's buffers: the schedule's accumulators and temporaries too
        self.buffers = {b.name: b for b in self.code.buffers}
        self.written = [
            n
            for n in sorted(
                {
                    s.buffer
                    for la in plan.launches
                    for s in walk_stmts(la.body)
                    if isinstance(s, Store)
                }
            )
            if self.buffers[n].role is BufferRole.PARAM
        ]
        self.device_checks = bool(self.code.sites.checks or self.code.sites.accesses)
        kinds = []
        for name, strided in self.code.params.arrays:
            kinds += ["Q"] + ["q"] * (self.buffers[name].ndim * (2 if strided else 1))
        scalars = {p.name: p for p in self.ir.params if not p.is_array}
        kinds += ["d" if scalars[n].dtype.is_float else "q" for n in self.code.params.scalars]
        self.format = "=" + "".join(kinds) + "QQ"
        self.count = len(kinds) + 2
        # the host's per-call arithmetic, each made one Python function
        self.checks = compile_evaluator([c.cond for c in plan.host_checks])
        made = [*self.ir.results, *plan.host_temps]
        self.made = [(n, self.buffers[n].dtype, self.buffers[n].ndim) for n in made]
        self.shapes = compile_evaluator([d for n in made for d in self.buffers[n].shape])
        sizes = []
        for launch in plan.launches:
            sizes += [e if e is not None else Const(1, INDEX) for e in launch.grid]
            sizes += [scratch_bytes(launch.scratch(p)) for p in ("block-scratch", "thread-scratch")]
        self.sizes = compile_evaluator(sizes)
        self.functions: dict[int, list[Any]] = {}  # device → entry per launch

    # ------------------------------------------------------------------ calls

    def run(self, args: Sequence[object], stream: object = None) -> object:
        """Queue the kernel's launches; `args` holds CUDA arrays (as DeviceArray or as the
        framework's objects) and scalars, in call order."""
        names = self.param_names
        arrays: dict[str, A.DeviceArray] = {}
        for i in self.array_pos:
            a = args[i]
            arrays[names[i]] = a if isinstance(a, A.DeviceArray) else A.device_array(a)  # type: ignore[assignment]
        scalars = {names[i]: args[i] for i in self.scalar_pos}
        device = self._device(arrays)
        driver.use_device(device)
        handle = (
            A.stream_handle(stream)
            if stream is not None
            else A.current_stream(list(arrays.values()), device)
        )
        shapes = {n: a.shape for n, a in arrays.items()}
        if not all(self.checks(shapes, scalars)):
            raise self._shape_error(shapes, scalars)
        self._check_writes(arrays)
        keep, results = self._allocate(arrays, shapes, scalars, device, handle)
        launches = self.code.plan.launches
        sizes = self.sizes(shapes, scalars)
        grids, scratch_need = [], 0
        limits = (driver.multiprocessors(device) * BLOCKS_PER_SM, *MAX_GRID[1:])
        for n, launch in enumerate(launches):
            g = sizes[5 * n : 5 * n + 3]
            grid = tuple(max(0, min(int(v), limits[a])) for a, v in enumerate(g))
            grids.append(grid)
            per_block, per_thread = sizes[5 * n + 3], sizes[5 * n + 4]
            blocks = grid[0] * grid[1] * grid[2]
            scratch_need = max(scratch_need, blocks * (per_block + launch.threads * per_thread))
        scratch = driver.DeviceBuffer(scratch_need, handle) if scratch_need else None
        errors = driver.DeviceBuffer(8, handle) if self.device_checks else None
        if errors is not None:
            errors.zero()
        keep += [scratch, errors]
        params = self._pack(arrays, scalars, scratch, errors)
        functions = self.functions.get(device) or self._load(device)
        for fn, launch, grid in zip(functions, launches, grids):
            if 0 not in grid:
                driver.launch(fn, grid, launch.block, handle, params)  # type: ignore[arg-type]
        if errors is not None:
            code = driver.read_word(errors.ptr, handle)
            if code:
                raise self.error(code, shapes, scalars)
        if not results:
            return None
        return results[0] if len(results) == 1 else tuple(results)

    def _load(self, device: int) -> list[Any]:
        module = driver.module(self.code.symbol, self.code.ptx, device)
        functions = [
            module.function(f"{self.code.symbol}_{la.index}") for la in self.code.plan.launches
        ]
        self.functions[device] = functions
        return functions

    def _allocate(
        self,
        arrays: dict[str, A.DeviceArray],
        shapes: dict[str, Any],
        scalars: dict[str, Any],
        device: int,
        stream: int,
    ) -> tuple[list[object], list[object]]:
        """Results (arrays of the caller's framework) and top-level temporaries."""
        dims = iter(self.shapes(shapes, scalars))
        framework = next(iter(arrays.values())).framework if arrays else "cai"
        keep: list[object] = []
        results: list[object] = []
        for k, (name, dtype, ndim) in enumerate(self.made):
            shape = tuple(max(0, int(next(dims))) for _ in range(ndim))
            shapes[name] = shape
            if k < len(self.ir.results):
                out = A.empty(framework, shape, dtype, device, stream)
                results.append(out)
                arrays[name] = A.device_array(out)  # type: ignore[assignment]
            else:
                memory = driver.DeviceBuffer(_size(shape) * dtype.itemsize, stream)
                keep.append(memory)
                arrays[name] = A.DeviceArray(memory.ptr, shape, (), dtype, device, False, "", None)
        return keep, results

    def _device(self, arrays: dict[str, A.DeviceArray]) -> int:
        devices = {a.device for a in arrays.values()}
        if len(devices) > 1:
            where = ", ".join(f"'{n}' on cuda:{a.device}" for n, a in arrays.items())
            raise KernelArgumentError(
                f"the arrays are on different GPUs ({where})",
                kernel=self.name,
                fix="move them to one device first (e.g. tensor.to('cuda:0'))",
            )
        return devices.pop() if devices else 0

    def _shape_error(self, shapes: dict[str, Any], scalars: dict[str, Any]) -> ShapeError:
        for check in self.code.plan.host_checks:
            if not evaluate(check.cond, shapes, scalars):
                values = {
                    e: evaluate(e, shapes, scalars)
                    for e in walk_expr(check.cond)
                    if isinstance(e, DimOf | ScalarArg)
                }
                return ShapeError(
                    describe_failed_check(check, values),
                    kernel=self.name,
                    loc=check.loc,
                    fix="pass arrays whose dimensions agree",
                )
        raise AssertionError("a host check failed and then passed")

    def _check_writes(self, arrays: dict[str, A.DeviceArray]) -> None:
        """Written parameters must be writeable and share no memory with other arrays."""
        for name in self.written:
            a = arrays[name]
            if a.readonly:
                raise KernelArgumentError(
                    f"argument '{name}' is read-only, but the kernel writes to it",
                    kernel=self.name,
                    fix="pass a writeable copy",
                )
            for other, b in arrays.items():
                if other != name and _overlap(a, b):
                    raise KernelArgumentError(
                        f"arguments '{name}' and '{other}' share memory, and the kernel "
                        f"writes '{name}'",
                        kernel=self.name,
                        fix=f"pass a copy of '{other}' (e.g. {other}.clone())",
                    )

    def _pack(
        self,
        arrays: dict[str, A.DeviceArray],
        scalars: dict[str, Any],
        scratch: driver.DeviceBuffer | None,
        errors: driver.DeviceBuffer | None,
    ) -> int:
        """The address of the argument pointers, in this thread's reusable buffers (the
        driver copies the values when the launch is queued)."""
        values: list[object] = []
        for name, strided in self.code.params.arrays:
            a = arrays[name]
            values.append(a.ptr)
            values += a.shape
            if strided:
                values += a.strides
        values += [scalars[n] for n in self.code.params.scalars]
        values += [scratch.ptr if scratch else 0, errors.ptr if errors else 0]
        local = self._local
        if not hasattr(local, "values"):
            local.values = ctypes.create_string_buffer(8 * self.count)
            base = ctypes.addressof(local.values)
            local.pointers = (ctypes.c_void_p * self.count)(
                *[base + 8 * k for k in range(self.count)]
            )
            local.address = ctypes.addressof(local.pointers)
        struct.pack_into(self.format, local.values, 0, *values)
        return int(local.address)

    # ----------------------------------------------------------------- errors

    def error(self, code: int, shapes: dict[str, Any], scalars: dict[str, Any]) -> KdslError:
        kind, index = ErrorKind(code >> 32), code & 0xFFFFFFFF
        if kind is ErrorKind.CHECK:
            check = self.code.sites.checks[index]
            values = {
                e: evaluate(e, shapes, scalars)
                for e in walk_expr(check.cond)
                if isinstance(e, DimOf | ScalarArg)
            }
            return BoundsError(
                describe_failed_check(check, values), kernel=self.name, loc=check.loc
            )
        buffer, loc = self.code.sites.accesses[index]
        return BoundsError(
            f"subscript out of bounds on '{buffer}'",
            kernel=self.name,
            loc=loc,
            fix="check the subscript against the array's shape",
        )


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _overlap(a: A.DeviceArray, b: A.DeviceArray) -> bool:
    def extent(x: A.DeviceArray) -> tuple[int, int] | None:
        if 0 in x.shape:
            return None
        lo = hi = x.ptr
        for n, s in zip(x.shape, x.strides or A._c_strides(x.shape, x.dtype.itemsize)):
            if s < 0:
                lo += (n - 1) * s
            else:
                hi += (n - 1) * s
        return lo, hi + x.dtype.itemsize

    ea, eb = extent(a), extent(b)
    return ea is not None and eb is not None and ea[0] < eb[1] and eb[0] < ea[1]
