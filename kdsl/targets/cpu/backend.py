"""The CPU target's entry point: `compile_kernel` turns scheduled IR into a callable.

The machine code comes from the object store when this kernel was compiled before (in
any process), found by the hash of the scheduled IR; otherwise the schedule is expanded
(`expand`), LLVM makes the code (`build_object`), and the store keeps it.
"""

from __future__ import annotations

import ctypes
import functools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import llvmlite.binding as llvm

from kdsl.config import CONFIG, dumps, user_stacklevel
from kdsl.errors import CompileError
from kdsl.ir.hashing import source_locations, structural_hash
from kdsl.ir.nodes import Buffer, Kernel, Loop
from kdsl.ir.passes.expand import expand_schedule
from kdsl.ir.passes.hoist import hoist_divisions
from kdsl.ir.printer import format_kernel
from kdsl.ir.verify import verify
from kdsl.targets.cpu import jit, runtime
from kdsl.targets.cpu.amx import tile_instructions, uses_tiles
from kdsl.targets.cpu.codegen import ErrorSites, generate
from kdsl.targets.cpu.objects import STORE, ObjectStore, object_key
from kdsl.targets.cpu.parallel import PARALLEL_FOR
from kdsl.targets.cpu.vector_plan import plan_vector_loop


@dataclass(frozen=True)
class ObjectCode:
    """One compiled kernel as bytes, loadable into the JIT by any process on this host."""

    code: bytes
    symbol: str
    sites: ErrorSites  # what its error codes refer to
    uses_runtime: bool
    uses_tiles: bool = False  # AMX: the process must be granted its state before it runs


def expand(scheduled: Kernel, strict_fp: bool) -> Kernel:
    """The schedule's annotations made explicit: the IR the code generator compiles."""
    final = expand_schedule(
        scheduled,
        contract=not strict_fp,
        vectorizable=functools.partial(_vectorizable, {b.name: b for b in scheduled.buffers}),
        register_bytes=jit.register_bytes(),
    )
    if CONFIG.debug:
        verify(final, "scheduled")
    if dumps("schedule"):
        print(format_kernel(final))
    return final


def cpu_final(scheduled: Kernel, strict_fp: bool) -> Kernel:
    """`expand`, then the CPU's own pass: divisions out of the loops that compute them
    alike (not on a GPU, whose launches can't share such locals)."""
    final = hoist_divisions(expand(scheduled, strict_fp))
    if CONFIG.debug:
        verify(final, "scheduled")
    return final


def _vectorizable(buffers: Mapping[str, Buffer], loop: Loop) -> bool:
    return plan_vector_loop(loop, buffers).problem is None


@dataclass
class CpuKernel:
    """A compiled kernel: `cfunc(*arrays, *scalars)` returns 0 or an error code."""

    kernel: Kernel  # as scheduled
    cfunc: ctypes._CFuncPtr  # type: ignore[name-defined]
    sites: ErrorSites
    checks: bool
    strict_fp: bool
    symbol: str
    from_cache: bool

    @functools.cached_property
    def final(self) -> Kernel:
        """The IR the code generator compiled (made again on request: a cached object has
        none)."""
        return cpu_final(self.kernel, self.strict_fp)

    @functools.cached_property
    def llvm_ir(self) -> str:
        """LLVM IR as generated (made again on request, like `final`)."""
        return str(generate(self.final, self.checks, self.strict_fp, self.symbol)[0])

    @functools.cached_property
    def optimized_ir(self) -> str:
        return str(jit.optimize(llvm.parse_assembly(self.llvm_ir)))

    @functools.cached_property
    def asm(self) -> str:
        """Host assembly, made on first request (it costs about as much as a compile: the
        code generator and LLVM run again) and kept in the object store beside the object,
        for the next process or kernel that asks for the same code."""
        key = object_key("assembly", structural_hash(self.kernel), self.checks, self.strict_fp)
        text = STORE.load(key)
        if isinstance(text, str):
            return text
        text = jit.assembly(llvm.parse_assembly(self.optimized_ir))
        STORE.save(key, text)
        return text


def build_object(scheduled: Kernel, key: str, checks: bool, strict_fp: bool) -> ObjectCode:
    """Expand the schedule, run the code generator and LLVM: the kernel's machine code as
    an object file."""
    symbol = f"kdsl_{scheduled.name}_{key[:16]}"  # unique: many versions share one JIT
    module, sites = generate(cpu_final(scheduled, strict_fp), checks, strict_fp, symbol)
    sites.locations = source_locations(scheduled)
    code = jit.emit_object(jit.optimize(module))
    return ObjectCode(code, symbol, sites, PARALLEL_FOR in module.globals, uses_tiles(module))


def load_object(kernel: Kernel, obj: ObjectCode) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    """Load machine code into this process and type its entry for ctypes."""
    if obj.uses_tiles and "amx" not in tile_instructions():  # (a process of its own, say)
        raise CompileError(
            f"kernel '{kernel.name}' was compiled to use AMX tiles, which this process "
            "may not use (the CPU lacks them, or Linux refused the request)",
            kernel=kernel.name,
            fix="compile it again on this machine: clear the cache (`kdsl cache clear`)",
        )
    if obj.uses_runtime:
        runtime.ensure_runtime()  # before loading: the kernel links to the pool's symbol
    address = jit.load_object(obj.code, obj.symbol)
    n_arrays = sum(1 for p in kernel.params if p.is_array) + len(kernel.results)
    scalars = [p for p in kernel.params if not p.is_array]
    argtypes = [ctypes.py_object] * n_arrays + [
        ctypes.c_double if p.dtype.is_float else ctypes.c_int64 for p in scalars
    ]
    return ctypes.CFUNCTYPE(ctypes.c_int64, *argtypes)(address)


def kernel_key(scheduled: Kernel, checks: bool, strict_fp: bool) -> str:
    """The object store's key for the machine code of a scheduled kernel."""
    return object_key("kernel", structural_hash(scheduled), checks, strict_fp)


def from_object(
    kernel: Kernel, obj: ObjectCode, checks: bool, strict_fp: bool, from_cache: bool = False
) -> CpuKernel:
    """The callable kernel of machine code made earlier (here or in another process)."""
    cfunc = load_object(kernel, obj)
    sites = obj.sites.located_in(kernel)
    return CpuKernel(kernel, cfunc, sites, checks, strict_fp, obj.symbol, from_cache)


def compile_kernel(
    kernel: Kernel, checks: bool = False, strict_fp: bool = False, store: ObjectStore = STORE
) -> CpuKernel:
    """A callable for scheduled IR. Under KDSL_DUMP the object cache is not read, so the
    dumped passes run. A stored object that can't be loaded is compiled again."""
    key = kernel_key(kernel, checks, strict_fp)
    obj = None if CONFIG.dump else store.load(key)
    if isinstance(obj, ObjectCode):
        try:
            return from_object(kernel, obj, checks, strict_fp, from_cache=True)
        except CompileError as exc:  # a stored object that won't load: compile it again
            if obj.uses_tiles and "amx" not in tile_instructions():
                raise  # not the object's fault: compiling again gives the same code
            warnings.warn(
                f"kdsl: the cached object of kernel '{kernel.name}' can't be loaded "
                f"({exc.what}); compiling it again",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
    obj = build_object(kernel, key, checks, strict_fp)
    store.save(key, obj)
    return from_object(kernel, obj, checks, strict_fp)
