"""parallelize(loop, threads=n) runs that loop on n threads, whatever the default."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np

import kdsl as kd


def test_parallelize_with_a_thread_count_is_right_and_uses_it():
    @kd.kernel
    def heavy(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i] = kd.sum(kd.sqrt(x[i, j] * x[i, j] + 1.0), over=j)

    @heavy.schedule(kd.cpu)
    def _(s):
        s.parallelize("i", threads=3)

    x = np.random.default_rng(0).random((301, 2000))
    y = np.empty(301)
    before = threading.active_count()  # pool workers are native threads, not Python's
    heavy(x, y)
    assert threading.active_count() == before
    np.testing.assert_allclose(y, np.sqrt(x * x + 1).sum(axis=1), rtol=1e-12)
    assert 's.parallelize("i", 3)' in str(heavy.schedule_of(x, y))


SCRIPT = """
import os, numpy as np, kdsl as kd

@kd.kernel
def heavy(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i] = kd.sum(kd.sqrt(x[i, j] * x[i, j] + 1.0), over=j)

@heavy.schedule(kd.cpu)
def _(s):
    s.parallelize("i", threads=4)

kd.set_num_threads(1)  # the default says one thread; the schedule says four
x, y = np.ones((64, 4096)), np.empty(64)
before = len(os.listdir("/proc/self/task"))
heavy(x, y)
print(len(os.listdir("/proc/self/task")) - before)
"""


def test_the_thread_count_of_a_schedule_overrides_the_default():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == 3  # three pool workers beside the calling thread


SIZED_BY_LOCALS = """
import os, numpy as np, kdsl as kd

@kd.kernel
def row_sums(x, y):
    for t in kd.grid(x.shape[0]):
        n = kd.local(x.shape[1] - t % 2, kd.i64)  # every other row one value shorter
        j = kd.indices(n)
        y[t] = kd.sum(x[t, j], over=j)

@row_sums.schedule(kd.cpu)
def _(s):
    s.parallelize("t")

kd.set_num_threads(2)
rng = np.random.default_rng(0)
for cols in {cols}:
    x, y = rng.random((8, cols)), np.empty(8)
    before = len(os.listdir("/proc/self/task"))
    row_sums(x, y)
    want = [x[t, : cols - t % 2].sum() for t in range(8)]
    assert np.allclose(y, want), (y, want)
    print(len(os.listdir("/proc/self/task")) - before)
"""


def test_a_loop_sized_by_the_bodys_locals_is_worth_threads_when_large():
    """The pool's size estimate reads an inner extent through the locals that define it
    (here 40000 values a row, as the first row has): eight such rows are worth two
    threads, eight rows of 100 are not."""
    script = SIZED_BY_LOCALS.format(cols=[100, 40000])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1"]  # no worker for the small call, one for the large
