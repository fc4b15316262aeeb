"""Calling a compiled GPU kernel: the host's checks, results and temporaries allocated
by the caller's framework, the launches queued on the caller's stream (asynchronously,
as PyTorch and CuPy users expect), and device errors turned into the user's errors."""

from __future__ import annotations

import ctypes
import functools
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kdsl.errors import KdslError, KernelArgumentError
from kdsl.ir.checks import failed_check_error
from kdsl.ir.evaluate import compile_evaluator, evaluate
from kdsl.ir.nodes import BufferRole, Const, Kernel, Store
from kdsl.ir.passes.in_place import in_place_pairs
from kdsl.ir.visit import walk_stmts
from kdsl.targets.cpu.call import out_of_bounds, overlaps_itself_error
from kdsl.targets.cpu.overlap import Layout, one_view, overlaps_itself, share_memory
from kdsl.targets.cpu.state import ErrorKind
from kdsl.targets.cuda import arrays as A
from kdsl.targets.cuda import driver
from kdsl.targets.cuda.backend import PtxCode
from kdsl.targets.cuda.plan import MAX_GRID, scratch_bytes
from kdsl.types import INDEX

SCRATCH = ("block-scratch", "thread-scratch")  # temporaries in global memory, per block/thread
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
            sizes += [scratch_bytes(launch.scratch(p)) for p in SCRATCH]
        self.sizes = compile_evaluator(sizes)
        self.entries: dict[int, list[tuple[Any, tuple[int, int, int], int]]] = {}  # by device
        # the lean path (run_tensors): each array argument's position, name, item size
        # and whether its strides are passed; usable when every entry argument is the
        # caller's, the call allocates nothing and the device checks nothing (then a
        # call is a few µs of Python)
        position = {n: k for k, n in enumerate(self.param_names)}
        entry = [n for n, _ in self.code.params.arrays] + list(self.code.params.scalars)
        scratch = any(la.scratch(p) for la in plan.launches for p in SCRATCH)
        self.lean = all(n in position for n in entry) and not (
            self.made or scratch or self.device_checks
        )
        self.slots = [
            (position[n], n, self.buffers[n].dtype.itemsize, strided)
            for n, strided in self.code.params.arrays
            if self.lean
        ]
        self.scalar_slots = [position[n] for n in self.code.params.scalars if self.lean]
        self.lean_grids: dict[tuple[object, ...], list[tuple[int, int, int]]] = {}

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
            raise self._host_check_error(shapes, scalars)
        self._check_writes(arrays)
        keep, results = self._allocate(arrays, shapes, scalars, device, handle)
        grids, scratch_need = self._grids(shapes, scalars, device)
        scratch = driver.DeviceBuffer(scratch_need, handle) if scratch_need else None
        errors = driver.DeviceBuffer(8, handle) if self.device_checks else None
        if errors is not None:
            errors.zero()
        keep += [scratch, errors]
        words: list[object] = []
        for name, strided in self.code.params.arrays:
            a = arrays[name]
            words.append(a.ptr)
            words += a.shape
            if strided:
                words += a.strides
        words += [scalars[n] for n in self.code.params.scalars]
        words += [scratch.ptr if scratch else 0, errors.ptr if errors else 0]
        self._launch(words, grids, device, handle)
        if errors is not None:
            code = driver.read_word(errors.ptr, handle)
            if code:
                raise self.error(code, shapes, scalars)
        if not results:
            return None
        return results[0] if len(results) == 1 else tuple(results)

    def run_tensors(self, args: Sequence[Any]) -> object:
        """`run` for PyTorch CUDA tensors that the kernel's fast key matched (dtypes and
        ranks known): read straight off the tensors, the host checks and grids computed
        once per shape; anything unusual (a kernel that allocates or checks on the
        device, arrays on two devices, a failed check, overlapping arguments) takes
        `run`, which says what is wrong."""
        if not self.lean:
            return self.run(args)
        words: list[object] = []
        spans = []
        device = args[self.slots[0][0]].get_device() if self.slots else 0
        key: list[object] = [device]
        for pos, name, size, strided in self.slots:
            t = args[pos]
            if t.get_device() != device:
                return self.run(args)
            shape, ptr = t.shape, t.data_ptr()
            key.append(shape)
            words.append(ptr)
            words += shape
            if strided:
                strides = [n * size for n in t.stride()]
                words += strides
                spans.append((name, *_span(ptr, shape, strides, size)))
                if name in self.written and overlaps_itself(Layout(ptr, shape, strides, size)):
                    return self.run(args)  # (which refuses it)
            else:
                spans.append((name, ptr, ptr + _size(shape) * size))
        scalars = [args[i] for i in self.scalar_slots]
        key += [args[i] for i in self.scalar_pos]  # (host checks may read any of them)
        grids = self.lean_grids.get(shape_key := tuple(key))
        if grids is None:
            grids = self._lean_grids(args, device)
            if grids is None:  # a host check failed
                return self.run(args)
            if len(self.lean_grids) > 64:
                self.lean_grids.clear()
            self.lean_grids[shape_key] = grids
        if any(n in self.written and _meets(spans, n) is not None for n, _, _ in spans):
            return self.run(args)  # (which says whether they share memory)
        driver.use_device(device)
        self._launch([*words, *scalars, 0, 0], grids, device, A.torch_stream(device))
        return None

    def _lean_grids(self, args: Sequence[Any], device: int) -> list[tuple[int, int, int]] | None:
        """The grids of a call on these shapes and scalars, or None when a host check
        fails on them."""
        shapes = {name: args[pos].shape for pos, name, _, _ in self.slots}
        scalars = {self.param_names[i]: args[i] for i in self.scalar_pos}
        if not all(self.checks(shapes, scalars)):
            return None
        return self._grids(shapes, scalars, device)[0]

    def _grids(
        self, shapes: dict[str, Any], scalars: dict[str, Any], device: int
    ) -> tuple[list[tuple[int, int, int]], int]:
        """Each launch's grid (block-bound loops longer than the cap loop over blocks),
        and the scratch memory the launches need at most."""
        sizes = self.sizes(shapes, scalars)
        limits = (driver.multiprocessors(device) * BLOCKS_PER_SM, *MAX_GRID[1:])
        grids, scratch_need = [], 0
        for n, launch in enumerate(self.code.plan.launches):
            g = sizes[5 * n : 5 * n + 3]
            grid = (
                max(0, min(int(g[0]), limits[0])),
                max(0, min(int(g[1]), limits[1])),
                max(0, min(int(g[2]), limits[2])),
            )
            grids.append(grid)
            per_block, per_thread = sizes[5 * n + 3], sizes[5 * n + 4]
            blocks = grid[0] * grid[1] * grid[2]
            scratch_need = max(scratch_need, blocks * (per_block + launch.threads * per_thread))
        return grids, scratch_need

    def _launch(
        self, words: list[object], grids: list[tuple[int, int, int]], device: int, stream: int
    ) -> None:
        """Queue each launch; `words` are the entry's arguments: each array's pointer,
        shape and (if passed) strides, the scalars, the scratch memory and error word."""
        params = self._pack(words)
        entries = self.entries.get(device) or self._load(device)
        for (fn, block, shared), grid in zip(entries, grids):
            if 0 not in grid:
                driver.launch(fn, grid, block, stream, params, shared)

    def _load(self, device: int) -> list[tuple[Any, tuple[int, int, int], int]]:
        """Each launch's entry on `device`, with its block shape and dynamic shared
        memory (the entries that have some opted in to it)."""
        module = driver.module(self.code.symbol, self.code.ptx, device)
        entries = []
        for launch in self.code.plan.launches:
            fn = module.function(f"{self.code.symbol}_{launch.index}")
            shared = launch.dynamic_shared
            if shared:
                driver.allow_shared(fn, shared)
            entries.append((fn, launch.block, shared))
        self.entries[device] = entries
        return entries

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

    def _host_check_error(self, shapes: dict[str, Any], scalars: dict[str, Any]) -> KdslError:
        for check in self.code.plan.host_checks:
            if not evaluate(check.cond, shapes, scalars):
                return failed_check_error(check, shapes, scalars, self.name)
        raise AssertionError("a host check failed and then passed")

    def _check_writes(self, arrays: dict[str, A.DeviceArray]) -> None:
        """Written parameters must be writeable and share no memory with other arrays."""
        layouts = {
            n: Layout(
                a.ptr,
                a.shape,
                a.strides or A._c_strides(a.shape, a.dtype.itemsize),
                a.dtype.itemsize,
            )
            for n, a in arrays.items()
        }
        spans = [(n, *_span(x.address, x.shape, x.strides, x.itemsize)) for n, x in layouts.items()]
        for name in self.written:
            a = arrays[name]
            if a.readonly:
                raise KernelArgumentError(
                    f"argument '{name}' is read-only, but the kernel writes to it",
                    kernel=self.name,
                    fix="pass a writeable copy",
                )
            mine = layouts[name]
            if overlaps_itself(mine):
                raise overlaps_itself_error(self.name, name)
            other = _meets(
                spans,
                name,
                lambda o, mine=mine, name=name: (
                    not (  # (an array updated in place: let be)
                        (name, o) in self._in_place and one_view(mine, layouts[o])
                    )
                    and share_memory(mine, layouts[o])
                ),
            )
            if other is not None:
                raise KernelArgumentError(
                    f"arguments '{name}' and '{other}' share memory, and the kernel "
                    f"writes '{name}'",
                    kernel=self.name,
                    fix=f"pass a copy of '{other}' (e.g. {other}.clone())",
                )

    @functools.cached_property
    def _in_place(self) -> frozenset[tuple[str, str]]:
        return in_place_pairs(self.ir)

    def _pack(self, words: list[object]) -> int:
        """The address of the argument pointers, in this thread's reusable buffers (the
        driver copies the values when the launch is queued)."""
        local = self._local
        if not hasattr(local, "values"):
            local.values = ctypes.create_string_buffer(8 * self.count)
            base = ctypes.addressof(local.values)
            local.pointers = (ctypes.c_void_p * self.count)(
                *[base + 8 * k for k in range(self.count)]
            )
            local.address = ctypes.addressof(local.pointers)
        struct.pack_into(self.format, local.values, 0, *words)
        return int(local.address)

    # ----------------------------------------------------------------- errors

    def error(self, code: int, shapes: dict[str, Any], scalars: dict[str, Any]) -> KdslError:
        kind, index = ErrorKind(code >> 32), code & 0xFFFFFFFF
        if kind is ErrorKind.CHECK:
            check = self.code.sites.checks[index]
            return failed_check_error(check, shapes, scalars, self.name)
        buffer, loc = self.code.sites.accesses[index]
        return out_of_bounds(self.name, buffer, loc, shapes)


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _span(ptr: int, shape: Sequence[int], strides: Sequence[int], size: int) -> tuple[int, int]:
    """The bytes [lo, hi) an array's elements lie in (empty when it has none)."""
    if 0 in shape:
        return ptr, ptr
    lo = hi = ptr
    for n, s in zip(shape, strides):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + size


def _meets(
    spans: list[tuple[str, int, int]], name: str, shares: Callable[[str], bool] = lambda _: True
) -> str | None:
    """The first other array whose bytes [lo, hi) meet array `name`'s (spans: each
    array's name and bytes) and that `shares` memory with it (an exact test, for those
    only), or None."""
    lo, hi = next((lo, hi) for n, lo, hi in spans if n == name)
    for other, lo2, hi2 in spans:
        if other != name and lo < hi2 and lo2 < hi and lo < hi and lo2 < hi2 and shares(other):
            return other
    return None
