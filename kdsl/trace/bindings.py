"""What a kernel's Python code read from outside itself when it was traced: the globals
its functions load by name (a constant, a helper function) and the variables of their
closures, followed into the user's helper functions. A kernel that is traced once per
signature bakes these values into its code, so when one of them is rebound (a notebook
cell sets `SCALE = 3.0` or redefines a helper) its compiled code is stale: `changed()`
says so, by identity, in a few hundred nanoseconds for the usual handful of names.

Modules are not followed (`kd`, `np`, `math`: rebinding them is not a user's edit), nor
kdsl's own functions. Mutating an object in place (a global list's items) is not seen:
only rebinding a name is."""

from __future__ import annotations

import dis
import inspect
from types import CellType, CodeType, FunctionType, ModuleType

_MISSING = object()
_LOADS_GLOBAL = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})


class Bindings:
    """The outside names a function (and the helpers it calls) read, with their values."""

    __slots__ = ("_globals", "_cells")

    def __init__(self, fn: object) -> None:
        self._globals: list[tuple[dict[str, object], str, object]] = []
        self._cells: list[tuple[CellType, object]] = []
        self._visit(fn, set())

    def __bool__(self) -> bool:
        return bool(self._globals or self._cells)

    def changed(self) -> bool:
        """Whether a name read at the trace is now bound to another object."""
        for scope, name, value in self._globals:
            if scope.get(name, _MISSING) is not value:
                return True
        for cell, value in self._cells:
            try:
                if cell.cell_contents is not value:
                    return True
            except ValueError:  # the variable was deleted
                return True
        return False

    def _visit(self, fn: object, seen: set[int]) -> None:
        fn = inspect.unwrap(fn) if callable(fn) else fn  # type: ignore[arg-type]
        fn = getattr(fn, "__func__", fn)  # a bound method's function
        if not isinstance(fn, FunctionType) or id(fn) in seen:
            return
        if (fn.__module__ or "").partition(".")[0] == "kdsl":
            return
        seen.add(id(fn))
        scope = fn.__globals__
        for name in _global_names(fn.__code__):
            value = scope.get(name, _MISSING)
            if value is _MISSING or isinstance(value, ModuleType):
                continue  # a builtin, or a module
            self._globals.append((scope, name, value))
            self._visit(value, seen)
        for cell in fn.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:  # not yet assigned
                continue
            if not isinstance(value, ModuleType):
                self._cells.append((cell, value))
                self._visit(value, seen)


def _global_names(code: CodeType) -> set[str]:
    """The names `code` and the functions defined in it load as globals."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in _LOADS_GLOBAL}
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _global_names(const)
    return names
