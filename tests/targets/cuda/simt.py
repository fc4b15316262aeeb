"""A SIMT emulator for tests without a GPU: the LLVM IR that the CUDA target generates,
rebuilt for this CPU and run block after block, one OS thread per GPU thread.

Each thread calls the kernel's entry with its special registers (tid, ntid, ctaid,
nctaid) as extra arguments. The block barrier, the warp's sync and its shuffles are
native code (`_SYNC`) that waits on Python's locks without the GIL, and gives up where
the emulated code deadlocks. `mma.sync` is a call into Python, modelled from the PTX
ISA's fragment layout for m16n8k16 (written out here from its text, independently of
kdsl/targets/cuda/mma.py, so the emulator checks the emitter). A module that uses none
of these runs a block's threads one after the other in the caller's thread: nothing in
it can tell their order. Shared memory is a global of the module: one block runs at a
time. For small shapes only (a barrier wakes every thread's OS thread).
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
_SREGS = [f"{kind}.{axis}" for kind in ("tid", "ntid", "ctaid", "nctaid") for axis in "xyz"]


@dataclass
class _Thread:
    tid: tuple[int, int, int]
    warp: int
    lane: int


class _Sync(ctypes.Structure):
    """A block's state for its native barriers and shuffles (`_SYNC`'s `%kdsl_sim_block`)."""

    _fields_ = [
        ("locks", ctypes.POINTER(ctypes.c_void_p)),  # each thread's, held: it waits on it
        ("threads", ctypes.c_int32),
        ("broken", ctypes.c_int32),  # a barrier timed out: the emulated code deadlocked
        ("arrived", ctypes.c_int32),  # at the block's barrier
        ("warp_arrived", ctypes.c_int32 * 32),
        ("slots", ctypes.c_int32 * 2048),  # each thread's value in a shuffle, two sets
        ("shuffles", ctypes.c_int32 * 1024),  # each thread's so far: the set it writes
    ]


class _Block:
    """The rendezvous of one block's threads for `mma.sync`: the warps' exchanges."""

    def __init__(self, block: tuple[int, int, int], ctaid: tuple[int, int, int]) -> None:
        self.ctaid = ctaid
        n = block[0] * block[1] * block[2]
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

_MMA = ctypes.CFUNCTYPE(None, ctypes.c_void_p, *[ctypes.c_int32] * 6, *[ctypes.c_float] * 4)


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


_CALLBACKS = {"kdsl_sim_mma_into": _MMA(_recorded(_mma))}
for _name, _fn in _CALLBACKS.items():
    llvm.add_symbol(_name, ctypes.cast(_fn, ctypes.c_void_p).value)

# Python's own locks, which wait without the GIL and can time out: the native barriers'
_allocate_lock = ctypes.CFUNCTYPE(ctypes.c_void_p)(("PyThread_allocate_lock", ctypes.pythonapi))
_acquire_lock = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)(
    ("PyThread_acquire_lock", ctypes.pythonapi)
)
_free_lock = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(("PyThread_free_lock", ctypes.pythonapi))
for _name in ("PyThread_acquire_lock_timed", "PyThread_release_lock"):
    llvm.add_symbol(_name, ctypes.cast(getattr(ctypes.pythonapi, _name), ctypes.c_void_p).value)

# The block barrier, the warp's sync and shuffles, on a block's `_Sync`, without the GIL.
# A thread arriving at a barrier counts itself in; the last to arrive lets the others
# go, each waiting on its own lock. One that has waited WAIT_S marks the block broken,
# after which nobody waits. A shuffle writes the thread's value in one of two sets of
# slots, in turn, and reads its partner's after the warp's sync: a set is written again
# two shuffles later, past the next one's sync, which no lane reaches before reading.
_SYNC = """
%kdsl_sim_block = type { ptr, i32, i32, i32, [32 x i32], [2048 x i32], [1024 x i32] }
declare i32 @PyThread_acquire_lock_timed(ptr, i64, i32)
declare void @PyThread_release_lock(ptr)

define internal void @kdsl_sim_wait(ptr %b, ptr %arrived, i32 %first, i32 %n, i32 %me) {
entry:
  %brokenp = getelementptr %kdsl_sim_block, ptr %b, i32 0, i32 2
  %broken = load atomic i32, ptr %brokenp seq_cst, align 4
  %locks = load ptr, ptr %b
  %skip = icmp ne i32 %broken, 0
  br i1 %skip, label %done, label %arrive
arrive:
  %k = atomicrmw add ptr %arrived, i32 1 seq_cst
  %n1 = sub i32 %n, 1
  %last = icmp eq i32 %k, %n1
  br i1 %last, label %open, label %sleep
open:
  store atomic i32 0, ptr %arrived seq_cst, align 4  ; (before anyone can arrive again)
  br label %loop
loop:
  %i = phi i32 [0, %open], [%next, %step]
  %t = add i32 %first, %i
  %other = icmp ne i32 %t, %me
  br i1 %other, label %release, label %step
release:
  %lp = getelementptr ptr, ptr %locks, i32 %t
  %l = load ptr, ptr %lp
  call void @PyThread_release_lock(ptr %l)
  br label %step
step:
  %next = add i32 %i, 1
  %more = icmp slt i32 %next, %n
  br i1 %more, label %loop, label %done
sleep:
  %mp = getelementptr ptr, ptr %locks, i32 %me
  %m = load ptr, ptr %mp
  %got = call i32 @PyThread_acquire_lock_timed(ptr %m, i64 WAIT_US, i32 0)
  %late = icmp ne i32 %got, 1
  br i1 %late, label %break, label %done
break:
  store atomic i32 1, ptr %brokenp seq_cst, align 4
  br label %done
done:
  ret void
}

define internal void @"kdsl_sim_barrier0"(ptr %b, i32 %me) {
  %np = getelementptr %kdsl_sim_block, ptr %b, i32 0, i32 1
  %n = load i32, ptr %np
  %arrived = getelementptr %kdsl_sim_block, ptr %b, i32 0, i32 3
  call void @kdsl_sim_wait(ptr %b, ptr %arrived, i32 0, i32 %n, i32 %me)
  ret void
}

define internal void @"kdsl_sim_bar.warp.sync"(ptr %b, i32 %me, i32 %mask) {
  %np = getelementptr %kdsl_sim_block, ptr %b, i32 0, i32 1
  %threads = load i32, ptr %np
  %warp = lshr i32 %me, 5
  %first = shl i32 %warp, 5
  %rest = sub i32 %threads, %first
  %partial = icmp slt i32 %rest, 32
  %n = select i1 %partial, i32 %rest, i32 32
  %arrived = getelementptr %kdsl_sim_block, ptr %b, i32 0, i32 4, i32 %warp
  call void @kdsl_sim_wait(ptr %b, ptr %arrived, i32 %first, i32 %n, i32 %me)
  ret void
}

define internal i32 @"kdsl_sim_shfl.sync.bfly.i32"(ptr %b, i32 %me, i32 %mask, i32 %value,
                                                    i32 %offset, i32 %clamp) {
entry:
  %shuffles = getelementptr %kdsl_sim_block, ptr %b, i32 0, i32 6, i32 %me
  %k = load i32, ptr %shuffles
  %k1 = add i32 %k, 1
  store i32 %k1, ptr %shuffles
  %odd = and i32 %k, 1
  %set = mul i32 %odd, 1024
  %slots = getelementptr %kdsl_sim_block, ptr %b, i32 0, i32 5, i32 %set
  %mine = getelementptr i32, ptr %slots, i32 %me
  store i32 %value, ptr %mine
  call void @"kdsl_sim_bar.warp.sync"(ptr %b, i32 %me, i32 %mask)
  %from = xor i32 %me, %offset
  %np = getelementptr %kdsl_sim_block, ptr %b, i32 0, i32 1
  %threads = load i32, ptr %np
  %inside = icmp slt i32 %from, %threads
  %lane = icmp ult i32 %offset, 32
  %there = and i1 %inside, %lane  ; (else no such lane in the warp: mine)
  br i1 %there, label %read, label %done
read:
  %theirs = getelementptr i32, ptr %slots, i32 %from
  %v = load i32, ptr %theirs
  br label %done
done:
  %result = phi i32 [%value, %entry], [%v, %read]
  ret i32 %result
}
"""

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


def _for_host(text: str) -> tuple[str, bool]:
    """The NVPTX module's text, made a module for this CPU that calls the emulator; and
    whether its threads meet (at barriers, shuffles, `mma.sync`)."""
    text = re.sub(r'target triple = "[^"]*"', "", text)
    text = re.sub(r'target datalayout = "[^"]*"', "", text)
    text = text.replace("ptx_kernel ", "")
    text = text.replace(" addrspace(3)", "").replace("addrspacecast", "bitcast")
    # Each thread passes the entry its special registers, its block's `_Sync` and its
    # index in the block, as last parameters: reading a register costs no call into
    # Python. Only the entries use them: a use elsewhere would be of an undefined value,
    # which parsing rejects.
    params = [*(f'i32 %"kdsl_sim_{r}"' for r in _SREGS), 'ptr %"kdsl_sim_block"']
    params.append('i32 %"kdsl_sim_thread"')
    text = re.sub(r'(define void @"sim_\d+"\([^)]*)\)', rf"\1, {', '.join(params)})", text)
    text = re.sub(r'declare [^\n]*@"?llvm\.nvvm\.[^\n]*\n', "", text)
    sreg = r'call i32 @"?llvm\.nvvm\.read\.ptx\.sreg\.([\w.]+)"?\(\)'
    text = re.sub(sreg, r'add i32 %"kdsl_sim_\1", 0', text)
    # the barriers and shuffles, defined in _SYNC, are given the block and the thread
    synced = re.search(r'@"?llvm\.nvvm\.', text) is not None
    at = 'ptr %"kdsl_sim_block", i32 %"kdsl_sim_thread"'
    text = re.sub(
        r'@"?llvm\.nvvm\.([\w.]+)"?\((\)?)',
        lambda m: f'@"kdsl_sim_{m[1]}"({at}{")" if m[2] else ", "}',
        text,
    )
    mma = re.search(r'asm\s+"mma\.sync[^"]*", "[^"]*"', text) is not None
    text = re.sub(r'asm\s+"mma\.sync[^"]*", "[^"]*"', "@kdsl_sim_mma", text)
    sync = _SYNC.replace("WAIT_US", str(int(WAIT_S * 1e6)))
    return text + sync + (_MMA_WRAPPER if mma else ""), synced or mma


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
    text, synced = _for_host(str(module))
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
        entry = ctypes.CFUNCTYPE(
            None,
            *argtypes,
            ctypes.c_void_p,
            ctypes.c_void_p,
            *[ctypes.c_int32] * 12,
            ctypes.POINTER(_Sync),
            ctypes.c_int32,
        )(engine.get_function_address(f"sim_{launch.index}"))

        def fresh_shared() -> None:  # a block's shared memory starts as garbage
            for name, size in shared:
                ctypes.memset(engine.get_global_value_address(name), 255, size)

        _run_launch(
            entry,
            [*call_args, scratch.ctypes.data, errors.ctypes.data],
            launch.block,
            grid,
            fresh_shared,
            synced,
        )
    assert errors[0] == 0, f"the kernel recorded an error: {int(errors[0]):#x}"
    results = [values[n] for n in final.results]
    return None if not results else results[0] if len(results) == 1 else tuple(results)


def _run_launch(entry, call_args, block, grid, fresh_shared, synced: bool) -> None:
    """Run the grid's blocks one after the other, each thread calling `entry` with its
    special registers; `synced`: the threads meet (at barriers, shuffles, mma)."""
    ctaids = [(x, y, z) for z in range(grid[2]) for y in range(grid[1]) for x in range(grid[0])]
    tids = [(x, y, z) for z in range(block[2]) for y in range(block[1]) for x in range(block[0])]
    assert len(tids) <= 1024, "more threads in a block than CUDA allows (and `_Sync` holds)"
    if not synced:  # the threads never meet: no order of them can be told from another
        for ctaid in ctaids:
            fresh_shared()
            for linear, tid in enumerate(tids):
                entry(*call_args, *tid, *block, *ctaid, *grid, None, linear)
        return
    # One OS thread per GPU thread, kept for all the blocks: its `go` lock lets it run
    # the next block (or stop, when there is none), `finished` tells that it has.
    go, finished = [threading.Lock() for _ in tids], [threading.Lock() for _ in tids]
    for lock in (*go, *finished):
        lock.acquire()
    current: list[tuple[_Block, _Sync] | None] = [None]
    failures: list[BaseException] = []
    locks = (ctypes.c_void_p * len(tids))(*(_allocate_lock() for _ in tids))
    for lock in locks:
        _acquire_lock(lock, 1)

    def thread(linear: int, tid: tuple[int, int, int]) -> None:
        _state.thread = _Thread(tid, linear // 32, linear % 32)
        while True:
            go[linear].acquire()
            if current[0] is None:
                return
            blk, sync = current[0]
            _state.block = blk
            try:
                entry(*call_args, *tid, *block, *blk.ctaid, *grid, ctypes.byref(sync), linear)
            except BaseException as exc:  # reported by the caller
                failures.append(exc)
            finished[linear].release()

    threads = [threading.Thread(target=thread, args=args) for args in enumerate(tids)]
    for t in threads:
        t.start()
    try:
        for ctaid in ctaids:
            fresh_shared()
            blk, sync = _Block(block, ctaid), _Sync(locks, len(tids))
            current[0] = blk, sync
            for lock in go:
                lock.release()
            for lock in finished:
                lock.acquire()
            if failures or blk.failures:
                raise (failures or blk.failures)[0]
            broken = blk.broken or sync.broken
            assert not broken, f"block {ctaid} deadlocked: a barrier some threads never reached"
    finally:
        current[0] = None
        for lock in go:
            lock.release()
        for t in threads:
            t.join()
        for lock in locks:
            _free_lock(lock)
