"""kdsl's native thread pool: `kdsl_parallel_for`, written in LLVM IR and JIT-compiled once.

kdsl installs from pure wheels, so the pool cannot be a C extension: it is a module built
with llvmlite's IR builder that calls libc (`pthread_create`, `syscall(SYS_futex)`),
JIT-compiled once per process by the kernels' engine and registered with
`llvm.add_symbol`, so kernel modules declare and call it like a C function:

    i64 kdsl_parallel_for(ptr task, ptr closure, i64 n, i64 grain)
    i64 task(ptr closure, i64 begin, i64 end)       ; 0, or an error code

[0, n) is cut into CHUNKS_PER_THREAD contiguous, balanced chunks per thread (fewer if a
chunk would get under `grain` iterations). The caller offers the loop to workers, then it
and the workers that accept claim chunks from an atomic counter, so a thread that runs
late takes fewer; the call returns 0 or the first nonzero code recorded. No Python and no
GIL are involved.

Futexes rather than pthread mutex/condvar: the protocol's own words are the futex words
(a worker's `go` counter, the count of workers still running), so a thread sleeps with
"wait while this word holds what I saw": no mutex on any path, and no opaque libc struct
whose size the IR would hard-code. A waiter spins (`pause`) before it sleeps and says so
in a flag; the waker makes the wake syscall only when the flag is set (both seq_cst), so
back-to-back loops never enter the kernel.

Offers: a worker's `go` is even while it is idle; the caller makes it odd, and once every
chunk is claimed takes back the offers not yet accepted (worker and caller both cmpxchg it
to the next even value: one wins). A loop never waits for a worker slow to wake up, and
returns only when every worker that accepted has reported back: no worker ever touches a
finished loop's state.

One loop at a time: the caller takes the `busy` try-lock. A call that finds it taken (a
loop in another Python thread, or a nested loop inside a task) runs its range inline,
which cannot deadlock and still keeps every core busy. One thread, or too little work
for two chunks, also runs inline, with no synchronization at all.

Workers start on first need with every signal blocked (signals go to Python's threads),
sleep when idle and are never joined: the process exits with them asleep. A forked child
has none of them; a fork hook resets the pool so the child starts its own. The pool needs
Linux x86-64 (the futex syscall number, `pause`); elsewhere the same entry points run
every loop inline on the calling thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral

import llvmlite.binding as llvm
from llvmlite import ir

from kdsl.config import CONFIG, available_cores, user_stacklevel
from kdsl.targets.cpu import jit, objects
from kdsl.targets.cpu.ops import smax, smin

PARALLEL_FOR = "kdsl_parallel_for"
PARALLEL_FOR_THREADS = "kdsl_parallel_for_threads"  # same, with a thread count (0: default)
MAX_THREADS = 256  # the pool's slots: the most threads one loop can use
CHUNKS_PER_THREAD = 4  # a thread the host stalls (VM steal) or that got the costlier
# part (causal attention) leaves chunks to the others, which a chunk per thread can't
SPIN = 4096  # `pause`s a waiter spins before it sleeps: 50 to 100 µs on Zen 4

I1, I32, I64, PTR = ir.IntType(1), ir.IntType(32), ir.IntType(64), ir.PointerType()
TASK_TYPE = ir.FunctionType(I64, [PTR, I64, I64])
PARALLEL_FOR_TYPE = ir.FunctionType(I64, [PTR, PTR, I64, I64])
_TASK_PTR = ir.PointerType(TASK_TYPE)  # typed, so that llvmlite can call through it
_THREADS_TYPE = ir.FunctionType(I64, [_TASK_PTR, PTR, I64, I64, I64])

_SYS_FUTEX = 202  # Linux x86-64
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129
_SIG_BLOCK, _SIG_SETMASK, _SIGSET_BYTES = 0, 2, 128
_SLOT = ir.LiteralStructType([I32, I32, ir.ArrayType(ir.IntType(8), 56)])  # go, asleep, pad
_JOB = ir.LiteralStructType([PTR, PTR, I64, I64])  # task, closure, n, chunks
_ENTRIES = ("kdsl_parallel_for", PARALLEL_FOR_THREADS, "kdsl_set_num_threads", "kdsl_reset")


def declare_parallel_for(module: ir.Module) -> ir.Function:
    """`kdsl_parallel_for` declared in a kernel's module (call `ensure_runtime` before
    loading that module into the JIT)."""
    fn = module.globals.get(PARALLEL_FOR)
    if fn is None:
        fn = ir.Function(module, PARALLEL_FOR_TYPE, name=PARALLEL_FOR)
    assert isinstance(fn, ir.Function)
    return fn


def has_thread_pool() -> bool:
    """True where the pool runs loops on several threads (Linux x86-64)."""
    triple = llvm.get_process_triple()
    return triple.startswith("x86_64") and "linux" in triple


# --- the module -------------------------------------------------------------------------


def _i32(v: int) -> ir.Constant:
    return ir.Constant(I32, v)


def _i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _global(module: ir.Module, ty: ir.Type, name: str, init: int | None = None) -> ir.Value:
    gv = ir.GlobalVariable(module, ty, name=name)
    gv.linkage = "internal"
    gv.initializer = ir.Constant(ty, init)
    gv.align = 64  # one cache line each: the hot words don't share lines
    gv.type = PTR  # an untyped pointer, like every other address
    return gv


def _function(
    module: ir.Module, ty: ir.FunctionType, name: str, internal: bool = True
) -> tuple[ir.Function, ir.IRBuilder]:
    fn = ir.Function(module, ty, name=name)
    if internal:
        fn.linkage = "internal"
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _store_atomic(b: ir.IRBuilder, value: ir.Value, ptr: ir.Value, ordering: str) -> None:
    """An atomic store, as an exchange whose result is unused (llvmlite's `store_atomic`
    still wants typed pointers); x86 compiles a seq_cst store to `xchg` anyway."""
    b.atomic_rmw("xchg", ptr, value, ordering)


@dataclass
class _Pool:
    """The module being built: its shared state and the functions that use it."""

    module: ir.Module
    num_threads: ir.Value  # i64: threads per loop when the call does not say
    busy: ir.Value  # i32 try-lock: a loop is running
    workers: ir.Value  # i64: workers started (read and written only under `busy`)
    job: ir.Value  # _JOB: the running loop
    next_chunk: ir.Value  # i64: the next chunk to claim
    result: ir.Value  # i64: the first nonzero code
    pending: ir.Value  # i32 futex word: offers neither withdrawn nor reported back
    caller_asleep: ir.Value  # i32: the caller sleeps on `pending`
    slots: ir.Value  # [MAX_THREADS x _SLOT]: one per worker

    def slot(self, b: ir.IRBuilder, w: ir.Value, field: int) -> ir.Value:
        slots_ty = ir.ArrayType(_SLOT, MAX_THREADS)
        return b.gep(self.slots, [_i64(0), w, _i32(field)], source_etype=slots_ty)

    def job_field(self, b: ir.IRBuilder, field: int) -> ir.Value:
        return b.gep(self.job, [_i32(0), _i32(field)], source_etype=_JOB)


def build_module(threaded: bool) -> ir.Module:
    """The runtime's module; with `threaded=False` every loop runs inline."""
    module = ir.Module(name="kdsl_runtime")
    pool = _Pool(
        module,
        num_threads=_global(module, I64, "num_threads", 1),
        busy=_global(module, I32, "busy"),
        workers=_global(module, I64, "workers"),
        job=_global(module, _JOB, "job"),
        next_chunk=_global(module, I64, "next_chunk"),
        result=_global(module, I64, "result"),
        pending=_global(module, I32, "pending"),
        caller_asleep=_global(module, I32, "caller_asleep"),
        slots=_global(module, ir.ArrayType(_SLOT, MAX_THREADS), "slots"),
    )
    run = _emit_parallel_for_threads(pool) if threaded else _emit_inline_only(pool)
    fn, b = _function(module, PARALLEL_FOR_TYPE, PARALLEL_FOR, internal=False)
    b.ret(b.call(run, [*fn.args, _i64(0)]))
    entries = [fn, run, _emit_set_num_threads(pool), _emit_reset(pool, threaded)]
    table, b = _function(module, ir.FunctionType(ir.VoidType(), [PTR]), "kdsl_runtime_entries")
    table.linkage = "external"
    for i, entry in enumerate(entries):  # addresses for Python: one JIT lookup for all
        b.store(entry, b.gep(table.args[0], [_i64(i)], source_etype=PTR))
    b.ret_void()
    return module


def _emit_set_num_threads(pool: _Pool) -> ir.Function:
    fn, b = _function(pool.module, ir.FunctionType(ir.VoidType(), [I64]), "kdsl_set_num_threads")
    _store_atomic(b, fn.args[0], pool.num_threads, "monotonic")
    b.ret_void()
    return fn


def _emit_reset(pool: _Pool, threaded: bool) -> ir.Function:
    """After fork: the child has no workers and no loop running."""
    fn, b = _function(pool.module, ir.FunctionType(ir.VoidType(), []), "kdsl_reset")
    if threaded:
        for word, ty in [(pool.busy, I32), (pool.pending, I32), (pool.caller_asleep, I32)]:
            b.store(ir.Constant(ty, 0), word)
        b.store(_i64(0), pool.workers)
        b.store(ir.Constant(ir.ArrayType(_SLOT, MAX_THREADS), None), pool.slots)
    b.ret_void()
    return fn


def _emit_inline_only(pool: _Pool) -> ir.Function:
    fn, b = _function(pool.module, _THREADS_TYPE, PARALLEL_FOR_THREADS, internal=False)
    task, closure, n, _, _ = fn.args
    with b.if_then(b.icmp_signed("<=", n, _i64(0))):
        b.ret(_i64(0))
    b.ret(b.call(task, [closure, _i64(0), n]))
    return fn


def _emit_parallel_for_threads(pool: _Pool) -> ir.Function:
    futex = _futex(pool.module)
    wait_while = _emit_wait_while(pool, futex)
    run_chunks = _emit_run_chunks(pool)
    worker = _emit_worker(pool, futex, wait_while, run_chunks)
    start_workers = _emit_start_workers(pool, worker)

    fn, b = _function(pool.module, _THREADS_TYPE, PARALLEL_FOR_THREADS, internal=False)
    task, closure, n, grain, threads = fn.args
    with b.if_then(b.icmp_signed("<=", n, _i64(0))):
        b.ret(_i64(0))
    default = b.load_atomic(pool.num_threads, "monotonic", 8, typ=I64)
    want = b.select(b.icmp_signed(">", threads, _i64(0)), threads, default)
    want = smin(b, smax(b, want, _i64(1)), _i64(MAX_THREADS))
    most = smax(b, b.sdiv(n, smax(b, grain, _i64(1))), _i64(1))  # chunks of >= grain
    chunks = smin(b, want, most)
    inline = fn.append_basic_block("inline")
    lock = fn.append_basic_block("lock")
    b.cbranch(b.icmp_signed("<=", chunks, _i64(1)), inline, lock)

    b.position_at_end(inline)  # one thread, a small loop, or the pool is busy
    b.ret(b.call(task, [closure, _i64(0), n]))

    b.position_at_end(lock)
    got = b.extract_value(b.cmpxchg(pool.busy, _i32(0), _i32(1), "acquire", "monotonic"), 1)
    locked = fn.append_basic_block("locked")
    b.cbranch(got, locked, inline)

    b.position_at_end(locked)
    have = b.load(pool.workers, typ=I64)
    need = b.sub(chunks, _i64(1))
    with b.if_then(b.icmp_signed("<", have, need), likely=False):
        b.call(start_workers, [have, need])
    have = b.load(pool.workers, typ=I64)  # fewer than needed if pthread_create failed
    threads = smin(b, chunks, b.add(have, _i64(1)))
    with b.if_then(b.icmp_signed("<=", threads, _i64(1)), likely=False):
        _store_atomic(b, _i32(0), pool.busy, "release")
        b.branch(inline)
    chunks = smin(b, b.mul(threads, _i64(CHUNKS_PER_THREAD)), most)

    # Plain stores: every worker is parked on its `go` word, and bumping it publishes them.
    for field, value in enumerate([task, closure, n, chunks]):
        b.store(value, pool.job_field(b, field))
    b.store(_i64(0), pool.next_chunk)
    b.store(_i64(0), pool.result)
    offered = b.sub(threads, _i64(1))
    b.store(b.trunc(offered, I32), pool.pending)
    with _count(b, offered) as w:  # offer the loop to workers 0 .. threads - 2
        go = pool.slot(b, w, 0)
        b.atomic_rmw("add", go, _i32(1), "seq_cst")  # even (idle) -> odd (offered)
        asleep = b.load_atomic(pool.slot(b, w, 1), "seq_cst", 4, typ=I32)
        with b.if_then(b.icmp_signed("!=", asleep, _i32(0)), likely=False):
            b.call(futex, [go, _i64(_FUTEX_WAKE_PRIVATE), _i64(1)])
    b.call(run_chunks, [])
    with _count(b, offered) as w:  # every chunk is taken: withdraw offers not yet accepted
        go = pool.slot(b, w, 0)
        value = b.load_atomic(go, "monotonic", 4, typ=I32)
        with b.if_then(b.trunc(value, I1)):
            withdrawn = b.cmpxchg(go, value, b.add(value, _i32(1)), "monotonic", "monotonic")
            with b.if_then(b.extract_value(withdrawn, 1)):
                b.atomic_rmw("sub", pool.pending, _i32(1), "monotonic")
    _wait_for_zero(b, pool, wait_while)
    result = b.load_atomic(pool.result, "monotonic", 8, typ=I64)
    _store_atomic(b, _i32(0), pool.busy, "release")
    b.ret(result)
    return fn


def _wait_for_zero(b: ir.IRBuilder, pool: _Pool, wait_while: ir.Function) -> None:
    """The caller waits until every worker that accepted has reported back."""
    before = b.block
    first = b.load_atomic(pool.pending, "acquire", 4, typ=I32)
    head = b.append_basic_block("wait")
    body = b.append_basic_block("wait.body")
    done = b.append_basic_block("wait.done")
    b.branch(head)
    b.position_at_end(head)
    seen = b.phi(I32)
    seen.add_incoming(first, before)
    b.cbranch(b.icmp_signed("==", seen, _i32(0)), done, body)
    b.position_at_end(body)
    seen.add_incoming(b.call(wait_while, [pool.pending, seen, pool.caller_asleep]), body)
    b.branch(head)
    b.position_at_end(done)


@contextlib.contextmanager
def _count(b: ir.IRBuilder, n: ir.Value) -> Iterator[ir.Value]:
    """`with _count(b, n) as i:` emits a loop for i in [0, n)."""
    before = b.block
    head, body, done = (b.append_basic_block(s) for s in ("for", "for.body", "for.done"))
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64)
    i.add_incoming(_i64(0), before)
    b.cbranch(b.icmp_signed("<", i, n), body, done)
    b.position_at_end(body)
    yield i
    i.add_incoming(b.add(i, _i64(1)), b.block)
    b.branch(head)
    b.position_at_end(done)


def _futex(module: ir.Module) -> ir.Function:
    """futex(word, op, value): `syscall(SYS_futex, word, op, value, NULL)`."""
    syscall = ir.Function(module, ir.FunctionType(I64, [I64], var_arg=True), name="syscall")
    fn, b = _function(module, ir.FunctionType(ir.VoidType(), [PTR, I64, I64]), "futex")
    word, op, value = fn.args
    b.call(syscall, [_i64(_SYS_FUTEX), word, op, value, ir.Constant(PTR, None)])
    b.ret_void()
    return fn


def _emit_wait_while(pool: _Pool, futex: ir.Function) -> ir.Function:
    """`i32 wait_while(ptr word, i32 seen, ptr asleep)`: the word's value once it is no
    longer `seen`. Spins first; then sets `asleep`, re-checks and sleeps on the futex."""
    module = pool.module
    pause = ir.Function(module, ir.FunctionType(ir.VoidType(), []), name="llvm.x86.sse2.pause")
    fn, b = _function(module, ir.FunctionType(I32, [PTR, I32, PTR]), "wait_while")
    word, seen, asleep = fn.args
    entry = b.block
    spin, sleep, wait, woke = (fn.append_basic_block(s) for s in ("spin", "sleep", "wait", "woke"))
    b.branch(spin)

    b.position_at_end(spin)
    i = b.phi(I64)
    i.add_incoming(_i64(0), entry)
    value = b.load_atomic(word, "acquire", 4, typ=I32)
    with b.if_then(b.icmp_signed("!=", value, seen), likely=False):
        b.ret(value)
    b.call(pause, [])
    i.add_incoming(b.add(i, _i64(1)), b.block)
    b.cbranch(b.icmp_signed("<", i, _i64(SPIN)), spin, sleep)

    b.position_at_end(sleep)
    _store_atomic(b, _i32(1), asleep, "seq_cst")
    value = b.load_atomic(word, "seq_cst", 4, typ=I32)
    b.cbranch(b.icmp_signed("!=", value, seen), woke, wait)

    b.position_at_end(wait)  # returns at once if the word no longer holds `seen`
    b.call(futex, [word, _i64(_FUTEX_WAIT_PRIVATE), b.zext(seen, I64)])
    _store_atomic(b, _i32(0), asleep, "seq_cst")
    value2 = b.load_atomic(word, "acquire", 4, typ=I32)
    with b.if_then(b.icmp_signed("!=", value2, seen)):
        b.ret(value2)
    b.branch(sleep)

    b.position_at_end(woke)
    _store_atomic(b, _i32(0), asleep, "seq_cst")
    b.ret(value)
    return fn


def _emit_run_chunks(pool: _Pool) -> ir.Function:
    """Claim chunks of the running loop until none is left; record the first error."""
    fn, b = _function(pool.module, ir.FunctionType(ir.VoidType(), []), "run_chunks")
    task = b.load(pool.job_field(b, 0), typ=_TASK_PTR)
    closure = b.load(pool.job_field(b, 1), typ=PTR)
    n = b.load(pool.job_field(b, 2), typ=I64)
    chunks = b.load(pool.job_field(b, 3), typ=I64)
    size, extra = b.sdiv(n, chunks), b.srem(n, chunks)  # the first `extra` get one more
    claim, body, done = (fn.append_basic_block(s) for s in ("claim", "body", "done"))
    b.branch(claim)

    b.position_at_end(claim)
    c = b.atomic_rmw("add", pool.next_chunk, _i64(1), "monotonic")
    b.cbranch(b.icmp_signed("<", c, chunks), body, done)

    b.position_at_end(body)
    begin = b.add(b.mul(c, size), smin(b, c, extra))
    end = b.add(b.add(begin, size), b.zext(b.icmp_signed("<", c, extra), I64))
    code = b.call(task, [closure, begin, end])
    with b.if_then(b.icmp_signed("!=", code, _i64(0)), likely=False):
        b.cmpxchg(pool.result, _i64(0), code, "monotonic", "monotonic")
    b.branch(claim)

    b.position_at_end(done)
    b.ret_void()
    return fn


def _emit_worker(
    pool: _Pool, futex: ir.Function, wait_while: ir.Function, run_chunks: ir.Function
) -> ir.Function:
    """`ptr worker(ptr slot)`: forever wait for an offer (`go` odd), accept it unless the
    caller withdrew it first (both by cmpxchg to the next even value), run chunks, and
    report back."""
    fn, b = _function(pool.module, ir.FunctionType(PTR, [PTR]), "worker")
    slot = fn.args[0]
    go = b.gep(slot, [_i32(0), _i32(0)], source_etype=_SLOT)
    asleep = b.gep(slot, [_i32(0), _i32(1)], source_etype=_SLOT)
    entry = b.block
    loop, accept, accepted = (fn.append_basic_block(s) for s in ("loop", "accept", "accepted"))
    b.branch(loop)

    b.position_at_end(loop)
    seen = b.phi(I32)  # a new worker's `go` is 0: no offer yet
    seen.add_incoming(_i32(0), entry)
    value = b.call(wait_while, [go, seen, asleep])
    idle = b.add(value, b.zext(b.trunc(value, I1), I32))  # the next even value
    seen.add_incoming(idle, loop)
    b.cbranch(b.trunc(value, I1), accept, loop)

    b.position_at_end(accept)
    seen.add_incoming(idle, accept)
    took = b.cmpxchg(go, value, idle, "acquire", "monotonic")
    b.cbranch(b.extract_value(took, 1), accepted, loop)

    b.position_at_end(accepted)
    b.call(run_chunks, [])
    left = b.atomic_rmw("sub", pool.pending, _i32(1), "seq_cst")
    with b.if_then(b.icmp_signed("==", left, _i32(1))):  # the last one: wake the caller
        caller_asleep = b.load_atomic(pool.caller_asleep, "seq_cst", 4, typ=I32)
        with b.if_then(b.icmp_signed("!=", caller_asleep, _i32(0)), likely=False):
            b.call(futex, [pool.pending, _i64(_FUTEX_WAKE_PRIVATE), _i64(1)])
    seen.add_incoming(idle, b.block)
    b.branch(loop)
    return fn


def _emit_start_workers(pool: _Pool, worker: ir.Function) -> ir.Function:
    """`void start_workers(i64 have, i64 want)`: workers have .. want-1, with every signal
    blocked (the mask is inherited) so that signals go to Python's threads."""
    module = pool.module
    create = ir.Function(module, ir.FunctionType(I32, [PTR, PTR, PTR, PTR]), "pthread_create")
    detach = ir.Function(module, ir.FunctionType(I32, [I64]), "pthread_detach")
    fill = ir.Function(module, ir.FunctionType(I32, [PTR]), "sigfillset")
    mask = ir.Function(module, ir.FunctionType(I32, [I32, PTR, PTR]), "pthread_sigmask")
    fn, b = _function(module, ir.FunctionType(ir.VoidType(), [I64, I64]), "start_workers")
    have, want = fn.args
    sigset = ir.ArrayType(ir.IntType(8), _SIGSET_BYTES)
    blocked, saved, tid = b.alloca(sigset), b.alloca(sigset), b.alloca(I64)
    blocked.align = saved.align = 8
    blocked.type = saved.type = tid.type = PTR  # untyped pointers
    b.call(fill, [blocked])
    b.call(mask, [_i32(_SIG_BLOCK), blocked, saved])
    entry = b.block
    head, body, started, done = (
        fn.append_basic_block(s) for s in ("head", "body", "started", "done")
    )
    b.branch(head)

    b.position_at_end(head)
    w = b.phi(I64)
    w.add_incoming(have, entry)
    b.store(w, pool.workers)
    b.cbranch(b.icmp_signed("<", w, want), body, done)

    b.position_at_end(body)
    rc = b.call(create, [tid, ir.Constant(PTR, None), worker, pool.slot(b, w, 0)])
    b.cbranch(b.icmp_signed("==", rc, _i32(0)), started, done)

    b.position_at_end(started)
    b.call(detach, [b.load(tid, typ=I64)])
    w.add_incoming(b.add(w, _i64(1)), started)
    b.branch(head)

    b.position_at_end(done)
    b.call(mask, [_i32(_SIG_SETMASK), saved, ir.Constant(PTR, None)])
    b.ret_void()
    return fn


# --- Python side ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Runtime:
    parallel_for_threads: ctypes._CFuncPtr  # type: ignore[name-defined]
    set_num_threads: ctypes._CFuncPtr  # type: ignore[name-defined]
    reset: ctypes._CFuncPtr  # type: ignore[name-defined]


_lock = threading.Lock()
_runtime: _Runtime | None = None


def _default_threads() -> int:
    """KDSL_NUM_THREADS, else the cores this process may run on; at most MAX_THREADS."""
    wanted = CONFIG.num_threads or available_cores()
    if wanted > MAX_THREADS:
        warnings.warn(
            f"kdsl: {wanted} threads asked for (KDSL_NUM_THREADS or the cores), but the "
            f"pool has {MAX_THREADS} slots: parallel loops use {MAX_THREADS}",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )
    return min(wanted, MAX_THREADS)


_num_threads = _default_threads()


def _object_code() -> bytes:
    """The pool's machine code, from the object store when a process made it before."""
    pool = has_thread_pool()
    key = objects.object_key("runtime", pool)
    code = objects.STORE.load(key)
    if not isinstance(code, bytes):
        code = jit.emit_object(jit.optimize(build_module(pool)))
        objects.STORE.save(key, code)
    return code


def ensure_runtime() -> None:
    """Build and JIT the pool once per process (thread-safe) and register its entry points
    with `llvm.add_symbol`, so kernel modules that call them can be loaded."""
    global _runtime
    if _runtime is not None:
        return
    with _lock:
        if _runtime is not None:
            return
        addresses = (ctypes.c_uint64 * len(_ENTRIES))()
        entries = jit.load_object(_object_code(), "kdsl_runtime_entries")
        ctypes.CFUNCTYPE(None, ctypes.c_void_p)(entries)(addresses)
        for name, address in zip(_ENTRIES, addresses):
            llvm.add_symbol(name, address)
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        runtime = _Runtime(
            ctypes.CFUNCTYPE(i64, ptr, ptr, i64, i64, i64)(addresses[1]),
            ctypes.CFUNCTYPE(None, i64)(addresses[2]),
            ctypes.CFUNCTYPE(None)(addresses[3]),
        )
        runtime.set_num_threads(_num_threads)
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _runtime = runtime


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    if _runtime is not None:
        _runtime.reset()


def set_num_threads(n: int) -> None:
    """Threads per parallel loop from now on (the calling thread included). More than
    before starts workers on the next loop; fewer leaves the extra ones asleep."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, Integral):  # (np.int64(3), as from NumPy)
        raise TypeError(f"set_num_threads({n!r}): the thread count must be an int")
    n = int(n)
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(
            f"set_num_threads({n}): the thread count must be between 1 and {MAX_THREADS} "
            f"(this machine has {available_cores()} cores available)"
        )
    with _lock:
        _num_threads = n
        if _runtime is not None:
            _runtime.set_num_threads(n)


def get_num_threads() -> int:
    """Threads per parallel loop: set_num_threads, else KDSL_NUM_THREADS, else the cores
    this process may run on."""
    return _num_threads


@contextlib.contextmanager
def num_threads_within(count: int | None) -> Iterator[None]:
    """Parallel loops on `count` threads inside the block (None: as they are), the count
    before restored after it (tuning for a given count, timing a row on it)."""
    before = get_num_threads()
    set_num_threads(count or before)
    try:
        yield
    finally:
        set_num_threads(before)


def call_parallel_for(
    task: int, closure: int | None, n: int, grain: int = 1, threads: int = 0
) -> int:
    """`kdsl_parallel_for` called from Python (tests, benchmarks): `task` is the address of
    a JIT-compiled `i64 (ptr, i64, i64)`. The GIL is released during the call."""
    ensure_runtime()
    assert _runtime is not None
    return int(_runtime.parallel_for_threads(task, closure, n, grain, threads))
