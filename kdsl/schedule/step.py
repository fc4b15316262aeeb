"""One schedule step being applied: the kernel it sees, and how it refuses."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

from kdsl.errors import ScheduleError, SourceLoc
from kdsl.ir.nodes import Kernel, Loop
from kdsl.ir.visit import fresh_namer
from kdsl.schedule import tree


def as_int(value: object) -> int | None:
    """`value` as an int if it is an integer of any type (a NumPy one too), else None
    (bools too: True is no factor)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def plain(value: object) -> object:
    """`value` with its integers as ints (in lists and tuples too): what JSON can hold."""
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    n = as_int(value)
    return value if n is None else n


@dataclass(frozen=True)
class Step:
    """A primitive and its arguments: plain JSON values (loop names are strings)."""

    primitive: str
    args: tuple[object, ...] = ()
    kwargs: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        # a NumPy integer factor (np.int64(4)) is recorded as the int it is
        object.__setattr__(self, "args", plain(self.args))
        object.__setattr__(self, "kwargs", tuple((k, plain(v)) for k, v in self.kwargs))

    def __str__(self) -> str:
        def text(v: object) -> str:
            try:
                return json.dumps(v)
            except TypeError:  # a refused odd argument (np.float32(4.0)) prints as itself
                return repr(v)

        parts = [text(a) for a in self.args] + [f"{k}={text(v)}" for k, v in self.kwargs]
        return f"{self.primitive}({', '.join(parts)})"


@dataclass
class StepContext:
    """What a primitive needs: the kernel so far, options, and a way to refuse."""

    kernel: Kernel
    step: Step
    strict_fp: bool = False
    target: str = "cpu"
    loc: SourceLoc | None = None
    clones: dict[str, list[str]] = field(default_factory=dict)  # loop -> its distributed copies
    vector_check: Callable[[Loop, Kernel], str | None] | None = None  # the target's limits
    tile_instructions: Callable[[], frozenset[str]] = frozenset  # its matrix instructions
    fresh: Callable[[str], str] = field(init=False)

    def __post_init__(self) -> None:
        self.fresh = fresh_namer(self.kernel)
        self.before = self.kernel  # refusals list the loops the user saw

    def refuse(self, what: str, fix: str) -> ScheduleError:
        names = ", ".join(tree.loop_names(self.before)) or "none"
        return ScheduleError(
            f"schedule step {self.step} is not possible: {what} (the loops are: {names})",
            kernel=self.kernel.name,
            loc=self.loc,
            fix=fix,
        )

    def loop(self, name: object) -> tuple[tree.Path, Loop]:
        if not isinstance(name, str):
            raise self.refuse(
                f"{name!r} is not a loop name", "name loops by their strings, e.g. 'i'"
            )
        found = tree.find_loop(self.kernel.body, name)
        if found is None:
            raise self.refuse(
                f"there is no loop named '{name}'",
                "use one of the loop names listed (kernel.ir(...) prints the loops a schedule names)",
            )
        return found
