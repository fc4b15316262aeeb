"""A SIMT emulator for tests without a GPU: the LLVM IR that the CUDA target generates,
rebuilt for this CPU and run one OS thread per GPU thread, block after block.

The module's GPU-only parts become calls into Python: the special registers (tid,
ntid, ctaid, nctaid), the block barrier and the warp's sync, shuffles and `mma.sync` —
the last modelled from the PTX ISA's fragment layout for m16n8k16 (written out here
from its text, independently of kdsl/targets/cuda/mma.py, so the emulator checks the
emitter). Shared memory is a global of the module: one block runs at a time. Slow
(a Python call per special-register read): for small shapes only.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import llvmlite.binding as llvm
import ml_dtypes
import numpy as np

import kdsl as kd
from kdsl.ir.evaluate import compile_evaluator
from kdsl.ir.nodes import Const
from kdsl.targets.cuda.backend import launches_of
from kdsl.targets.cuda.codegen import DYNAMIC_SHARED, generate
from kdsl.targets.cuda.plan import scratch_bytes
from kdsl.types import INDEX

WAIT_S = 20.0  # a barrier that long unreached is a deadlock: fail instead of hanging
_AXES = "xyz"


@dataclass
class _Thread:
    tid: tuple[int, int, int]
    warp: int
    lane: int


class _Block:
    """The rendezvous of one block's threads: barriers and the warps' exchanges."""

    def __init__(self, block: tuple[int, int, int], ctaid: tuple[int, int, int], grid) -> None:
        self.block, self.ctaid, self.grid = block, ctaid, grid
        n = block[0] * block[1] * block[2]
        self.barrier = threading.Barrier(n)
        warps = -(-n // 32)
        self.warp_barriers = [threading.Barrier(min(32, n - 32 * w)) for w in range(warps)]
        self.slots: list[dict[int, object]] = [{} for _ in range(warps)]
        self.broken = False  # a barrier timed out: the emulated code deadlocked
        self.failures: list[BaseException] = []  # raised in callbacks (ctypes drops them)

    def wait(self, barrier: threading.Barrier) -> None:
        try:
            barrier.wait(WAIT_S)
        except threading.BrokenBarrierError:  # (ctypes would swallow it in a callback)
            self.broken = True

    def exchange(self, me: _Thread, value: object) -> dict[int, object]:
        """Every lane's `value`, once all the warp's lanes have given theirs."""
        barrier = self.warp_barriers[me.warp]
        self.slots[me.warp][me.lane] = value
        self.wait(barrier)
        seen = dict(self.slots[me.warp])
        self.wait(barrier)  # nobody overwrites a slot before all have read
        return seen


_state = threading.local()


def _me() -> _Thread:
    return _state.thread


def _block() -> _Block:
    return _state.block


# ------------------------------------------------------------------ the callbacks

_SREG = ctypes.CFUNCTYPE(ctypes.c_int32)
_VOID = ctypes.CFUNCTYPE(None)
_VOID_I32 = ctypes.CFUNCTYPE(None, ctypes.c_int32)
_SHFL = ctypes.CFUNCTYPE(
    ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32
)
_MMA = ctypes.CFUNCTYPE(None, ctypes.c_void_p, *[ctypes.c_int32] * 6, *[ctypes.c_float] * 4)


def _sreg(kind: str, axis: int):
    def read() -> int:
        blk = _block()
        return {
            "tid": _me().tid,
            "ntid": blk.block,
            "ctaid": blk.ctaid,
            "nctaid": blk.grid,
        }[kind][axis]

    return _SREG(read)


def _barrier() -> None:
    _block().wait(_block().barrier)


def _warp_sync(mask: int) -> None:
    _block().exchange(_me(), None)


def _shuffle_xor(mask: int, value: int, offset: int, clamp: int) -> int:
    me = _me()
    seen = _block().exchange(me, value)
    return seen.get(me.lane ^ offset, value)  # type: ignore[return-value]


def _recorded(callback):
    """A callback whose exception fails the block (ctypes would print and drop it)."""

    def run(*args):
        try:
            return callback(*args)
        except Exception as exc:
            _block().failures.append(exc)
            return 0

    return run


def _fragment_positions() -> tuple[np.ndarray, ...]:
    """Where each lane's fragment elements sit, per the PTX ISA's "Matrix Fragments for
    mma.m16n8k16 with floating point type": groupID = lane >> 2, threadID_in_group =
    lane % 4; A's ai at row groupID (+ 8 for i in 2, 3, 6, 7), column
    2·threadID_in_group + (i & 1) (+ 8 for i ≥ 4); B's bi at row 2·threadID_in_group +
    (i & 1) (+ 8 for i ≥ 2), column groupID; C's ci at row groupID (+ 8 for i ≥ 2),
    column 2·threadID_in_group + (i & 1). Arrays [lane, i] of rows and of columns."""
    lane = np.arange(32)[:, None]
    group, tig = lane >> 2, lane % 4
    i8, i4 = np.arange(8)[None, :], np.arange(4)[None, :]
    a_rows = group + 8 * np.isin(i8, (2, 3, 6, 7))
    a_cols = 2 * tig + (i8 & 1) + 8 * (i8 >= 4)
    b_rows = 2 * tig + (i4 & 1) + 8 * (i4 >= 2)
    b_cols = np.broadcast_to(group, b_rows.shape)
    c_rows = group + 8 * (i4 >= 2)
    c_cols = 2 * tig + (i4 & 1)
    return a_rows, a_cols, b_rows, b_cols, c_rows, c_cols


_A_ROWS, _A_COLS, _B_ROWS, _B_COLS, _C_ROWS, _C_COLS = _fragment_positions()


def _mma(out: int, *operands) -> None:
    """D = A·B + C for m16n8k16 (bf16 in, f32 out), from the 32 lanes' fragments (a
    bf16 pair per 32-bit word, low half first), laid out as `_fragment_positions`."""
    me = _me()
    seen = _block().exchange(me, operands)
    ops = [seen[lane] for lane in range(32)]
    words = np.array([op[:6] for op in ops], np.int64).astype(np.uint32)  # type: ignore[index]
    halves = words.view(np.uint16).view(ml_dtypes.bfloat16).astype(np.float64)  # (little-endian)
    a, b, c = np.zeros((16, 16)), np.zeros((16, 8)), np.zeros((16, 8))
    a[_A_ROWS, _A_COLS] = halves[:, :8]
    b[_B_ROWS, _B_COLS] = halves[:, 8:]
    c[_C_ROWS, _C_COLS] = np.array([op[6:] for op in ops])  # type: ignore[index]
    d = (a @ b + c).astype(np.float32)
    mine = d[_C_ROWS[me.lane], _C_COLS[me.lane]]
    ctypes.memmove(out, mine.tobytes(), 16)


_CALLBACKS = {
    **{
        f"kdsl_sim_read.ptx.sreg.{kind}.{_AXES[axis]}": _sreg(kind, axis)
        for kind in ("tid", "ntid", "ctaid", "nctaid")
        for axis in range(3)
    },
    "kdsl_sim_barrier0": _VOID(_recorded(_barrier)),
    "kdsl_sim_bar.warp.sync": _VOID_I32(_recorded(_warp_sync)),
    "kdsl_sim_shfl.sync.bfly.i32": _SHFL(_recorded(_shuffle_xor)),
    "kdsl_sim_mma_into": _MMA(_recorded(_mma)),
}
for _name, _fn in _CALLBACKS.items():
    llvm.add_symbol(_name, ctypes.cast(_fn, ctypes.c_void_p).value)

# the mma's struct result, made in IR from a callback that writes memory
_MMA_WRAPPER = """
declare void @kdsl_sim_mma_into(ptr, i32, i32, i32, i32, i32, i32, float, float, float, float)
define {float, float, float, float} @kdsl_sim_mma(i32 %a0, i32 %a1, i32 %a2, i32 %a3,
    i32 %b0, i32 %b1, float %c0, float %c1, float %c2, float %c3) {
  %d = alloca [4 x float]
  call void @kdsl_sim_mma_into(ptr %d, i32 %a0, i32 %a1, i32 %a2, i32 %a3, i32 %b0, i32 %b1,
                               float %c0, float %c1, float %c2, float %c3)
  %v = load [4 x float], ptr %d
  %e0 = extractvalue [4 x float] %v, 0
  %e1 = extractvalue [4 x float] %v, 1
  %e2 = extractvalue [4 x float] %v, 2
  %e3 = extractvalue [4 x float] %v, 3
  %s0 = insertvalue {float, float, float, float} undef, float %e0, 0
  %s1 = insertvalue {float, float, float, float} %s0, float %e1, 1
  %s2 = insertvalue {float, float, float, float} %s1, float %e2, 2
  %s3 = insertvalue {float, float, float, float} %s2, float %e3, 3
  ret {float, float, float, float} %s3
}
"""


def _for_host(text: str) -> str:
    """The NVPTX module's text, made a module for this CPU that calls the emulator."""
    text = re.sub(r'target triple = "[^"]*"', "", text)
    text = re.sub(r'target datalayout = "[^"]*"', "", text)
    text = text.replace("ptx_kernel ", "")
    text = text.replace(" addrspace(3)", "").replace("addrspacecast", "bitcast")
    text = re.sub(r'@"?llvm\.nvvm\.([\w.]+)"?', r'@"kdsl_sim_\1"', text)
    text = re.sub(r'asm\s+"mma\.sync[^"]*", "[^"]*"', "@kdsl_sim_mma", text)
    return text + (_MMA_WRAPPER if "@kdsl_sim_mma" in text else "")


_engines: list[object] = []  # kept alive: their code is called after `run` returns


def run(
    kernel: kd.KernelFunction, args: Sequence[object], config=None, sm: str = "sm_90"
) -> object:
    """Run `kernel`'s CUDA schedule on NumPy arrays (written in place), emulated, with the
    shared memory a block has on `sm`; its results, as a call returns them."""
    traced, _ = kernel._traced(tuple(args), {})
    final, launches = launches_of(kernel.scheduled(traced, kd.cuda, config).kernel, sm)
    module, _, params = generate(final, launches, "sim")
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    text = _for_host(str(module))
    # the dynamic shared memory: one array as large as the largest launch's
    dynamic = max([la.dynamic_shared for la in launches.launches], default=0)
    text = text.replace(
        f'@"{DYNAMIC_SHARED}" = external global [0 x i8]',
        f'@"{DYNAMIC_SHARED}" = internal global [{max(1, dynamic)} x i8] zeroinitializer',
    )
    ref = llvm.parse_assembly(text)
    ref.verify()
    machine = llvm.Target.from_default_triple().create_target_machine(  # (f16 needs F16C)
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=0
    )
    engine = llvm.create_mcjit_compiler(ref, machine)
    engine.finalize_object()
    _engines.append(engine)

    shared = [
        (name, int(size))
        for name, size in re.findall(
            rf'@"(sim_\d+\.shared\d+|{DYNAMIC_SHARED})" = internal global \[(\d+) x i8\]', text
        )
    ]
    names = [p.name for p in final.params]
    values = dict(zip(names, args))
    shapes = {n: np.shape(v) for n, v in values.items() if isinstance(v, np.ndarray)}
    scalars = {n: v for n, v in values.items() if not isinstance(v, np.ndarray)}
    made = [*final.results, *launches.host_temps]  # allocated by the host, as call.py does
    buffers = {b.name: b for b in final.buffers}
    dims = iter(compile_evaluator([d for n in made for d in buffers[n].shape])(shapes, scalars))
    for name in made:
        shape = tuple(max(0, int(next(dims))) for _ in buffers[name].shape)
        values[name] = np.zeros(shape, buffers[name].dtype.to_numpy())
        shapes[name] = shape
    argtypes: list[object] = []
    call_args: list[object] = []
    for name, strided in params.arrays:
        a = values[name]
        argtypes += [ctypes.c_void_p] + [ctypes.c_int64] * (a.ndim * (2 if strided else 1))
        call_args += [a.ctypes.data, *a.shape] + (list(a.strides) if strided else [])
    declared = {p.name: p for p in final.params if not p.is_array}
    for name in params.scalars:
        argtypes.append(ctypes.c_double if declared[name].dtype.is_float else ctypes.c_int64)
        call_args.append(scalars[name])
    errors = np.zeros(1, np.uint64)
    for launch in launches.launches:
        grid_exprs = [e if e is not None else Const(1, INDEX) for e in launch.grid]
        sizes = compile_evaluator(
            grid_exprs
            + [scratch_bytes(launch.scratch(p)) for p in ("block-scratch", "thread-scratch")]
        )(shapes, scalars)
        grid = tuple(max(0, int(v)) for v in sizes[:3])
        per_block, per_thread = int(sizes[3]), int(sizes[4])
        blocks = grid[0] * grid[1] * grid[2]
        # memory nobody initialized holds NaNs (0xFF bytes), as it may on a GPU
        scratch = np.full(max(1, blocks * (per_block + launch.threads * per_thread)), 255, np.uint8)
        entry = ctypes.CFUNCTYPE(None, *argtypes, ctypes.c_void_p, ctypes.c_void_p)(
            engine.get_function_address(f"sim_{launch.index}")
        )
        for z in range(grid[2]):
            for y in range(grid[1]):
                for x in range(grid[0]):
                    for name, size in shared:  # a block's shared memory starts as garbage
                        ctypes.memset(engine.get_global_value_address(name), 255, size)
                    _run_block(
                        entry,
                        call_args + [scratch.ctypes.data, errors.ctypes.data],
                        launch.block,
                        (x, y, z),
                        grid,
                    )
    assert errors[0] == 0, f"the kernel recorded an error: {int(errors[0]):#x}"
    results = [values[n] for n in final.results]
    return None if not results else results[0] if len(results) == 1 else tuple(results)


def _run_block(entry, call_args, block, ctaid, grid) -> None:
    blk = _Block(block, ctaid, grid)
    failures: list[BaseException] = []

    def thread(tid: tuple[int, int, int]) -> None:
        linear = tid[0] + block[0] * (tid[1] + block[1] * tid[2])
        _state.thread = _Thread(tid, linear // 32, linear % 32)
        _state.block = blk
        try:
            entry(*call_args)
        except BaseException as exc:  # reported by the caller
            failures.append(exc)

    threads = [
        threading.Thread(target=thread, args=((x, y, z),))
        for z in range(block[2])
        for y in range(block[1])
        for x in range(block[0])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures or blk.failures:
        raise (failures or blk.failures)[0]
    assert not blk.broken, f"block {ctaid} deadlocked: a barrier some threads never reached"
