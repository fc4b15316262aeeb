"""The native thread pool (kdsl/targets/cpu/runtime.py), driven through its ctypes hook
with tasks written in LLVM IR."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from llvmlite import ir

from kdsl.targets.cpu import jit, runtime

I64 = ir.IntType(64)
_names = itertools.count()

needs_pool = pytest.mark.skipif(
    not runtime.has_thread_pool(), reason="the pool runs loops inline on this platform"
)

Body = Callable[[ir.IRBuilder, ir.Function], ir.Value]


def _const(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _define(module: ir.Module, name: str, body: Body) -> ir.Function:
    """`i64 name(ptr closure, i64 begin, i64 end)` whose code `body` emits (it returns the
    task's result)."""
    fn = ir.Function(module, runtime.TASK_TYPE, name=name)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(body(b, fn))
    return fn


def _task(body: Body) -> int:
    """A task JIT-compiled in a module of its own: its address."""
    name = f"test_task_{next(_names)}"
    module = ir.Module(name=name)
    _define(module, name, body)
    return jit.load_object(jit.emit_object(jit.optimize(module)), name)


def _for_each(b: ir.IRBuilder, begin: ir.Value, end: ir.Value, step: Callable) -> None:
    """for i in [begin, end): step(i)"""
    before = b.block
    head, body, done = (b.append_basic_block(s) for s in ("head", "body", "done"))
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64)
    i.add_incoming(begin, before)
    b.cbranch(b.icmp_signed("<", i, end), body, done)
    b.position_at_end(body)
    step(i)
    i.add_incoming(b.add(i, _const(1)), b.block)
    b.branch(head)
    b.position_at_end(done)


def _add_odd(b: ir.IRBuilder, out: ir.Value, i: ir.Value) -> None:
    """out[i] += 2i + 1, atomically: an element written twice shows."""
    value = b.add(b.mul(i, _const(2)), _const(1))
    b.atomic_rmw("add", b.gep(out, [i], source_etype=I64), value, "monotonic")


def _fill_body(b: ir.IRBuilder, fn: ir.Function) -> ir.Value:
    out, begin, end = fn.args
    _for_each(b, begin, end, lambda i: _add_odd(b, out, i))
    return _const(0)


@pytest.fixture(scope="module")
def fill() -> int:
    """closure: an int64 array; out[i] += 2i + 1 for i in [begin, end)."""
    return _task(_fill_body)


@pytest.fixture(scope="module")
def empty() -> int:
    return _task(lambda b, fn: _const(0))


@pytest.fixture(scope="module")
def log_chunks() -> int:
    """closure: an int64 array [count, begin0, end0, begin1, end1, ...]."""

    def body(b: ir.IRBuilder, fn: ir.Function) -> ir.Value:
        log, begin, end = fn.args
        k = b.atomic_rmw("add", log, _const(1), "monotonic")
        slot = b.add(b.mul(k, _const(2)), _const(1))
        b.store(begin, b.gep(log, [slot], source_etype=I64))
        b.store(end, b.gep(log, [b.add(slot, _const(1))], source_etype=I64))
        return _const(0)

    return _task(body)


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    before = runtime.get_num_threads()
    yield
    runtime.set_num_threads(before)


def _within(seconds: float, fn: Callable[[], None]) -> None:
    """Run fn on a thread; fail (instead of hanging) if it takes longer than `seconds`."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: a hang in the pool"
    if errors:
        raise errors[0]


def _fill_and_check(fill: int, n: int) -> None:
    out = np.zeros(n, np.int64)
    assert runtime.call_parallel_for(fill, out.ctypes.data, n) == 0
    np.testing.assert_array_equal(out, 2 * np.arange(n) + 1)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 1000, 100003])
def test_every_index_runs_once(fill: int, threads: int, n: int) -> None:
    runtime.set_num_threads(threads)
    _within(10, lambda: _fill_and_check(fill, n))


@needs_pool
@pytest.mark.parametrize(
    ("n", "grain", "threads"),
    [(10, 1, 3), (100, 1, 8), (100, 30, 8), (100, 60, 2), (5, 10, 4), (7, 1, 8), (1, 1, 2)],
)
def test_chunks_are_contiguous_balanced_and_at_least_grain(
    log_chunks: int, n: int, grain: int, threads: int
) -> None:
    log = np.zeros(1 + 2 * threads * runtime.CHUNKS_PER_THREAD, np.int64)
    assert runtime.call_parallel_for(log_chunks, log.ctypes.data, n, grain, threads) == 0
    count = int(log[0])
    most = max(1, n // grain)
    assert count == (
        1 if min(threads, most) == 1 else min(threads * runtime.CHUNKS_PER_THREAD, most)
    )
    chunks = sorted(zip(log[1 : 1 + 2 * count : 2], log[2 : 2 + 2 * count : 2]))
    assert chunks[0][0] == 0 and chunks[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    sizes = [end - begin for begin, end in chunks]
    assert max(sizes) - min(sizes) <= 1
    assert n < grain or min(sizes) >= grain


@pytest.fixture(scope="module")
def rendezvous() -> int:
    """closure: an int64 array [arrived, finished, threads]. Each chunk arrives and waits
    until `threads` chunks have (returning 1 if they don't come: the threads did not run
    at once); then it finishes, every chunk but the first after a delay."""

    def body(b: ir.IRBuilder, fn: ir.Function) -> ir.Value:
        state, begin, _ = fn.args
        arrived, finished = state, b.gep(state, [_const(1)], source_etype=I64)
        chunks = b.load(b.gep(state, [_const(2)], source_etype=I64), typ=I64)
        b.atomic_rmw("add", arrived, _const(1), "seq_cst")
        tries = b.alloca(I64)
        b.store(_const(0), tries)
        wait, again, met, late = (b.append_basic_block(s) for s in ("wait", "again", "met", "late"))
        b.branch(wait)
        b.position_at_end(wait)
        here = b.load_atomic(arrived, "seq_cst", 8, typ=I64)
        b.cbranch(b.icmp_signed(">=", here, chunks), met, again)
        b.position_at_end(again)
        count = b.add(b.load(tries, typ=I64), _const(1))
        b.store(count, tries)
        b.cbranch(b.icmp_signed("<", count, _const(1 << 33)), wait, late)
        b.position_at_end(late)
        b.ret(_const(1))
        b.position_at_end(met)

        def delay(i: ir.Value) -> None:
            b.atomic_rmw("add", tries, _const(0), "seq_cst")

        with b.if_then(b.icmp_signed("!=", begin, _const(0))):
            _for_each(b, _const(0), _const(200_000), delay)
        b.atomic_rmw("add", finished, _const(1), "seq_cst")
        return _const(0)

    return _task(body)


@needs_pool
@pytest.mark.parametrize("threads", [2, 3, 8])
def test_chunks_run_at_once_and_finish_before_the_call_returns(
    rendezvous: int, threads: int
) -> None:
    runtime.set_num_threads(threads)
    state = np.array([0, 0, threads], np.int64)
    codes: list[int] = []
    _within(20, lambda: codes.append(runtime.call_parallel_for(rendezvous, state.ctypes.data, 99)))
    assert codes == [0], "the threads' first chunks did not all run at the same time"
    chunks = threads * runtime.CHUNKS_PER_THREAD
    assert state[1] == chunks, "the call returned before every chunk had finished"


@needs_pool
def test_default_thread_count_sets_the_chunks(log_chunks: int) -> None:
    runtime.set_num_threads(3)
    log = np.zeros(1 + 2 * 3 * runtime.CHUNKS_PER_THREAD, np.int64)
    assert runtime.call_parallel_for(log_chunks, log.ctypes.data, 1000) == 0
    assert log[0] == 3 * runtime.CHUNKS_PER_THREAD


def test_error_code_is_returned_and_pool_still_works(fill: int) -> None:
    def body(b: ir.IRBuilder, fn: ir.Function) -> ir.Value:
        bad_index, begin, end = fn.args  # closure: [bad index]
        bad = b.load(bad_index, typ=I64)
        hit = b.and_(b.icmp_signed("<=", begin, bad), b.icmp_signed("<", bad, end))
        return b.select(hit, _const(7), _const(0))

    failing = _task(body)
    runtime.set_num_threads(2)
    for bad in (0, 500, 999):
        index = np.array([bad], np.int64)
        assert runtime.call_parallel_for(failing, index.ctypes.data, 1000) == 7
    index = np.array([5000], np.int64)
    assert runtime.call_parallel_for(failing, index.ctypes.data, 1000) == 0
    _within(10, lambda: _fill_and_check(fill, 10000))


def test_one_of_the_codes_is_returned_when_every_chunk_fails() -> None:
    every = _task(lambda b, fn: b.add(fn.args[1], _const(1)))  # begin + 1: never 0
    runtime.set_num_threads(4)
    assert runtime.call_parallel_for(every, None, 100) in {1, 26, 51, 76}


def test_nested_loop_inside_a_task() -> None:
    """The outer task calls kdsl_parallel_for by name, resolved through llvm.add_symbol;
    the inner loops find the pool busy and run inline."""

    def body(b: ir.IRBuilder, fn: ir.Function) -> ir.Value:
        inner = _define(fn.module, f"{fn.name}.inner", _fill_body)
        parallel_for = runtime.declare_parallel_for(fn.module)
        closure, begin, end = fn.args  # closure: [out address, row length]
        out = b.load(closure, typ=ir.PointerType())
        cols = b.load(b.gep(closure, [_const(1)], source_etype=I64), typ=I64)
        codes = b.alloca(I64)
        b.store(_const(0), codes)

        def row(i: ir.Value) -> None:
            start = b.gep(out, [b.mul(i, cols)], source_etype=I64)
            code = b.call(parallel_for, [inner, start, cols, _const(1)])
            b.store(b.or_(b.load(codes, typ=I64), code), codes)

        _for_each(b, begin, end, row)
        return b.load(codes, typ=I64)

    runtime.ensure_runtime()
    outer = _task(body)
    runtime.set_num_threads(2)
    out = np.zeros((37, 50), np.int64)
    closure = np.array([out.ctypes.data, 50], np.int64)
    codes: list[int] = []
    _within(10, lambda: codes.append(runtime.call_parallel_for(outer, closure.ctypes.data, 37)))
    assert codes == [0]
    np.testing.assert_array_equal(out, np.broadcast_to(2 * np.arange(50) + 1, (37, 50)))


def test_concurrent_calls_from_python_threads(fill: int) -> None:
    runtime.set_num_threads(2)
    outs = [np.zeros(5000, np.int64) for _ in range(4)]
    codes: set[int] = set()

    def calls(out: np.ndarray) -> None:
        for _ in range(200):
            codes.add(runtime.call_parallel_for(fill, out.ctypes.data, len(out)))

    def all_threads() -> None:
        threads = [threading.Thread(target=calls, args=(out,)) for out in outs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    _within(20, all_threads)
    assert codes == {0}
    for out in outs:
        np.testing.assert_array_equal(out, 200 * (2 * np.arange(5000) + 1))


def test_many_empty_calls(empty: int) -> None:
    def calls() -> None:
        for threads in (2, 3):
            runtime.set_num_threads(threads)
            codes = {runtime.call_parallel_for(empty, None, k % 4 + 2) for k in range(5000)}
            assert codes == {0}

    _within(20, calls)


def test_thread_count_is_validated() -> None:
    for bad in (0, -1, runtime.MAX_THREADS + 1):
        with pytest.raises(ValueError, match="thread count must be between 1 and"):
            runtime.set_num_threads(bad)
    for wrong in ("2", 2.0, True):
        with pytest.raises(TypeError, match="must be an int"):
            runtime.set_num_threads(wrong)  # type: ignore[arg-type]
    runtime.set_num_threads(5)
    assert runtime.get_num_threads() == 5
    runtime.set_num_threads(np.int64(3))  # (a NumPy integer: refused before)
    assert runtime.get_num_threads() == 3 and type(runtime.get_num_threads()) is int


def test_default_thread_count_follows_the_environment() -> None:
    env = dict(os.environ, KDSL_NUM_THREADS="3")
    code = "from kdsl.targets.cpu import runtime; print(runtime.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert out.stdout.strip() == b"3", out.stderr


def test_process_exits_with_workers_asleep() -> None:
    """Workers are never joined: exiting must not wait for them."""
    code = (
        "from llvmlite import ir\n"
        "from kdsl.targets.cpu import jit, runtime\n"
        "m = ir.Module()\n"
        "f = ir.Function(m, runtime.TASK_TYPE, name='empty')\n"
        "ir.IRBuilder(f.append_basic_block()).ret(ir.Constant(ir.IntType(64), 0))\n"
        "task = jit.load_object(jit.emit_object(jit.optimize(m)), 'empty')\n"
        "runtime.set_num_threads(4)\n"
        "assert runtime.call_parallel_for(task, None, 8) == 0\n"
        "import time; time.sleep(0.01)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr


@needs_pool
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_forked_child_starts_its_own_workers(fill: int, rendezvous: int) -> None:
    runtime.set_num_threads(2)
    _fill_and_check(fill, 1000)  # the parent's workers exist
    pid = os.fork()
    if pid == 0:  # the child's loop must run on two threads: its own workers
        state = np.array([0, 0, 2], np.int64)
        code = runtime.call_parallel_for(rendezvous, state.ctypes.data, 10)
        os._exit(0 if code == 0 and state[1] == 2 * runtime.CHUNKS_PER_THREAD else 1)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung in the pool")
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_inline_only_module_compiles() -> None:
    ref = jit.optimize(runtime.build_module(threaded=False))
    assert "pthread_create" not in str(ref)
