"""The kdsl exception hierarchy and the source locations its messages quote."""

from __future__ import annotations

import ast
import linecache
from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLoc:
    """A place in the user's source: file, line and (when known) the column span."""

    file: str
    line: int
    col: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f'File "{self.file}", line {self.line}'

    @property
    def text(self) -> str:
        return linecache.getline(self.file, self.line).rstrip("\n")

    def expression(self) -> tuple[str, ast.expr] | None:
        """The span's text and its parsed expression, where the span is one expression
        on one line (as Python 3.11 reports a running operation); else None."""
        if self.col is None or self.end_col is None:
            return None
        span = self.text[self.col : self.end_col]
        try:
            return span, ast.parse(span, mode="eval").body
        except SyntaxError:
            return None

    def subscripts(self) -> tuple[str, ...] | None:
        """The subscripts as the user wrote them, where the span is a subscripted array
        (`data[t, j - 2]`: ("t", "j - 2")); None where it is something else."""
        found = self.expression()
        if found is None:
            return None
        span, node = found
        if not isinstance(node, ast.Subscript):
            return None
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return tuple(ast.get_source_segment(span, p) or ast.unparse(p) for p in parts)

    def excerpt(self) -> str:
        """The source line with a caret under the span, indented for a message."""
        text = self.text
        if not text:
            return f"  {self}"
        stripped = text.lstrip()
        indent = len(text) - len(stripped)
        lines = [f"  {self}", f"    {stripped}"]
        if self.col is not None and self.col >= indent:
            end = self.end_col if self.end_col and self.end_col > self.col else len(text)
            lines.append("    " + " " * (self.col - indent) + "^" * max(1, end - self.col))
        return "\n".join(lines)


class KdslError(Exception):
    """Base of every error kdsl raises on purpose.

    The message says what went wrong, where (the kernel, the user's source line) and
    the fix; `str(err)` is the whole of it.
    """

    def __init__(
        self,
        what: str,
        *,
        kernel: str | None = None,
        loc: SourceLoc | None = None,
        fix: str | None = None,
    ) -> None:
        self.what = what
        self.kernel = kernel
        self.loc = loc
        self.fix = fix
        super().__init__(self._format())

    def _format(self) -> str:
        head = f"in kernel '{self.kernel}': {self.what}" if self.kernel else self.what
        parts = [head]
        if self.loc is not None:
            parts.append(self.loc.excerpt())
        if self.fix:
            parts.append(f"  fix: {self.fix}")
        return "\n".join(parts)

    def __reduce__(self) -> tuple[object, ...]:  # picklable: worker processes send errors back
        return (_rebuild, (type(self), self.what, self.kernel, self.loc, self.fix))

    def with_kernel(self, kernel: str) -> KdslError:
        """The same error, naming the kernel it happened in (if it did not already)."""
        if self.kernel is None:
            self.kernel = kernel
            self.args = (self._format(),)
        return self


def _rebuild(cls, what, kernel, loc, fix):  # type: ignore[no-untyped-def]
    return cls(what, kernel=kernel, loc=loc, fix=fix)


class TraceError(KdslError):
    """The kernel's Python code can't be traced: unsupported construct or misuse of kd.*."""


class ShapeError(KdslError, ValueError):
    """Argument shapes disagree with what the kernel's subscripts tie together."""


class KernelArgumentError(KdslError, TypeError, ValueError):
    """A bad argument: wrong type, dtype, rank, read-only output, aliasing, wrong device."""


class ArgumentTraceError(TraceError, KernelArgumentError):
    """An argument the kernel's code can't be traced with: an array of another rank than
    the kernel reads, an output whose dtype can't hold what the kernel stores in it, a
    scalar where the kernel reads an array. A TraceError (found while tracing, told at
    the kernel's line) and a KernelArgumentError (a TypeError and a ValueError: the
    caller passed the wrong thing)."""


class ScheduleError(KdslError):
    """A schedule step that does not apply, or is not legal, on the kernel's loops."""


class CompileError(KdslError):
    """Code generation failed (a kdsl bug, a backend limit, or a GPU architecture kdsl
    can't build for); the message says which."""


class BoundsError(KdslError, IndexError):
    """A subscript fell outside its buffer at run time (raised under checks=True)."""
