"""Write the tutorial notebooks (`python notebooks/make_notebooks.py`).

The notebooks are generated from this file so that they are reviewed as Python: edit the
cells here, run the script, commit both. They are saved without outputs and with stable
cell ids, so a regeneration that changes nothing changes no bytes.
`tests/test_notebooks.py` executes them.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

Cell = tuple[str, str]  # ("md" | "code", source)


def md(text: str) -> Cell:
    return ("md", textwrap.dedent(text).strip())


def code(text: str) -> Cell:
    return ("code", textwrap.dedent(text).strip())


# --------------------------------------------------------------------- 01-quickstart

QUICKSTART: list[Cell] = [
    md(
        """
        # kdsl quickstart

        kdsl is a kernel language embedded in Python. You write a kernel as a plain Python
        function, decorate it with `@kd.kernel`, and call it on NumPy arrays. On the first
        call kdsl *traces* the function into a loop program (its IR), picks a schedule,
        compiles it with LLVM for this CPU and runs it. Later calls with arrays of the same
        dtypes reuse the compiled code.

        This notebook writes two kernels, checks them against NumPy, looks at what kdsl
        made of them, and shows what happens when something goes wrong.
        """
    ),
    code(
        """
        import time

        import numpy as np

        import kdsl as kd

        print("kdsl", kd.__version__)
        """
    ),
    md(
        """
        ## A matmul in three lines

        `kd.indices(...)` gives *index variables*, one per extent. A statement that uses
        index variables is a loop over all of them: `C[i, j] = ...` runs for every `i` and
        `j`. `kd.sum(..., over=k)` is a reduction over `k`. The extents come from the
        arguments' shapes, so the kernel works for any size.
        """
    ),
    code(
        """
        @kd.kernel
        def matmul(A, B, C):
            i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
            C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)
        """
    ),
    md(
        """
        Call it like a function. The output `C` is an argument the kernel writes into.
        The first call includes tracing and compiling; the second is just the run.
        """
    ),
    code(
        """
        rng = np.random.default_rng(0)
        a = rng.standard_normal((64, 48), dtype=np.float32)
        b = rng.standard_normal((48, 32), dtype=np.float32)
        c = np.empty((64, 32), np.float32)

        for attempt in ("first call", "second call"):
            start = time.perf_counter()
            matmul(a, b, c)
            print(f"{attempt}: {1e3 * (time.perf_counter() - start):.2f} ms")

        print("max |kdsl - numpy| =", np.abs(c - a @ b).max())
        np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)
        """
    ),
    md(
        """
        ## An elementwise kernel

        One index variable, one statement: SiLU, `x * sigmoid(x)`. Shapes are dynamic, so
        the same compiled code serves arrays of any length (the vector loop gets a masked
        vector tail for lengths that are not a multiple of the vector width).
        """
    ),
    code(
        """
        @kd.kernel
        def silu(x, y):
            i = kd.indices(x.shape[0])
            y[i] = x[i] * kd.sigmoid(x[i])


        for n in (1000, 37):
            x = rng.standard_normal(n, dtype=np.float32)
            y = np.empty_like(x)
            silu(x, y)
            np.testing.assert_allclose(y, x / (1 + np.exp(-x)), rtol=1e-5, atol=1e-6)
            print(f"n = {n}: matches NumPy")

        silu.stats()
        """
    ),
    md(
        """
        `silu.stats()` counts calls and compilations: two calls, one compilation.

        ## Looking inside

        `kernel.ir(*args)` shows the traced loop IR for those arguments: the implicit
        loops, each marked `parallel` or `reduction`, and the shape checks kdsl derived
        from the subscripts (`i` indexes both `A` and `C`, so their first dimensions must
        agree). In a notebook it displays as a block of text.
        """
    ),
    code(
        """
        matmul.ir(a, b, c)
        """
    ),
    md(
        """
        `kernel.lowered(*args)` is the IR after scheduling, as the code generator sees it.
        This kernel has no schedule of its own, so it got the *default schedule*: the `j`
        loop (unit stride in `B` and `C`) runs as 16-wide vector code with a masked vector
        tail (`j.1`: one more vector with the lanes past the end switched off), and the
        outer `i` loop may run on several cores. Each loop's comment gives its
        kind from the algorithm (`parallel`, `reduction`), then what the schedule made of
        it (`parallelized` for multi-core, `vectorized(16)`).
        """
    ),
    code(
        """
        matmul.lowered(a, b, c)
        """
    ),
    md(
        """
        `kernel.asm(*args)` is the machine code. On a CPU with AVX-512 the vector loop
        uses the 512-bit `zmm` registers (on an AVX2 CPU you would see `ymm`). Here are
        the first fused multiply-adds:
        """
    ),
    code(
        """
        asm = matmul.asm(a, b, c)
        fmas = [line.strip() for line in asm.splitlines() if "vfmadd" in line]
        print(f"{len(asm.splitlines())} lines of assembly, {len(fmas)} FMA instructions")
        print("\\n".join(fmas[:6]))
        """
    ),
    md(
        """
        `kernel.llvm(*args)` shows the LLVM IR in the same way. And `stats()` tells you
        how often a kernel was called and compiled; `objects_loaded` counts the
        compilations whose machine code came from kdsl's cache directory instead of LLVM.
        """
    ),
    code(
        """
        matmul.stats()
        """
    ),
    md(
        """
        ## When something is wrong

        Errors are raised before any code runs and point at *your* line. Passing `a` twice
        makes `k` range over 48 columns of `A` and 64 rows of `B`:
        """
    ),
    code(
        """
        try:
            matmul(a, a, c)
        except kd.ShapeError as e:
            print(e)
        """
    ),
    md(
        """
        Python `if` cannot branch on a value that is only known when the kernel runs. kdsl
        says so at trace time, and says what to write instead:
        """
    ),
    code(
        """
        @kd.kernel
        def relu(x, y):
            i = kd.indices(x.shape[0])
            if x[i] > 0:
                y[i] = x[i]


        try:
            relu(x, y)
        except kd.TraceError as e:
            print(e)
        """
    ),
    code(
        """
        @kd.kernel
        def relu(x, y):
            i = kd.indices(x.shape[0])
            y[i] = kd.where(x[i] > 0, x[i], 0.0)


        relu(x, y)
        np.testing.assert_array_equal(y, np.maximum(x, 0))
        print("relu matches NumPy")
        """
    ),
    md(
        """
        ## Editing a kernel

        Notebooks invite editing a cell and running it again. kdsl identifies compiled
        code by the *traced IR*, not by the function's name or file, so a changed kernel
        is always compiled afresh, never served stale code. Here `silu` becomes the
        sigmoid approximation of GELU, `x * sigmoid(1.702 x)`:
        """
    ),
    code(
        """
        x = np.linspace(-3, 3, 7, dtype=np.float32)
        y = np.empty_like(x)
        silu(x, y)
        before = y.copy()
        hash_before = silu.ir(x, y).hash


        @kd.kernel
        def silu(x, y):
            i = kd.indices(x.shape[0])
            y[i] = x[i] * kd.sigmoid(1.702 * x[i])


        silu(x, y)
        print("before:", before)
        print("after: ", y)
        print("IR hash changed:", silu.ir(x, y).hash != hash_before)
        silu.stats()
        """
    ),
    md(
        """
        The new definition has a new IR hash, so it got code of its own (the first time
        this cell runs, `objects_loaded` is 0: LLVM compiled it). Put the original
        definition back and kdsl finds the machine code it compiled earlier in its cache
        directory (`objects_loaded` is 1): LLVM does not run again, in this process or in
        a new one.
        """
    ),
    code(
        """
        @kd.kernel
        def silu(x, y):
            i = kd.indices(x.shape[0])
            y[i] = x[i] * kd.sigmoid(x[i])


        silu(x, y)
        np.testing.assert_allclose(y, before)
        silu.stats()
        """
    ),
    md(
        """
        Next: `02-schedules.ipynb` makes the matmul fast with a schedule.
        """
    ),
]

# ---------------------------------------------------------------------- 02-schedules

SCHEDULES: list[Cell] = [
    md(
        """
        # Schedules: from a naive matmul to a fast one

        A kdsl kernel says *what* to compute. A *schedule* says *how*: which loops to split
        into tiles, which to run as vector code or on several cores, in which order. The
        algorithm is written once; each schedule below wraps the same function in a new
        kernel, so we can compare them side by side. Every step is checked: an illegal one
        raises `kd.ScheduleError`, and the result never changes beyond floating-point
        rounding.
        """
    ),
    code(
        """
        %matplotlib inline
        import time

        import matplotlib.pyplot as plt
        import numpy as np

        import kdsl as kd


        def matmul_algorithm(A, B, C):
            i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
            C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)


        def median_time(fn, *args, repeats=9):
            \"\"\"Median seconds per call, after one warm-up call (which compiles).\"\"\"
            fn(*args)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(*args)
                times.append(time.perf_counter() - start)
            return float(np.median(times))


        N = 512
        rng = np.random.default_rng(0)
        a = rng.standard_normal((N, N), dtype=np.float32)
        b = rng.standard_normal((N, N), dtype=np.float32)
        c = np.empty((N, N), np.float32)
        expected = a @ b
        FLOPS = 2 * N**3
        steps = {}  # step name -> kernel
        """
    ),
    md(
        """
        ## (a) The default schedule

        A kernel without a schedule gets a default one: vectorize the innermost loop that
        walks memory with unit stride (`j`) and run the outermost loop (`i`) on all
        cores. `kernel.schedule_of(*args)` prints the steps that were applied.
        """
    ),
    code(
        """
        naive = kd.kernel(matmul_algorithm, name="naive")
        steps["(a) default"] = naive
        print(naive.schedule_of(a, b, c))
        """
    ),
    md(
        """
        ## (b) Tile and vectorize

        `s.tile("i", "j", 8, 16)` splits `i` into `io` (blocks of 8 rows) and `ii` (the row
        within the block), and `j` likewise with 16 columns, so the loop order becomes
        `io, jo, ii, ji`. `s.vectorize(ji, 16)` makes the 16 columns one AVX-512 vector.
        On its own this changes little: for each element of `C` the `k` loop still runs
        to the end before the next starts, and this schedule does not parallelize.
        """
    ),
    code(
        """
        tiled = kd.kernel(matmul_algorithm, name="tiled")


        @tiled.schedule(kd.cpu)
        def _(s):
            io, jo, ii, ji = s.tile("i", "j", 8, 16)
            s.vectorize(ji, 16)


        steps["(b) tile + vectorize"] = tiled
        """
    ),
    md(
        """
        ## (c) Split `k`, reorder: a register tile

        Now split `k` into panels of 256 and move the `ii` loop *inside* the `k` loop:
        `reorder(io, jo, ko, ji, ki, ii)`. For each `k`, one vector of `B` is loaded and
        used for all 8 rows of the tile, and the 8 × 16 block of `C` being summed stays in
        8 vector registers while `k` runs. Reordering a reduction reassociates the
        floating-point sum; kdsl allows it unless the kernel says `strict_fp=True`.
        """
    ),
    code(
        """
        register_tile = kd.kernel(matmul_algorithm, name="register_tile")


        @register_tile.schedule(kd.cpu)
        def _(s):
            io, jo, ii, ji = s.tile("i", "j", 8, 16)
            ko, ki = s.split("k", 256)
            s.reorder(io, jo, ko, ji, ki, ii)
            s.vectorize(ji, 16)


        steps["(c) + split k, reorder"] = register_tile
        """
    ),
    md(
        """
        ## (d) Unroll, then (e) parallelize

        `s.unroll(ii)` copies the loop body 8 times so the 8 rows are 8 independent FMA
        chains without loop overhead; `s.parallelize(io)` hands blocks of rows to kdsl's
        thread pool. The last one is the schedule of `benchmarks/schedules.py`.
        """
    ),
    code(
        """
        unrolled = kd.kernel(matmul_algorithm, name="unrolled")


        @unrolled.schedule(kd.cpu)
        def _(s):
            io, jo, ii, ji = s.tile("i", "j", 8, 16)
            ko, ki = s.split("k", 256)
            s.reorder(io, jo, ko, ji, ki, ii)
            s.vectorize(ji, 16)
            s.unroll(ii)


        scheduled = kd.kernel(matmul_algorithm, name="scheduled")


        @scheduled.schedule(kd.cpu)
        def _(s):
            io, jo, ii, ji = s.tile("i", "j", 8, 16)
            ko, ki = s.split("k", 256)
            s.reorder(io, jo, ko, ji, ki, ii)
            s.vectorize(ji, 16)
            s.unroll(ii)
            s.parallelize(io)


        steps["(d) + unroll"] = unrolled
        steps["(e) + parallelize"] = scheduled
        print(scheduled.schedule_of(a, b, c))
        """
    ),
    md(
        """
        A schedule is data: it prints as the steps above, and `.to_json()` saves it.

        ## Measure

        Each kernel is checked against NumPy, then timed (median of 9 calls). NumPy's
        `a @ b`, which calls an optimized BLAS library, is the reference.
        """
    ),
    code(
        """
        gflops = {}
        for name, kernel in steps.items():
            kernel(a, b, c)
            np.testing.assert_allclose(c, expected, rtol=1e-3, atol=1e-3)
            gflops[name] = FLOPS / median_time(kernel, a, b, c) / 1e9
            print(f"{name:<24} {gflops[name]:7.1f} GFLOP/s")

        numpy_gflops = FLOPS / median_time(lambda a, b, c: np.matmul(a, b, out=c), a, b, c) / 1e9
        print(f"{'NumPy a @ b':<24} {numpy_gflops:7.1f} GFLOP/s")
        """
    ),
    code(
        """
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar(list(gflops), list(gflops.values()), color="tab:blue")
        ax.axhline(numpy_gflops, color="tab:red", linestyle="--", label="NumPy a @ b")
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"matmul {N}×{N}×{N}, float32")
        ax.tick_params(axis="x", labelrotation=20)
        ax.legend()
        fig.tight_layout()
        plt.show()
        """
    ),
    md(
        """
        The big step is (c): once the tile of `C` lives in registers, each load of `B` feeds
        8 FMAs instead of one. Numbers vary by machine; `03-autotune.ipynb` lets kdsl pick
        the tile sizes for yours.

        ## Fusion: softmax in one pass

        Softmax written as four statements with temporaries (row max `m`, exponentials
        `e`, row sum `s`) makes four passes over memory. `kd.empty(...)` inside a kernel
        makes a temporary; returned, it becomes a new NumPy array.
        """
    ),
    code(
        """
        def softmax_algorithm(x):
            i, j = kd.indices(x.shape[0], x.shape[1])
            m = kd.empty(x.shape[0], x.dtype)
            m[i] = kd.max(x[i, j], over=j)
            e = kd.empty(x.shape, x.dtype)
            e[i, j] = kd.exp(x[i, j] - m[i])
            s = kd.empty(x.shape[0], x.dtype)
            s[i] = kd.sum(e[i, j], over=j)
            y = kd.empty(x.shape, x.dtype)
            y[i, j] = e[i, j] / s[i]
            return y


        softmax_unfused = kd.kernel(softmax_algorithm, name="softmax_unfused")
        softmax = kd.kernel(softmax_algorithm, name="softmax")
        """
    ),
    md(
        """
        Each statement has its own loop nest: the row loops are `i`, `i.1`, `i.2`, `i.3`
        and the column loops `j`, `j.1`, `j.2`, `j.3`. `s.fuse(a, b)` merges two sibling
        loops over the same range; afterwards kdsl shrinks the temporaries that no longer
        need their full size: `m` and `s` become scalars and `e` one row.
        """
    ),
    code(
        """
        @softmax.schedule(kd.cpu)
        def _(s):
            s.fuse("i", "i.1")
            s.fuse("i", "i.2")
            s.fuse("i", "i.3")
            s.fuse("j.1", "j.2")
            for loop in ("j", "j.1", "j.3"):
                s.vectorize(loop, 16)
            s.parallelize("i")


        x = rng.standard_normal((1024, 1024), dtype=np.float32)
        reference = np.exp(x - x.max(axis=1, keepdims=True))
        reference /= reference.sum(axis=1, keepdims=True)
        for kernel in (softmax_unfused, softmax):
            np.testing.assert_allclose(kernel(x), reference, rtol=1e-5, atol=1e-7)
            print(f"{kernel.name:<16} {1e3 * median_time(kernel, x):6.2f} ms")
        """
    ),
    code(
        """
        softmax.lowered(x)
        """
    ),
]

# ----------------------------------------------------------------------- 03-autotune

AUTOTUNE: list[Cell] = [
    md(
        """
        # Autotuning

        The best tile sizes depend on the machine and the problem size. Instead of
        guessing, mark them as *tunables* with `s.param(name, choices)` and let kdsl's
        autotuner measure the choices. Results go to a persistent tuning database, so
        later calls, in this process or any other, use them automatically.
        """
    ),
    code(
        """
        import numpy as np

        import kdsl as kd
        from kdsl.cli import main as kdsl_cli


        @kd.kernel
        def matmul(A, B, C):
            i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
            C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)


        @matmul.schedule(kd.cpu)
        def _(s):
            ti = s.param("ti", [4, 6, 8])
            tj = s.param("tj", [16, 32])
            tk = s.param("tk", [64, 128, 256])
            io, jo, ii, ji = s.tile("i", "j", ti, tj)
            ko, ki = s.split("k", tk)
            s.reorder(io, jo, ko, ji, ki, ii)
            s.vectorize(ji, 16)
            s.unroll(ii)
            s.parallelize(io)
        """
    ),
    md(
        """
        The three params span 3 × 2 × 3 = 18 schedules. Until the kernel is tuned, a call
        uses the first choice of each (`ti=4, tj=16, tk=64`); `stats()["tuning"]` is empty
        because no tuning result was looked up.
        """
    ),
    code(
        """
        N = 384
        rng = np.random.default_rng(0)
        a = rng.standard_normal((N, N), dtype=np.float32)
        b = rng.standard_normal((N, N), dtype=np.float32)
        c = np.empty((N, N), np.float32)

        matmul(a, b, c)
        np.testing.assert_allclose(c, a @ b, rtol=1e-3, atol=1e-3)
        matmul.stats()
        """
    ),
    md(
        """
        ## Tune from Python

        `kernel.autotune(*args, budget=seconds)` tunes for the shapes and dtypes of the
        arguments, and runs the candidates on copies of their values, so an index array
        must hold valid indices (only `kd.spec` examples, below, are filled with random
        data; an index array's spec needs its range, `low=`/`high=`). Candidates are
        compiled in worker processes, each is checked against the default schedule's
        output before its time counts, and a progress bar shows the best so far. 18
        candidates are tried in turn (exhaustively, as far as the budget goes); larger
        spaces are searched randomly or by evolution within the budget.
        """
    ),
    code(
        """
        reports = matmul.autotune(a, b, c, budget=8)
        report = reports[0]
        """
    ),
    md(
        """
        Each `TuneReport` has the best config, its time, the time of the default params,
        the speedup, and every trial with its status (`ok`; `slow` when measuring stopped
        early because it could not win; or the reason it was dropped).
        """
    ),
    code(
        """
        def ms(seconds):
            return "-" if seconds is None else f"{1e3 * seconds:.3f} ms"


        print(f"best {report.best}: {ms(report.best_time_s)}")
        print(f"default params: {ms(report.default_time_s)}, speedup {report.speedup or 1:.2f}x")
        print(f"{len(report.trials)} trials in {report.elapsed_s:.1f} s\\n")

        print(f"{'ti':>3} {'tj':>3} {'tk':>4}  {'time':>10}  status")
        for trial in sorted(report.trials, key=lambda t: t.time_s or float("inf")):
            config = trial.config
            print(
                f"{config['ti']:>3} {config['tj']:>3} {config['tk']:>4}"
                f"  {ms(trial.time_s):>10}  {trial.status}"
            )
        """
    ),
    md(
        """
        Call the kernel again: it now runs with the tuned params, and `stats()` says where
        they came from. A shape that was not tuned uses the nearest tuned shape's params.
        """
    ),
    code(
        """
        matmul(a, b, c)
        np.testing.assert_allclose(c, a @ b, rtol=1e-3, atol=1e-3)
        print(matmul.stats()["tuning"])

        a2 = rng.standard_normal((300, N), dtype=np.float32)
        c2 = np.empty((300, N), np.float32)
        matmul(a2, b, c2)
        matmul.stats()["tuning"]
        """
    ),
    md(
        """
        ## The tuning cache

        Results live in a SQLite database under your user cache directory (the
        environment variable `KDSL_CACHE_DIR` moves it). The `kdsl` command inspects it;
        the same command can be run from Python with `kdsl.cli.main`:

        ```bash
        kdsl cache list
        ```
        """
    ),
    code(
        """
        kdsl_cli(["cache", "list"])
        """
    ),
    md(
        """
        Entries are keyed by the kernel's *content* (a hash of its traced IR), the CPU and
        the argument dtypes and shapes, so editing a kernel's algorithm never picks up
        stale tuning.
        `kdsl cache export FILE` writes them as JSON you can review and commit, and
        `kdsl cache import FILE` reads them on another machine.

        ## Tuning from the shell

        Kernels that live in a file or package are tuned with the `kdsl autotune` command.
        It needs example arguments: declare them on the kernel with `examples=`, one dict
        per example call, giving each array parameter a `kd.spec(shape, dtype)`. A file
        with this notebook's matmul, ready for the command line (which cannot name a
        notebook's own kernels), reads:
        """
    ),
    code(
        """
        MY_KERNELS = \'\'\'
        import kdsl as kd

        square = kd.spec((256, 256), kd.f32)


        @kd.kernel(examples=[{"A": square, "B": square, "C": square}])
        def matmul(A, B, C):
            i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
            C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)


        @matmul.schedule(kd.cpu)
        def _(s):
            ti = s.param("ti", [4, 6, 8])
            tj = s.param("tj", [16, 32])
            tk = s.param("tk", [64, 128, 256])
            io, jo, ii, ji = s.tile("i", "j", ti, tj)
            ko, ki = s.split("k", tk)
            s.reorder(io, jo, ko, ji, ki, ii)
            s.vectorize(ji, 16)
            s.unroll(ii)
            s.parallelize(io)
        \'\'\'
        """
    ),
    md(
        """
        Saved as `my_kernels.py`, it is tuned from a shell with one of:

        ```bash
        kdsl autotune my_kernels.py --budget 5s           # every kernel in the file
        kdsl autotune my_kernels.py:matmul --budget 2m    # one kernel
        kdsl autotune my_kernels.py --shape "A=512x512:f32,B=512x512:f32,C=512x512:f32"
        ```

        Here the first one runs from Python, on a copy of the file in a temporary
        directory. It prints a summary table at the end and returns the exit code.
        """
    ),
    code(
        """
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            my_kernels = Path(tmp) / "my_kernels.py"
            my_kernels.write_text(MY_KERNELS)
            exit_code = kdsl_cli(["autotune", str(my_kernels), "--budget", "5s"])
        exit_code
        """
    ),
    md(
        """
        The kernel in the file traces to the same IR as this notebook's `matmul`, so they
        are the same kernel to the tuning database: the notebook's `matmul` now finds a
        tuned entry for 256 × 256 too. (For a kernel defined in a notebook, declared
        `examples=` are tuned with `kernel.autotune(budget=...)`, without arguments.)
        """
    ),
    code(
        """
        a3 = rng.standard_normal((256, 256), dtype=np.float32)
        c3 = np.empty((256, 256), np.float32)
        matmul(a3, a3, c3)
        np.testing.assert_allclose(c3, a3 @ a3, rtol=1e-3, atol=1e-3)
        print(matmul.stats()["tuning"])
        kdsl_cli(["cache", "list"])
        """
    ),
]

NOTEBOOKS = {
    "01-quickstart.ipynb": QUICKSTART,
    "02-schedules.ipynb": SCHEDULES,
    "03-autotune.ipynb": AUTOTUNE,
}


def build(name: str, cells: list[Cell]) -> nbformat.NotebookNode:
    """A notebook without outputs, with cell ids that depend only on position."""
    stem = name.removesuffix(".ipynb")
    nb = new_notebook(
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        }
    )
    for n, (kind, source) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell.id = f"{stem}-{n:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main() -> int:
    for name, cells in NOTEBOOKS.items():
        path = HERE / name
        nbformat.write(build(name, cells), path)
        print(f"wrote {path.relative_to(HERE.parent)} ({len(cells)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
