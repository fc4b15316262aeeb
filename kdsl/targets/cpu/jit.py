"""LLVM for the host: target machine, optimization pipeline and the JIT engine."""

from __future__ import annotations

import ctypes.util
import functools
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import llvmlite.binding as llvm
from llvmlite import ir

from kdsl.errors import CompileError

_lock = threading.Lock()


@functools.cache
def target_machine() -> llvm.TargetMachine:
    """A target machine for this CPU (its model and features, e.g. znver4 with AVX-512)."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    for lib in ("m", "c"):  # libm's tanhf/erff and libc's aligned_alloc/free for JIT-ed code
        path = ctypes.util.find_library(lib)
        if path:
            llvm.load_library_permanently(path)
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(
        cpu=llvm.get_host_cpu_name(),
        features=llvm.get_host_cpu_features().flatten(),
        opt=3,
        jit=True,
    )


def host_description() -> str:
    """CPU model and features: part of every cache key for compiled code."""
    return f"{llvm.get_process_triple()}/{llvm.get_host_cpu_name()}/{llvm.get_host_cpu_features().flatten()}"


@functools.cache
def host_features() -> dict[str, bool]:
    """This CPU's features by LLVM's names ("avx512f", "avx512vl", "avx512bf16", …)."""
    return dict(llvm.get_host_cpu_features())


_PROBES = {
    "gather": """
declare <8 x float> @llvm.masked.gather.v8f32.v8p0(<8 x ptr>, i32, <8 x i1>, <8 x float>)
define <8 x float> @probe(<8 x ptr> %at, <8 x i1> %on) {
  %v = call <8 x float> @llvm.masked.gather.v8f32.v8p0(<8 x ptr> %at, i32 4, <8 x i1> %on, <8 x float> zeroinitializer)
  ret <8 x float> %v
}
""",
    "scatter": """
declare void @llvm.masked.scatter.v8f32.v8p0(<8 x float>, <8 x ptr>, i32, <8 x i1>)
define void @probe(<8 x float> %v, <8 x ptr> %at, <8 x i1> %on) {
  call void @llvm.masked.scatter.v8f32.v8p0(<8 x float> %v, <8 x ptr> %at, i32 4, <8 x i1> %on)
  ret void
}
""",
}


@functools.cache
def in_hardware(kind: str) -> bool:
    """Whether LLVM gives a masked "gather" or "scatter" this CPU's instruction for it.
    Where it has none or deems it slow (AVX2 has no scatter; Zen 2 and 3's gathers are
    slow) it writes a branch and a load or store per lane instead."""
    probe = llvm.parse_assembly(_PROBES[kind])
    return kind in target_machine().emit_assembly(probe)


CACHE_LINE = 64  # bytes: heap temporaries start on one; streamed stores fill whole ones


def register_bytes() -> int:
    """The width of this CPU's float vector registers: 64 with AVX-512, else 32."""
    return 64 if host_features().get("avx512f", False) else 32


# the data cache at each level where Linux reports none (sysfs unreadable)
DEFAULT_CACHE_BYTES = {1: 32 << 10, 2: 1 << 20, 3: 32 << 20}


@functools.cache
def cache_bytes() -> Mapping[int, int]:
    """The data (or unified) cache at each level Linux reports for the first CPU, in
    bytes (read-only: cached for the process); DEFAULT_CACHE_BYTES where it reports none."""
    sizes: dict[int, int] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        found = re.fullmatch(r"(\d+)([KMG]?)", size)
        if kind != "Instruction" and found and level.isdigit():
            sizes[int(level)] = int(found[1]) << 10 * " KMG".index(found[2] or " ")
    return MappingProxyType(sizes or dict(DEFAULT_CACHE_BYTES))


def last_level_cache_bytes() -> int:
    """The largest data cache (the L3 on most CPUs): an array larger than it is written
    past the caches where a schedule asks (s.nontemporal)."""
    return max(cache_bytes().values())


def has_avx512(feature: str, lanes: int, bits: int) -> bool:
    """Whether `feature`'s instructions run on a vector of `lanes` elements of `bits`
    (narrower than a zmm register needs AVX512-VL too)."""
    features = host_features()
    return features.get(feature, False) and (lanes * bits == 512 or features.get("avx512vl", False))


@functools.cache
def _engine() -> llvm.ExecutionEngine:
    tm = target_machine()
    backing = llvm.parse_assembly("")
    return llvm.create_mcjit_compiler(backing, tm)


def optimize(module: ir.Module) -> llvm.ModuleRef:
    """Parse, verify and optimize (O3, new pass manager) a generated module."""
    tm = target_machine()
    try:
        ref = llvm.parse_assembly(str(module))
        ref.verify()
    except RuntimeError as exc:
        raise CompileError(
            f"LLVM rejected the generated code: {exc}",
            fix="this is a kdsl bug; please report it with the kernel's source",
        ) from exc
    ref.triple = tm.triple
    ref.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(ref, pb)
    return ref


def assembly(ref: llvm.ModuleRef) -> str:
    return str(target_machine().emit_assembly(ref))


def emit_object(ref: llvm.ModuleRef) -> bytes:
    """Machine code for this CPU, as an ELF object the JIT can load in any process."""
    return bytes(target_machine().emit_object(ref))


_loaded: dict[str, int] = {}  # symbol → address: an object is loaded once per process


def load_object(code: bytes, symbol: str) -> int:
    """Load an object into the JIT (relocation only, no LLVM passes); the address of
    `symbol` in it. CompileError if the object does not define `symbol` (its address
    would be 0: calling it would crash the process)."""
    with _lock:
        address = _loaded.get(symbol)
        if address is None:
            engine = _engine()
            engine.add_object_file(llvm.ObjectFileRef.from_data(code))
            engine.finalize_object()
            address = int(engine.get_function_address(symbol))
            if not address:
                raise CompileError(
                    f"the compiled object has no function '{symbol}' (its address is 0); "
                    "it was not called",
                    fix="clear the cache with `kdsl cache clear` so the kernel is compiled "
                    "again; if this repeats, it is a kdsl bug: please report it",
                )
            _loaded[symbol] = address
        return address
