"""The CPU target's entry point: `compile_kernel` turns scheduled IR into a callable."""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import llvmlite.binding as llvm

from kdsl.ir.nodes import Kernel
from kdsl.targets.cpu import jit, runtime
from kdsl.targets.cpu.codegen import ErrorSites, generate, symbol_name
from kdsl.targets.cpu.parallel import PARALLEL_FOR


@dataclass
class CpuKernel:
    """A compiled kernel: `cfunc(*arrays, *scalars)` returns 0 or an error code."""

    kernel: Kernel
    cfunc: ctypes._CFuncPtr  # type: ignore[name-defined]
    sites: ErrorSites
    llvm_ir: str  # as generated
    optimized_ir: str

    @functools.cached_property
    def asm(self) -> str:
        """Host assembly, made on first request (it costs a third of a compile)."""
        return jit.assembly(llvm.parse_assembly(self.optimized_ir))


def compile_kernel(kernel: Kernel, checks: bool = False, strict_fp: bool = False) -> CpuKernel:
    module, sites = generate(kernel, checks, strict_fp)
    if PARALLEL_FOR in module.globals:
        runtime.ensure_runtime()  # before loading: the kernel links to the pool's symbol
    ref = jit.optimize(module)
    optimized = str(ref)
    address = jit.load(ref, symbol_name(kernel))
    n_arrays = sum(1 for p in kernel.params if p.is_array) + len(kernel.results)
    scalars = [p for p in kernel.params if not p.is_array]
    argtypes = [ctypes.py_object] * n_arrays + [
        ctypes.c_double if p.dtype.is_float else ctypes.c_int64 for p in scalars
    ]
    cfunc = ctypes.CFUNCTYPE(ctypes.c_int64, *argtypes)(address)
    return CpuKernel(kernel, cfunc, sites, str(module), optimized)
