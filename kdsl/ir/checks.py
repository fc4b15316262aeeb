"""The error of a failed Check: what should hold, and the values that broke it.

Every target reports a failed `Check` the same way: the interpreter and the CPU
runtime collect the current values of `check_operands(check)` (or those they can
know) and raise `check_error(check, values)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kdsl.errors import BoundsError, KdslError, KernelArgumentError, ShapeError
from kdsl.ir.evaluate import evaluate
from kdsl.ir.nodes import Check, CheckKind, DimOf, Expr, LocalVar, LoopVar, ScalarArg
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import walk_expr

_FIX = {
    CheckKind.SHAPE: "pass arrays whose dimensions agree",
    CheckKind.BOUNDS: "keep the subscript inside the array's shape, "
    "or guard it with kd.when / kd.where",
    CheckKind.ARGUMENT: "pass a value in that range, or make the array operand a wider dtype",
}
_ERROR = {
    CheckKind.SHAPE: ShapeError,
    CheckKind.BOUNDS: BoundsError,
    CheckKind.ARGUMENT: KernelArgumentError,
}


def quoted_operands(*exprs: Expr) -> tuple[Expr, ...]:
    """The values an error about `exprs` quotes: the shapes, scalar arguments, loop
    variables and locals they mention, each once, in reading order."""
    quoted = (
        e
        for x in exprs
        for e in walk_expr(x)
        if isinstance(e, DimOf | ScalarArg | LoopVar | LocalVar)
    )
    return tuple(dict.fromkeys(quoted))


def check_operands(check: Check) -> tuple[Expr, ...]:
    """The values a failed `check` quotes (see quoted_operands)."""
    return quoted_operands(check.cond)


def describe_failed_check(check: Check, values: Mapping[Expr, object]) -> str:
    """E.g. "A.shape[1] == B.shape[0] does not hold (A.shape[1] = 3, B.shape[0] = 5)"."""
    shown = ", ".join(f"{format_expr(e)} = {v}" for e, v in values.items())
    return f"{check.what} does not hold" + (f" ({shown})" if shown else "")


def check_error(
    check: Check, values: Mapping[Expr, object], kernel: str | None = None
) -> KdslError:
    """The error to raise for `check`: ShapeError, BoundsError or KernelArgumentError by
    its kind, quoting `values`, pointing at the check's source line, with the fix for
    that kind."""
    return _ERROR[check.kind](
        describe_failed_check(check, values),
        kernel=kernel,
        loc=check.loc,
        fix=check.fix or _FIX[check.kind],
    )


def failed_check_error(
    check: Check,
    shapes: Mapping[str, Sequence[int]],
    scalars: Mapping[str, object],
    kernel: str | None = None,
) -> KdslError:
    """check_error for a check that failed in compiled code, quoting what its caller
    knows after the call: the arguments' shapes and scalars it reads."""
    values: dict[Expr, object] = {
        e: evaluate(e, shapes, scalars)
        for e in walk_expr(check.cond)
        if isinstance(e, DimOf | ScalarArg)
    }
    return check_error(check, values, kernel)
