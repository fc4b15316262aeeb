"""Where a temporary lives: its size when the shape is constant, and the scope that
size implies (small constant temporaries on the stack, the rest on the heap)."""

from __future__ import annotations

from kdsl.ir.nodes import Const, Expr, Scope

STACK_LIMIT_BYTES = 16 * 1024


def constant_nbytes(shape: tuple[Expr, ...], itemsize: int) -> int | None:
    """Bytes of a buffer of `shape` when every dimension is a constant (negative ones
    count as empty), else None."""
    size = itemsize
    for d in shape:
        if not isinstance(d, Const):
            return None
        size *= max(0, int(d.value))
    return size


def temp_scope(shape: tuple[Expr, ...], itemsize: int) -> Scope:
    nbytes = constant_nbytes(shape, itemsize)
    return Scope.STACK if nbytes is not None and nbytes <= STACK_LIMIT_BYTES else Scope.HEAP
