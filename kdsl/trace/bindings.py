"""What a kernel's Python code read from outside itself when it was traced: the globals
its functions load by name (a constant, a helper function) and the variables of their
closures, followed into the user's helper functions. A kernel that is traced once per
signature bakes these values into its code, so when one of them is rebound to another
value (a notebook cell sets `SCALE = 3.0` or redefines a helper) its compiled code is
stale: `changed()` says so, in a few hundred nanoseconds for a dozen names.

A plain constant (a number, a string, None, a tuple of them) rebound to an equal one
(`SCALE = float(cfg["scale"])` before each call) is no change: compared by type and
exact value, as constexpr arguments are. Anything else is compared by identity.
Modules are not followed (`kd`, `np`, `math`: rebinding them is not a user's edit), nor
kdsl's own functions. Mutating an object in place (a global list's items) is not seen:
only rebinding a name is."""

from __future__ import annotations

import dis
import inspect
import operator
from collections.abc import Callable
from types import CellType, CodeType, FunctionType, ModuleType

import numpy as np

from kdsl.trace.tracer import exact_key

_MISSING = object()
_LOADS_GLOBAL = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_PLAIN = (int, float, complex, str, bytes, bool, type(None), tuple, np.generic)


class Bindings:
    """The outside names a function (and the helpers it calls) read, with their values."""

    __slots__ = ("_scopes", "_cells", "_checks")

    def __init__(self, fn: object) -> None:
        self._scopes: dict[int, tuple[dict[str, object], list[str], list[object]]] = {}
        self._cells: list[tuple[CellType, object]] = []
        self._visit(fn, set())
        self._checks = self._make_checks()

    def __bool__(self) -> bool:
        return bool(self._scopes or self._cells)

    def changed(self) -> bool:
        """Whether a name read at the trace is now bound to another value: by identity
        first (every call, a dict lookup and a comparison a name), then by value."""
        for scope, get, values in self._checks:
            try:
                now = get(scope)
            except KeyError:  # a name was deleted
                return True
            if not all(map(operator.is_, now, values)):
                return self._rebound()
        for cell, value in self._cells:
            try:
                if cell.cell_contents is not value:
                    return self._rebound()
            except ValueError:  # the variable was deleted
                return True
        return False

    def _rebound(self) -> bool:
        """After a name failed the identity test: whether some value really differs;
        where all are equal plain constants, they are taken as the values from now on."""
        scopes = self._scopes.values()
        for scope, names, values in scopes:
            if not all(_same(scope.get(n, _MISSING), v) for n, v in zip(names, values)):
                return True
        if not all(_same(_contents(c), v) for c, v in self._cells):
            return True
        for scope, names, values in scopes:
            values[:] = [scope[n] for n in names]
        self._cells = [(c, c.cell_contents) for c, _ in self._cells]
        self._checks = self._make_checks()
        return False

    def _make_checks(
        self,
    ) -> tuple[tuple[dict[str, object], Callable[..., object], tuple[object, ...]], ...]:
        """Per scope: a getter of its names' values as a tuple, and those values."""
        checks = []
        for scope, names, values in self._scopes.values():
            get = operator.itemgetter(*names)
            one = len(names) == 1  # (itemgetter of one name returns the value itself)
            checks.append((scope, (lambda g, get=get: (get(g),)) if one else get, tuple(values)))
        return tuple(checks)

    def _visit(self, fn: object, seen: set[int]) -> None:
        fn = inspect.unwrap(fn) if callable(fn) else fn  # type: ignore[arg-type]
        fn = getattr(fn, "__func__", fn)  # a bound method's function
        if not isinstance(fn, FunctionType) or id(fn) in seen:
            return
        if (fn.__module__ or "").partition(".")[0] == "kdsl":
            return
        seen.add(id(fn))
        globals_ = fn.__globals__
        for name in sorted(_global_names(fn.__code__)):
            value = globals_.get(name, _MISSING)
            if value is _MISSING or isinstance(value, ModuleType):
                continue  # a builtin, or a module
            _, names, values = self._scopes.setdefault(id(globals_), (globals_, [], []))
            if name not in names:
                names.append(name)
                values.append(value)
                self._visit(value, seen)
        for cell in fn.__closure__ or ():
            value = _contents(cell)
            if value is not _MISSING and not isinstance(value, ModuleType):
                self._cells.append((cell, value))
                self._visit(value, seen)


def _contents(cell: CellType) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # not assigned, or deleted
        return _MISSING


def _same(a: object, b: object) -> bool:
    """Whether a rebound name's new value is the old one, for the code traced from it."""
    return a is b or (
        type(a) is type(b) and isinstance(a, _PLAIN) and _plain(a) and exact_key(a) == exact_key(b)
    )


def _plain(v: object) -> bool:
    return not isinstance(v, tuple) or all(isinstance(x, _PLAIN) and _plain(x) for x in v)


def _global_names(code: CodeType) -> set[str]:
    """The names `code` and the functions defined in it load as globals."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in _LOADS_GLOBAL}
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _global_names(const)
    return names
