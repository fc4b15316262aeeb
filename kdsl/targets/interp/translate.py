"""Kernel IR -> the source of one Python function that runs it on NumPy scalars.

The function takes the parameter arrays, the result arrays and the scalar arguments,
in `Program.arrays` / `Program.scalars` order, and works in place. Loops become
`for` loops over np.int64 values, locals become Python variables, and every load
and store checks its subscripts against the array's shape. A failed subscript or
`Check` raises `Trap` with the index of its node in `Program.sites`; the caller turns
it into the user's error (with the source location of the kernel it ran).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from kdsl import types as T
from kdsl.errors import CompileError
from kdsl.ir.checks import check_operands, quoted_operands
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    BufferRole,
    Cast,
    Check,
    Const,
    DeclareLocal,
    DimOf,
    Expr,
    Fma,
    If,
    Kernel,
    Load,
    LocalVar,
    Loop,
    LoopVar,
    Prefetch,
    ScalarArg,
    Select,
    Stmt,
    Store,
    Unary,
    UnaryOp,
)
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import stmt_exprs, uses_by_identity, walk_stmts
from kdsl.targets.interp import scalars

Site = Load | Store | Check

# Operators whose NumPy scalar arithmetic is exactly the IR's (see the interpreter's
# docstring); the kinds of operand each accepts: (b)ool, (i)nteger, (f)loat.
_OPERATORS: dict[BinaryOp, tuple[str, str]] = {
    BinaryOp.ADD: ("+", "if"),
    BinaryOp.SUB: ("-", "if"),
    BinaryOp.MUL: ("*", "if"),
    BinaryOp.DIV: ("/", "f"),
    BinaryOp.FLOORDIV: ("//", "if"),
    BinaryOp.MOD: ("%", "if"),
    BinaryOp.AND: ("&", "bi"),
    BinaryOp.OR: ("|", "bi"),
    BinaryOp.XOR: ("^", "bi"),
    BinaryOp.LT: ("<", "bif"),
    BinaryOp.LE: ("<=", "bif"),
    BinaryOp.EQ: ("==", "bif"),
    BinaryOp.NE: ("!=", "bif"),
    BinaryOp.GE: (">=", "bif"),
    BinaryOp.GT: (">", "bif"),
}
_UFUNCS = {  # exact
    UnaryOp.SQRT: np.sqrt,
    UnaryOp.FLOOR: np.floor,
    UnaryOp.CEIL: np.ceil,
    UnaryOp.ROUND: np.rint,  # halves to even
}
_NOT_IDENT = re.compile(r"[^0-9A-Za-z_]")
_MAX_DEPTH = 32  # deeper expressions are split into temporaries (Python limits nesting)
_CHUNK = 1 << 16


class Trap(Exception):
    """Raised by generated code: node `site` failed. `values` are those of the operands
    its message quotes; for a subscript, `index` and `shape` are the offending pair."""

    def __init__(
        self,
        site: int,
        values: tuple[object, ...],
        index: tuple[int, ...] = (),
        shape: tuple[int, ...] = (),
    ) -> None:
        super().__init__(site)
        self.site, self.values, self.index, self.shape = site, values, index, shape


@dataclass(frozen=True)
class Program:
    source: str
    namespace: dict[str, object]
    arrays: tuple[str, ...]  # parameter arrays (the function takes them, then the results)
    scalars: tuple[str, ...]
    written: frozenset[str]  # buffers the kernel stores to
    sites: tuple[Site, ...]


def translate(kernel: Kernel) -> Program:
    """The Python source of `kernel` and the namespace it runs in."""
    return _Translator(kernel).program()


def loop_range(n: int) -> Iterator[np.int64]:
    """range(n) as np.int64 values (empty for n <= 0)."""
    if n <= _CHUNK:
        return iter(np.arange(n, dtype=np.int64))
    return (
        i
        for start in range(0, n, _CHUNK)
        for i in np.arange(start, min(n, start + _CHUNK), dtype=np.int64)
    )


def allocate(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A new C-contiguous array filled with garbage (NaN, 0xAB bytes, True): a kernel
    that reads an element before writing it gives a visibly wrong answer."""
    array = np.empty(tuple(max(0, n) for n in shape), dtype)
    if array.dtype.kind == "b":
        array.fill(True)
    elif array.dtype.kind in "iu":
        array.reshape(-1).view(np.uint8).fill(0xAB)
    else:
        array.fill(np.nan)
    return array


def _out_of_bounds(
    site: int, index: tuple[int, ...], shape: tuple[int, ...], values: tuple[object, ...]
) -> None:
    raise Trap(site, values, index, shape)


class _Translator:
    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.buffers = {b.name: b for b in kernel.buffers}
        self.ns: dict[str, object] = {
            "_range": loop_range,
            "_alloc": allocate,
            "_oob": _out_of_bounds,
            "_Trap": Trap,
            "_i64": np.int64,
        }
        self.idents: dict[tuple[str, str], str] = {}
        self.sites: list[Site] = []
        self.lines: list[str] = []
        self.pre: list[str] = []  # lines to run before the current statement or branch
        self.scopes: list[list[str]] = []  # self.pre, and those of the branches it is in
        # a statement's sub-expressions shared by identity (a traced value used twice),
        # and those already held in a temporary: (the node, its name, the scope it is in)
        self.shared: set[int] = set()
        self.held: dict[int, tuple[Expr, str, list[str]]] = {}
        self.temps = 0

    # ------------------------------------------------------------------------ names

    def ident(self, kind: str, name: str) -> str:
        """A Python identifier for IR name `name` of kind (b)uffer, (s)calar, (L)oop, (v)ar."""
        key = (kind, name)
        if key not in self.idents:
            self.idents[key] = f"{kind}{len(self.idents)}_{_NOT_IDENT.sub('_', name)}"
        return self.idents[key]

    def value(self, obj: object, hint: str = "c") -> str:
        name = f"_{hint}{len(self.ns)}"
        self.ns[name] = obj
        return name

    def temp(self, prefix: str = "_t") -> str:
        self.temps += 1
        return f"{prefix}{self.temps}"

    def site(self, node: Site) -> int:
        self.sites.append(node)
        return len(self.sites) - 1

    # ------------------------------------------------------------------- the function

    def program(self) -> Program:
        k = self.kernel
        params = tuple(p.name for p in k.params if p.is_array)
        arrays = params + tuple(k.results)
        scalar_names = tuple(p.name for p in k.params if not p.is_array)
        args = [self.ident("b", a) for a in arrays] + [self.ident("s", s) for s in scalar_names]
        self.lines = [f"def run({', '.join(args)}):"]
        for a in arrays:
            self.shape_names(a, 1)
            for axis in range(self.buffers[a].ndim):
                b = self.ident("b", a)
                self.lines.append(f"    {b}_d{axis} = _i64({b}_n{axis})")
        self.block(k.body, 1)
        written = frozenset(s.buffer for s in walk_stmts(k.body) if isinstance(s, Store))
        source = "\n".join(self.lines) + "\n"
        return Program(source, self.ns, params, scalar_names, written, tuple(self.sites))

    def shape_names(self, buffer: str, depth: int) -> None:
        """`b_n0, b_n1, ... = b.shape`: the extents (Python ints) bounds checks compare with."""
        b, ndim = self.ident("b", buffer), self.buffers[buffer].ndim
        if ndim:
            names = "".join(f"{b}_n{axis}, " for axis in range(ndim))
            self.lines.append(f"{'    ' * depth}{names}= {b}.shape")

    # ---------------------------------------------------------------------- statements

    def block(self, body: tuple[Stmt, ...], depth: int) -> None:
        if not body:
            self.lines.append(f"{'    ' * depth}pass")
        for s in body:
            pre: list[str] = []
            self.pre, self.scopes, start = pre, [pre], len(self.lines)
            uses, _ = uses_by_identity(stmt_exprs(s))
            self.shared, self.held = {n for n, count in uses.items() if count > 1}, {}
            self.stmt(s, depth)  # nested blocks set self.pre again: keep this one
            self.lines[start:start] = [f"{'    ' * depth}{p}" for p in pre]

    def stmt(self, s: Stmt, depth: int) -> None:
        pad = "    " * depth
        emit = self.lines.append
        match s:
            case Store():
                self.store(s, pad)
            case DeclareLocal(name=n, init=v) | Assign(local=n, value=v):
                emit(f"{pad}{self.ident('v', n)} = {self.expr(v)}")
            case Allocate(buffer=name):
                buf = self.buffers[name]
                dims = "".join(f"int({self.expr(d)}), " for d in buf.shape)
                dtype = self.value(buf.dtype.to_numpy(), "dtype")
                emit(f"{pad}{self.ident('b', name)} = _alloc(({dims}), {dtype})")
                self.shape_names(name, depth)
            case Loop(var=var, extent=ext, body=body):
                emit(f"{pad}for {self.ident('L', var)} in _range(int({self.expr(ext)})):")
                self.block(body, depth + 1)
            case If(cond=c, then=then):
                emit(f"{pad}if {self.expr(c)}:")
                self.block(then, depth + 1)
            case Check(cond=c):
                quoted = "".join(f"{self.expr(e)}, " for e in check_operands(s))
                emit(f"{pad}if not {self.expr(c)}:")
                emit(f"{pad}    raise _Trap({self.site(s)}, ({quoted}))")
            case Prefetch():
                emit(f"{pad}pass  # prefetch: a hint to the cache, nothing to compute")
            case _:
                raise CompileError(f"the interpreter cannot run statement {s!r}")

    def store(self, s: Store, pad: str) -> None:
        if s.value.dtype != self.buffers[s.buffer].dtype:
            self.refuse(f"a store of {s.value.dtype.name} into {s.buffer}")
        b = self.ident("b", s.buffer)
        keys = [self.temp() for _ in s.index]
        for key, i in zip(keys, s.index):
            self.lines.append(f"{pad}{key} = int({self.expr(i)})")
        if keys:
            inside = " and ".join(f"0 <= {k} < {b}_n{axis}" for axis, k in enumerate(keys))
            self.lines.append(f"{pad}if not ({inside}):")
            self.lines.append(f"{pad}    {self.out_of_bounds(s, keys)}")
        self.lines.append(f"{pad}{b}[{', '.join(keys) or '()'}] = {self.expr(s.value)}")

    def out_of_bounds(self, node: Load | Store, keys: list[str]) -> str:
        quoted = "".join(f"{self.expr(e)}, " for e in quoted_operands(*node.index))
        b = self.ident("b", node.buffer)
        return (
            f"_oob({self.site(node)}, ({''.join(k + ', ' for k in keys)}), {b}.shape, ({quoted}))"
        )

    # --------------------------------------------------------------------- expressions

    def expr(self, e: Expr, depth: int = 0) -> str:
        """Python text for `e`; sub-expressions nested deeper than _MAX_DEPTH go into
        temporaries, assigned before the statement (Python limits nesting), and so do
        those the statement shares, computed once: its text as a tree could be
        exponentially longer than the computation (`v = kd.where(v > 0, v * a, v + b)`
        repeated)."""
        if isinstance(e, Const | LoopVar | LocalVar | ScalarArg):
            return self._expr(e, depth)
        held = self.held.get(id(e))
        if held is not None and held[0] is e and any(held[2] is s for s in self.scopes):
            return held[1]
        if depth < _MAX_DEPTH and id(e) not in self.shared:
            return self._expr(e, depth)
        text, name = self._expr(e, 0), self.temp()
        self.pre.append(f"{name} = {text}")
        if id(e) in self.shared:
            self.held[id(e)] = (e, name, self.pre)
        return name

    def branch(self, e: Expr, depth: int) -> str:
        """A `where` branch, evaluated only when chosen: what it hoists stays inside a
        local function that the branch calls."""
        outer, self.pre = self.pre, []
        self.scopes.append(self.pre)
        text = self.expr(e, depth)
        inner, self.pre = self.pre, outer
        self.scopes.pop()
        if not inner:
            return text
        name = self.temp("_branch")
        outer.append(f"def {name}():")
        outer.extend(f"    {line}" for line in (*inner, f"return {text}"))
        return f"{name}()"

    def _expr(self, e: Expr, depth: int) -> str:
        sub = depth + 1
        match e:
            case Const(value=v, dtype=d):
                return self.value(scalars.constant(v, d))
            case LoopVar(name=n, dtype=d):
                return self.index_value(self.ident("L", n), d)
            case LocalVar(name=n):
                return self.ident("v", n)
            case ScalarArg(name=n):
                return self.ident("s", n)
            case DimOf(buffer=b, axis=axis):
                if self.buffers[b].role is BufferRole.TEMP:
                    return self.expr(self.buffers[b].shape[axis], sub)
                return self.index_value(f"{self.ident('b', b)}_d{axis}", e.dtype)
            case Load():
                return self.load(e, sub)
            case Binary():
                return self.binary(e, sub)
            case Unary():
                return self.unary(e, sub)
            case Select(cond=c, if_true=a, if_false=b):
                cond = self.expr(c, sub)
                return f"({self.branch(a, sub)} if {cond} else {self.branch(b, sub)})"
            case Cast(operand=a, dtype=d):
                if a.dtype == d:
                    return self.expr(a, depth)
                return f"{self.value(scalars.cast(a.dtype, d), 'cast')}({self.expr(a, sub)})"
            case Fma(a=a, b=b, c=c, dtype=d):
                self.require(d.is_float and not d.is_half, e)
                args = ", ".join(self.expr(x, sub) for x in (a, b, c))
                return f"{self.value(scalars.fma(d), 'fma')}({args})"
        raise CompileError(f"the interpreter cannot run expression {e!r}")

    def index_value(self, text: str, d: T.DType) -> str:
        """A loop variable or extent (an np.int64) in dtype `d`."""
        if d == T.INDEX:
            return text
        return f"{self.value(scalars.cast(T.INDEX, d), 'cast')}({text})"

    def load(self, e: Load, depth: int) -> str:
        if e.dtype != self.buffers[e.buffer].dtype:
            self.refuse(f"{format_expr(e)} typed {e.dtype.name}")
        b = self.ident("b", e.buffer)
        if not e.index:
            return f"{b}[()]"
        keys = [self.temp() for _ in e.index]
        inside = " & ".join(
            f"(0 <= ({k} := int({self.expr(i, depth)})) < {b}_n{axis})"
            for axis, (k, i) in enumerate(zip(keys, e.index))
        )
        return f"({b}[{', '.join(keys)}] if {inside} else {self.out_of_bounds(e, keys)})"

    def binary(self, e: Binary, depth: int) -> str:
        op, d = e.op, e.lhs.dtype
        a, b = self.expr(e.lhs, depth), self.expr(e.rhs, depth)
        result = T.bool_ if op.is_comparison else d
        self.require(e.rhs.dtype == d and e.dtype == result and not d.is_half, e)
        if op in _OPERATORS:
            symbol, kinds = _OPERATORS[op]
            self.require(_kind(d) in kinds, e)
            return f"({a} {symbol} {b})"
        if op is BinaryOp.POW:
            self.require(d.is_float, e)
            return f"{self.value(scalars.power(d), 'pow')}({a}, {b})"
        if op in (BinaryOp.SHL, BinaryOp.SHR):
            self.require(d.is_int, e)
            return f"{self.value(scalars.shift(op, d), 'shift')}({a}, {b})"
        if d.is_float:
            fn: object = scalars.float_max if op is BinaryOp.MAX else scalars.float_min
        else:
            fn = max if op is BinaryOp.MAX else min
        return f"{self.value(fn, op.name.lower())}({a}, {b})"

    def unary(self, e: Unary, depth: int) -> str:
        op, d = e.op, e.dtype
        a = self.expr(e.operand, depth)
        ok = e.operand.dtype == d and not d.is_half and (d.is_float or not op.float_only)
        self.require(ok, e)
        match op:
            case UnaryOp.NEG:
                self.require(not d.is_bool, e)
                return f"(-{a})"
            case UnaryOp.INVERT:
                self.require(not d.is_float, e)
                return f"(~{a})"
            case UnaryOp.ABS:
                self.require(not d.is_bool, e)
                return f"abs({a})"
            case UnaryOp.RSQRT:
                one = self.value(scalars.numpy_type(d)(1))
                return f"({one} / {self.value(np.sqrt, 'sqrt')}({a}))"
            case UnaryOp.SIGMOID:
                one, exp = self.value(scalars.numpy_type(d)(1)), scalars.libm(UnaryOp.EXP, d)
                return f"({one} / ({one} + {self.value(exp, 'exp')}(-{a})))"
            case UnaryOp.SQRT | UnaryOp.FLOOR | UnaryOp.CEIL | UnaryOp.ROUND:
                return f"{self.value(_UFUNCS[op], op.name.lower())}({a})"
        return f"{self.value(scalars.libm(op, d), op.name.lower())}({a})"

    def require(self, ok: bool, e: Expr) -> None:
        if not ok:
            operand = e.lhs if isinstance(e, Binary) else e.operand if isinstance(e, Unary) else e
            self.refuse(f"{format_expr(e)}: not defined on {operand.dtype.name}")

    def refuse(self, what: str) -> None:
        raise CompileError(
            f"the interpreter cannot run {what}",
            kernel=self.kernel.name,
            fix="this is a kdsl bug (the tracer or a pass built ill-typed IR); please report it",
        )


def _kind(d: T.DType) -> str:
    return "b" if d.is_bool else "f" if d.is_float else "i"
