"""The reference interpreter: the executable definition of the IR, and the tests' oracle.

`interpret(kernel, args)` translates a kernel once into a Python function (nested
`for` loops over NumPy scalars of each value's exact dtype; see translate.py), runs
it in place on the arguments and returns the result arrays. Every target reproduces
these semantics:

Values
- Operands of a binary op share one dtype; f16/bf16 are only loaded, stored, cast
  and selected (arithmetic widens them to f32 first); `/` and `**` take floats.
  The interpreter refuses IR that breaks this with CompileError.
- Integers wrap (two's complement; -INT_MIN == abs(INT_MIN) == INT_MIN). Integer
  `//` and `%` are Python's (floor; `%` takes the divisor's sign), 0 for a zero
  divisor, INT_MIN // -1 == INT_MIN. Float `//` and `%` are NumPy's floor_divide and
  remainder (x % 0 is NaN). No operation warns or raises.
- max/min on floats are IEEE 754-2019 maximum/minimum: NaN if either is NaN, and
  -0.0 < +0.0 in either order (unlike np.maximum); on ints and bools the usual ones.
- & | ^ on ints and bools. `<<`/`>>` on ints: an amount outside [0, bits) gives 0,
  or -1 for `>>` of a negative signed value; `>>` is arithmetic on signed dtypes and
  logical on unsigned ones.
- Comparisons give bool; on floats IEEE ordered, except `!=` (true if either is NaN).
- neg, abs, `~` (logical not on bool); sqrt, floor, ceil exact. exp, exp2, log, log2,
  tanh, erf, sin, cos and `**` are the C library's double function (Python's math;
  NumPy's f64 `**`) rounded once to the dtype: for f32 nearly always correctly
  rounded, and what a target computing in f64 then truncating gets bit for bit
  (NumPy's f32 ufuncs differ by an ulp on up to 40% of inputs). rsqrt(x) = 1 / sqrt(x)
  and sigmoid(x) = 1 / (1 + exp(-x)), each step rounded in the dtype. fma rounds once
  (exactly).
- Cast is NumPy's conversion (int -> float rounds once to nearest even; int -> int
  wraps) except: float -> int truncates and saturates (NaN -> 0); anything -> bool is
  `!= 0` (NaN -> True); anything but f32 -> bf16 goes through f32, as the compiled
  code does (so f64 -> bf16 rounds twice: ml_dtypes rounds f64 once, and the two differ
  by one bf16 ulp where the f32 rounding lands on a bf16 tie).
  Constants are cast from their Python value (ints wrap). Scalar arguments arrive as
  f64 (float parameters) or i64 (the others; Python ints wrap) and are cast.

Statements
- Loop runs `for var in range(extent)` in order; exec kind and width change nothing.
- `where(c, a, b)` evaluates only the chosen branch (the other may be out of bounds).
- Every load and store checks every subscript: outside [0, extent) is a BoundsError
  naming the buffer, subscript, shape and the loop variables involved (never NumPy's
  negative-index wraparound). Where one statement has several bad subscripts, which
  one is reported is unspecified.
- A false Check raises ShapeError (kind shape) or BoundsError (kind bounds) quoting
  the shapes, scalars, loop variables and locals it mentions (kdsl.ir.checks).
- Results and temporaries are new C-contiguous arrays holding garbage (NaN, 0xAB
  bytes, True) until written; a temporary is created where its Allocate runs, and
  its DimOf is its declared shape expression.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping

import numpy as np

from kdsl.errors import BoundsError, CompileError, KdslError, KernelArgumentError
from kdsl.ir.checks import check_error, check_operands, quoted_operands
from kdsl.ir.evaluate import evaluate
from kdsl.ir.hashing import structural_hash
from kdsl.ir.nodes import Check, Kernel, Param
from kdsl.ir.printer import format_expr
from kdsl.targets.interp import scalars
from kdsl.targets.interp.translate import Program, Trap, allocate, translate

_CACHE_SIZE = 256
_cache: OrderedDict[str, tuple[Program, Callable[..., None]]] = OrderedDict()
_cache_lock = threading.Lock()


def interpret(kernel: Kernel, args: Mapping[str, object]) -> tuple[np.ndarray, ...]:
    """Run `kernel` on `args` (every parameter's name -> NumPy array or scalar), writing
    its array arguments in place; return its result arrays (kernel.results, in order)."""
    program, run = _compiled(kernel)
    params = {p.name: p for p in kernel.params}
    arrays = {n: _array(kernel, params[n], args, program) for n in program.arrays}
    scalar_values = {n: _scalar(kernel, params[n], args) for n in program.scalars}
    results = _allocate_results(kernel, arrays, scalar_values)
    try:
        with np.errstate(all="ignore"):
            run(*arrays.values(), *results, *scalar_values.values())
    except Trap as trap:
        raise _trap_error(kernel, trap) from None
    return results


def python_source(kernel: Kernel) -> str:
    """The Python function the interpreter runs for `kernel` (for debugging)."""
    return _compiled(kernel)[0].source


def _compiled(kernel: Kernel) -> tuple[Program, Callable[..., None]]:
    """The kernel's program, translated and compiled once per distinct IR.

    The key is the kernel's structural hash: it covers every field but source
    locations, tells 0.0 from -0.0 (Kernel equality does not), and takes time linear in
    the IR's DAG (its repr spelled each shared sub-expression out: exponential in a
    chain of steps that each use the last value twice). Locations only matter to
    errors, which take them from the kernel being run (_trap_error).
    """
    key = structural_hash(kernel)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    program = translate(kernel)
    namespace = dict(program.namespace)
    try:
        code = compile(program.source, f"<kdsl interpreter: {kernel.name}>", "exec")
    except (SyntaxError, RecursionError, MemoryError) as err:
        raise CompileError(
            f"the interpreter could not compile the kernel's Python translation: {err}",
            kernel=kernel.name,
            fix="simplify the kernel's expressions; please report it as a kdsl bug",
        ) from None
    exec(code, namespace)
    run: Callable[..., None] = namespace["run"]  # type: ignore[assignment]
    entry = (program, run)
    with _cache_lock:
        _cache[key] = entry
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return entry


# ------------------------------------------------------------------------------ arguments


def _argument_error(kernel: Kernel, what: str, fix: str) -> KernelArgumentError:
    signature = ", ".join(
        f"{p.name}: {p.dtype.name}" + (f"[{p.ndim}d]" if p.is_array else "") for p in kernel.params
    )
    return KernelArgumentError(
        what, kernel=kernel.name, fix=f"{fix}; the kernel is {kernel.name}({signature})"
    )


def _array(kernel: Kernel, p: Param, args: Mapping[str, object], program: Program) -> np.ndarray:
    if p.name not in args:
        raise _argument_error(kernel, f"argument '{p.name}' is missing", "pass every parameter")
    value = args[p.name]
    want = p.dtype.to_numpy()
    if not isinstance(value, np.ndarray) or value.ndim != p.ndim or value.dtype != want:
        got = (
            f"a {value.ndim}-d {value.dtype} array"
            if isinstance(value, np.ndarray)
            else type(value).__name__
        )
        raise _argument_error(
            kernel,
            f"argument '{p.name}' should be a {p.ndim}-d {want} array, got {got}",
            "pass an array of that dtype and rank",
        )
    if p.name in program.written and not value.flags.writeable:
        raise _argument_error(
            kernel,
            f"argument '{p.name}' is read-only, but the kernel writes to it",
            "pass a writeable array (np.array(x) makes a writeable copy)",
        )
    return value


def _scalar(kernel: Kernel, p: Param, args: Mapping[str, object]) -> scalars.Scalar:
    if p.name not in args:
        raise _argument_error(kernel, f"argument '{p.name}' is missing", "pass every parameter")
    try:
        return scalars.argument(args[p.name], p.dtype)
    except (TypeError, ValueError, OverflowError):
        raise _argument_error(
            kernel,
            f"argument '{p.name}' should be a {p.dtype.name} scalar, got {args[p.name]!r}",
            "pass a number of that kind",
        ) from None


def _allocate_results(
    kernel: Kernel, arrays: Mapping[str, np.ndarray], scalar_values: Mapping[str, scalars.Scalar]
) -> tuple[np.ndarray, ...]:
    shapes = {name: a.shape for name, a in arrays.items()}
    results = []
    for name in kernel.results:
        buf = kernel.buffer(name)
        shape = tuple(int(evaluate(d, shapes, scalar_values)) for d in buf.shape)
        results.append(allocate(shape, buf.dtype.to_numpy()))
    return tuple(results)


# --------------------------------------------------------------------------------- errors


def _trap_error(kernel: Kernel, trap: Trap) -> KdslError:
    """The user's error for a trap, with the source location from `kernel` itself."""
    node = translate(kernel).sites[trap.site]
    if isinstance(node, Check):
        return check_error(node, dict(zip(check_operands(node), trap.values)))
    quoted = ", ".join(
        f"{format_expr(e)} = {v}" for e, v in zip(quoted_operands(*node.index), trap.values)
    )
    access = f"{node.buffer}[{', '.join(format_expr(i) for i in node.index)}]"
    return BoundsError(
        f"subscript [{', '.join(map(str, trap.index))}] is out of bounds for "
        f"'{node.buffer}' of shape {trap.shape}: {access}" + (f" with {quoted}" if quoted else ""),
        loc=node.loc,
        fix="keep the subscript inside the array's shape, or guard it with kd.when / kd.where",
    )
