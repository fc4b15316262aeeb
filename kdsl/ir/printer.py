"""Readable text for IR: loops as a reviewer would write them, with kinds and dtypes."""

from __future__ import annotations

import threading

from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    Buffer,
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
from kdsl.ir.visit import children, stmt_exprs, uses_by_identity

# Binding strength of operators, as in Python; function-style ones bind tightest.
_PRECEDENCE = {
    BinaryOp.POW: 7,
    BinaryOp.MUL: 6,
    BinaryOp.DIV: 6,
    BinaryOp.FLOORDIV: 6,
    BinaryOp.MOD: 6,
    BinaryOp.ADD: 5,
    BinaryOp.SUB: 5,
    BinaryOp.SHL: 4,
    BinaryOp.SHR: 4,
    BinaryOp.AND: 3,
    BinaryOp.XOR: 2,
    BinaryOp.OR: 1,
}
_COMPARE = 0  # the comparisons; Python would chain `a < b == c`, so both sides parenthesize
_UNARY = 8  # -x, ~x: looser than ** on their right (-a ** b is -(a ** b))
_ATOM = 10


def format_expr(e: Expr) -> str:
    return _expr(e)[0]


class _Shared(threading.local):
    """Names of the sub-expressions shared within the statement being printed, by
    identity (per thread: two threads may print at once)."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}


_shared = _Shared()


def _expr(e: Expr) -> tuple[str, int]:
    """Text of `e` and its binding strength (for parentheses)."""
    name = _shared.names.get(id(e))
    if name is not None:
        return (name, _ATOM)
    match e:
        case Const(value=v):
            text = repr(v)
            return (text, _UNARY if text.startswith("-") else _ATOM)
        case LoopVar(name=n) | LocalVar(name=n) | ScalarArg(name=n):
            return (n, _ATOM)
        case DimOf(buffer=b, axis=a):
            return (f"{b}.shape[{a}]", _ATOM)
        case Load(buffer=b, index=index, checked=checked):
            return (_subscripted(b, index, checked), _ATOM)
        case Binary(op=op, lhs=a, rhs=b) if op in (BinaryOp.MAX, BinaryOp.MIN):
            return (f"{op.value}({format_expr(a)}, {format_expr(b)})", _ATOM)
        case Binary(op=BinaryOp.ADD | BinaryOp.SUB as op, lhs=a, rhs=Const(value=v) as c) if (
            not isinstance(v, bool) and v < 0
        ):  # j + -2 reads j - 2 (the same number, float or int)
            flipped = BinaryOp.SUB if op is BinaryOp.ADD else BinaryOp.ADD
            prec = _PRECEDENCE[op]
            return (f"{_paren(a, prec)} {flipped.value} {_expr(Const(-v, c.dtype))[0]}", prec)
        case Binary(op=op, lhs=a, rhs=b):
            prec = _PRECEDENCE.get(op, _COMPARE)
            # Left-associative, except **: right-associative, and its base binds tighter
            # than unary minus ((-a) ** b); comparisons chain, so neither side may be one.
            if op is BinaryOp.POW:
                left = _UNARY + 1
            elif op.is_comparison:
                left = prec + 1
            else:
                left = prec
            return (f"{_paren(a, left)} {op.value} {_paren(b, prec + 1)}", prec)
        case Unary(op=op, operand=a):
            if op is UnaryOp.NEG:
                return (f"-{_paren(a, _ATOM)}", _UNARY)
            if op is UnaryOp.INVERT:
                return (f"~{_paren(a, _ATOM)}", _UNARY)
            return (f"{op.value}({format_expr(a)})", _ATOM)
        case Select(cond=c, if_true=a, if_false=b):
            return (f"where({format_expr(c)}, {format_expr(a)}, {format_expr(b)})", _ATOM)
        case Cast(operand=a, dtype=d):
            return (f"{d.name}({format_expr(a)})", _ATOM)
        case Fma(a=a, b=b, c=c):
            return (f"fma({format_expr(a)}, {format_expr(b)}, {format_expr(c)})", _ATOM)
    raise TypeError(f"not an IR expression: {e!r}")


def _paren(e: Expr, min_prec: int) -> str:
    text, prec = _expr(e)
    return text if prec >= min_prec else f"({text})"


_BIND_SIZE = 12  # smaller shared expressions (x[i], i + 1) read better written out


def _bind_shared(s: Stmt, pad: str) -> list[str]:
    """Lines `$1 = …` for the compound sub-expressions the statement uses more than once
    (a traced value used twice): printed once each, so the text stays linear in size."""
    shared = _shared.names
    shared.clear()
    uses, order = uses_by_identity(stmt_exprs(s))
    size: dict[int, int] = {}  # nodes in the tree each prints as, capped
    for e in order:
        size[id(e)] = min(_BIND_SIZE, 1 + sum(size[id(c)] for c in children(e)))
    lines = []
    for e in order:
        if uses[id(e)] > 1 and size[id(e)] >= _BIND_SIZE:
            text = format_expr(e)
            shared[id(e)] = f"${len(shared) + 1}"
            lines.append(f"{pad}{shared[id(e)]} = {text}")
    return lines


def _subscripted(buffer: str, index: tuple[Expr, ...], checked: bool) -> str:
    """`x[i, j]`; `x[i, j]?` for an access checked where it runs (nothing proved it)."""
    return f"{buffer}[{', '.join(format_expr(i) for i in index)}]{'?' if checked else ''}"


def format_stmts(body: tuple[Stmt, ...], indent: int = 1) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    for s in body:
        out.extend(_bind_shared(s, pad))
        match s:
            case Store(buffer=b, index=index, value=v, checked=checked):
                out.append(f"{pad}{_subscripted(b, index, checked)} = {format_expr(v)}")
            case DeclareLocal(name=n, dtype=d, init=v):
                out.append(f"{pad}{n}: {d.name} = {format_expr(v)}")
            case Assign(local=n, value=v):
                out.append(f"{pad}{n} = {format_expr(v)}")
            case Allocate(buffer=b):
                out.append(f"{pad}allocate {b}")
            case Prefetch(buffer=b, index=index, write=w):
                what = "prefetch for write" if w else "prefetch"
                out.append(f"{pad}{what} {b}[{', '.join(format_expr(i) for i in index)}]")
            case Loop(var=var, extent=ext, kind=kind, body=inner, exec=ex, width=w):
                how = "" if ex is LoopExec.SERIAL else f", {ex.value}" + (f"({w})" if w > 1 else "")
                if ex in (LoopExec.AMX, LoopExec.MMA) and w == 0:
                    how += " from zero"
                out.append(f"{pad}for {var} in range({format_expr(ext)}):  # {kind.value}{how}")
                out.extend(format_stmts(inner, indent + 1))
            case If(cond=c, then=then):
                out.append(f"{pad}if {format_expr(c)}:")
                out.extend(format_stmts(then, indent + 1))
            case Check(cond=c, kind=kind):
                out.append(f"{pad}check {format_expr(c)}  # {kind.value}")
        _shared.names.clear()
    return out


def _buffer_decl(b: Buffer) -> str:
    dims = ", ".join(format_expr(d) for d in b.shape)
    layout = "" if b.contiguous or b.role is not BufferRole.PARAM else ", strided"
    layout = ", Fortran order" if b.fortran else layout
    layout += ", nontemporal" if b.nontemporal else ""
    layout += f" above {b.nontemporal_above} bytes" if b.nontemporal_above else ""
    return f"{b.name}: {b.dtype.name}[{dims}] {b.role.value} {b.scope.value}{layout}"


def format_kernel(k: Kernel) -> str:
    params = ", ".join(
        f"{p.name}: {p.dtype.name}" + (f"[{p.ndim}d]" if p.is_array else "") for p in k.params
    )
    lines = [f"kernel {k.name}({params})" + (f" -> {', '.join(k.results)}" if k.results else "")]
    lines += [f"  buffer {_buffer_decl(b)}" for b in k.buffers]
    lines += format_stmts(k.body)
    return "\n".join(lines)
