"""A user's schedule function: checked where it is attached, run so that a step called
with arguments it does not take is a ScheduleError at the user's line, and closed after
it returns (a kept `s` takes no more steps: they would change nothing that runs)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from types import TracebackType

from kdsl.config import kdsls_own
from kdsl.errors import ScheduleError, SourceLoc
from kdsl.schedule.recipe import Schedule

ScheduleFunction = Callable[[Schedule], object]

# Python's own words when a call's arguments do not bind to a method of Schedule
_BINDING = re.compile(
    r"Schedule\.(\w+)\(\) (?:got an unexpected keyword|got multiple values|missing \d+ required"
    r"|takes (?:from )?\d+ (?:to \d+ )?positional)"
)


def check_attached(fn: ScheduleFunction, kernel: str) -> None:
    """Refuse, where it is attached, a schedule function that could not run its steps:
    a generator or async function, or one that does not take the Schedule as its one
    argument."""
    name = getattr(fn, "__name__", repr(fn))
    code = getattr(fn, "__code__", None)
    loc = code and SourceLoc(code.co_filename, code.co_firstlineno)
    if inspect.isgeneratorfunction(fn) or inspect.iscoroutinefunction(fn):
        raise ScheduleError(
            f"the schedule {name!r} is a generator or async function: calling it would not "
            "run its steps",
            kernel=kernel,
            loc=loc,
            fix="write it as a plain function (def, without yield or async)",
        )
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # (a callable Python can't inspect: left to run)
        return
    try:
        signature.bind(None)
    except TypeError:
        raise ScheduleError(
            f"the schedule {name!r} takes {signature}, but a schedule function is called "
            "with one argument, the Schedule",
            kernel=kernel,
            loc=loc,
            fix=f"define it as `def {name}(s):` and make the steps on s",
        ) from None


def run(fn: ScheduleFunction, s: Schedule) -> None:
    """Apply `fn`'s steps to `s`, then close `s`."""
    try:
        fn(s)
    except TypeError as err:
        step_error = _step_call_error(err, s.kernel.name)
        if step_error is None:
            raise
        raise step_error from None
    finally:
        s._close()


def _step_call_error(err: TypeError, kernel: str) -> ScheduleError | None:
    """A ScheduleError for a step called with arguments it does not take (`s.tile("i",
    8, widht=4)`): Python refused the call before the step ran, so the innermost frame
    is the user's line. None for any other TypeError."""
    found = _BINDING.match(str(err))
    tb = _innermost(err.__traceback__)
    if found is None or tb is None or kdsls_own(tb.tb_frame.f_code.co_filename):
        return None
    step = getattr(Schedule, found.group(1), None)
    if step is None:
        return None
    params = [  # (without self; annotations are strings under `from __future__`)
        p.replace(annotation=inspect.Parameter.empty)
        for p in list(inspect.signature(step).parameters.values())[1:]
    ]
    return ScheduleError(
        f"s.{found.group(1)} was called with arguments it does not take: {err}",
        kernel=kernel,
        loc=SourceLoc(tb.tb_frame.f_code.co_filename, tb.tb_lineno),
        fix=f"call it as s.{found.group(1)}({', '.join(map(str, params))})",
    )


def _innermost(tb: TracebackType | None) -> TracebackType | None:
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb
