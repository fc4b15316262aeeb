"""The IR verifier: structural and type invariants, checked after every pass.

A failure here is a kdsl bug, never a user error, so it raises CompileError with the
offending node and the stage it was found in.
"""

from __future__ import annotations

from kdsl.errors import CompileError
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    BufferRole,
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
    LoopExec,
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
from kdsl.ir.visit import children
from kdsl.types import DType, bool_

STAGES = ("traced", "scheduled")
_BITWISE = frozenset({BinaryOp.AND, BinaryOp.OR, BinaryOp.XOR, BinaryOp.SHL, BinaryOp.SHR})


class _Verifier:
    def __init__(self, kernel: Kernel, stage: str) -> None:
        self.kernel = kernel
        self.stage = stage
        self.checked: set[int] = set()  # sub-expressions already checked, by identity
        self.buffers = {b.name: b for b in kernel.buffers}
        self.scalars = {p.name: p.dtype for p in kernel.params if not p.is_array}
        self.loop_names: set[str] = set()

    def fail(self, what: str) -> None:
        raise CompileError(
            f"IR verification failed after stage '{self.stage}': {what}",
            kernel=self.kernel.name,
            fix="this is a kdsl bug; please report it with the kernel's source",
        )

    def run(self) -> None:
        if self.stage not in STAGES:
            self.fail(f"unknown stage {self.stage!r}")
        if len(self.buffers) != len(self.kernel.buffers):
            self.fail("two buffers share a name")
        for name in self.kernel.results:
            if name not in self.buffers or self.buffers[name].role is not BufferRole.RESULT:
                self.fail(f"result {name!r} is not a RESULT buffer")
        for b in self.kernel.buffers:
            for d in b.shape:
                self.expr(d, loops=set(), locals_={})
                self.require_int(d, f"shape of {b.name}")
        self.block(self.kernel.body, loops=set(), locals_={})

    def block(self, body: tuple[Stmt, ...], loops: set[str], locals_: dict[str, DType]) -> None:
        locals_ = dict(locals_)  # declarations are visible to the rest of their block only
        for s in body:
            self.stmt(s, loops, locals_)

    def stmt(self, s: Stmt, loops: set[str], locals_: dict[str, DType]) -> None:
        self.checked = set()  # per statement: scopes differ between statements
        match s:
            case Store(buffer=b, index=index, value=v):
                self.access(b, index, loops, locals_)
                self.expr(v, loops, locals_)
                if v.dtype != self.buffers[b].dtype:
                    self.fail(f"store of {v.dtype.name} into {b} ({self.buffers[b].dtype.name})")
            case DeclareLocal(name=n, dtype=d, init=v):
                self.expr(v, loops, locals_)
                if v.dtype != d:
                    self.fail(f"local {n}: {d.name} initialised with {v.dtype.name}")
                locals_[n] = d
            case Assign(local=n, value=v):
                if n not in locals_:
                    self.fail(f"assignment to undeclared local {n}")
                self.expr(v, loops, locals_)
                if v.dtype != locals_[n]:
                    self.fail(f"local {n}: {locals_[n].name} assigned {v.dtype.name}")
            case Allocate(buffer=b):
                if b not in self.buffers or self.buffers[b].role is not BufferRole.TEMP:
                    self.fail(f"allocate of {b}, which is not a temporary")
            case Loop(var=var, extent=ext, body=body, exec=ex):
                if var in self.loop_names:
                    self.fail(f"two loops are named {var}")
                if self.stage == "traced" and ex is not LoopExec.SERIAL:
                    self.fail(f"loop {var} has execution {ex.value} before scheduling")
                self.loop_names.add(var)
                self.expr(ext, loops, locals_)
                self.require_int(ext, f"extent of loop {var}")
                self.block(body, loops | {var}, locals_)
            case If(cond=c, then=then):
                self.expr(c, loops, locals_)
                self.require_bool(c)
                self.block(then, loops, locals_)
            case Check(cond=c):
                self.expr(c, loops, locals_)
                self.require_bool(c)
            case Prefetch(buffer=b, index=index):
                self.access(b, index, loops, locals_)
            case _:
                self.fail(f"not a statement: {s!r}")

    def access(
        self, b: str, index: tuple[Expr, ...], loops: set[str], locals_: dict[str, DType]
    ) -> None:
        if b not in self.buffers:
            self.fail(f"access to unknown buffer {b}")
        if len(index) != self.buffers[b].ndim:
            self.fail(f"{b} has {self.buffers[b].ndim} dimensions, subscripted with {len(index)}")
        for i in index:
            self.expr(i, loops, locals_)
            self.require_int(i, f"subscript of {b}")

    def expr(self, e: Expr, loops: set[str], locals_: dict[str, DType]) -> None:
        if id(e) in self.checked:
            return
        self.checked.add(id(e))
        match e:
            case Const():
                pass
            case LoopVar(name=n):
                if n not in loops:
                    self.fail(f"loop variable {n} used outside its loop")
            case LocalVar(name=n, dtype=d):
                if locals_.get(n) != d:
                    self.fail(f"local {n} read out of scope or with the wrong dtype")
            case ScalarArg(name=n, dtype=d):
                if self.scalars.get(n) != d:
                    self.fail(f"unknown scalar parameter {n}")
            case DimOf(buffer=b, axis=a):
                if b not in self.buffers or not 0 <= a < self.buffers[b].ndim:
                    self.fail(f"{b}.shape[{a}] does not exist")
            case Load(buffer=b, index=index, dtype=d):
                if b not in self.buffers or len(index) != self.buffers[b].ndim:
                    self.fail(f"bad access {format_expr(e)}")
                if d != self.buffers[b].dtype:
                    self.fail(f"load from {b} typed {d.name}")
                for i in index:
                    self.require_int(i, f"subscript of {b}")
            case Binary(op=op, lhs=a, rhs=b, dtype=d):
                if a.dtype != b.dtype:
                    self.fail(
                        f"operands of {format_expr(e)} differ: {a.dtype.name}, {b.dtype.name}"
                    )
                if d != (bool_ if op.is_comparison else a.dtype):
                    self.fail(f"{format_expr(e)} typed {d.name}")
                if op in _BITWISE and a.dtype.is_float:
                    self.fail(f"bitwise {op.value} on {a.dtype.name} in {format_expr(e)}")
                self.require_wide(a)
            case Unary(op=op, operand=a, dtype=d):
                if a.dtype != d:
                    self.fail(f"{format_expr(e)} typed {d.name}")
                if op.float_only and not d.is_float:
                    self.fail(f"{op.value} of {d.name} in {format_expr(e)}: it needs a float")
                if op is UnaryOp.INVERT and d.is_float:
                    self.fail(f"bitwise ~ on {d.name} in {format_expr(e)}")
                self.require_wide(a)
            case Select(cond=c, if_true=a, if_false=b, dtype=d):
                self.require_bool(c)
                if not a.dtype == b.dtype == d:
                    self.fail(f"branches of {format_expr(e)} differ in dtype")
            case Fma(a=a, b=b, c=c, dtype=d):
                if not a.dtype == b.dtype == c.dtype == d or not d.is_float:
                    self.fail(f"{format_expr(e)} needs three operands of one float dtype")
        for c in children(e):
            self.expr(c, loops, locals_)

    def require_int(self, e: Expr, what: str) -> None:
        if not e.dtype.is_int:
            self.fail(f"{what} is {e.dtype.name}, not an integer")

    def require_wide(self, e: Expr) -> None:
        if e.dtype.is_half:
            self.fail(
                f"arithmetic on {e.dtype.name} in {format_expr(e)}: it must be widened to f32"
            )

    def require_bool(self, e: Expr) -> None:
        if e.dtype != bool_:
            self.fail(f"condition {format_expr(e)} is {e.dtype.name}, not bool")


def verify(kernel: Kernel, stage: str) -> Kernel:
    """Check `kernel` against the invariants of `stage`; return it unchanged."""
    _Verifier(kernel, stage).run()
    return kernel
