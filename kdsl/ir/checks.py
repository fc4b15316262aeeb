"""The message of a failed Check: what should hold, and the values that broke it."""

from __future__ import annotations

from collections.abc import Mapping

from kdsl.ir.nodes import Check, Expr
from kdsl.ir.printer import format_expr


def describe_failed_check(check: Check, values: Mapping[Expr, object]) -> str:
    """E.g. "A.shape[1] == B.shape[0] does not hold (A.shape[1] = 3, B.shape[0] = 5)"."""
    shown = ", ".join(f"{format_expr(e)} = {v}" for e, v in values.items())
    return f"{check.what} does not hold" + (f" ({shown})" if shown else "")
