"""The user's side of a trace: which frame is theirs, its source location, the names it assigns."""

from __future__ import annotations

import builtins
import contextlib
import dis
import os
import sys
from types import CodeType, FrameType, ModuleType

import numpy as np

from kdsl.config import kdsls_own
from kdsl.errors import SourceLoc

_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__)) + os.sep
_CONTEXTLIB = contextlib.__file__


def _is_internal(code: CodeType) -> bool:
    path = code.co_filename
    if path.startswith(_NUMPY_DIR) or path == _CONTEXTLIB:  # np.sum(x[i]); `with kd.when`
        return True
    return kdsls_own(path)


def user_frame() -> FrameType | None:
    """The innermost frame that is neither kdsl's own code (kdsl.kernels counts as user
    code) nor NumPy's."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and _is_internal(frame.f_code):
        frame = frame.f_back
    return frame


def _instructions(code: CodeType) -> list[dis.Instruction]:
    cached = _INSTRUCTIONS.get(code)
    if cached is None:
        cached = _INSTRUCTIONS[code] = list(dis.get_instructions(code))
    return cached


_INSTRUCTIONS: dict[CodeType, list[dis.Instruction]] = {}


def _current(frame: FrameType) -> tuple[list[dis.Instruction], int]:
    """The frame's instructions and the position of the one running (f_lasti may point
    into its inline cache entries, so take the last instruction starting at or before)."""
    instrs = _instructions(frame.f_code)
    pos = -1
    for n, ins in enumerate(instrs):
        if ins.offset > frame.f_lasti:
            break
        pos = n
    return instrs, pos


def location(frame: FrameType | None = None) -> SourceLoc | None:
    """Where the user's code is now: file, line and the span of the expression running."""
    frame = frame or user_frame()
    if frame is None:
        return None
    instrs, pos = _current(frame)
    positions = instrs[pos].positions if pos >= 0 else None
    if positions is not None and positions.lineno is not None:
        one_line = positions.end_lineno == positions.lineno  # (else the span ends elsewhere)
        return SourceLoc(
            frame.f_code.co_filename,
            positions.lineno,
            positions.col_offset,
            positions.end_col_offset if one_line else None,
        )
    return SourceLoc(frame.f_code.co_filename, frame.f_lineno)


# what may run between a callee's loads and its call, at the call's own position
_CALL_STEPS = {"PUSH_NULL", "PRECALL", "KW_NAMES", "CACHE", "NOP", "EXTENDED_ARG"}


def _callee_names(instrs: list[dis.Instruction], pos: int) -> list[str]:
    """The dotted name the call at instrs[pos] calls (['math', 'exp'] for `math.exp(v)`),
    read from the bytecode, so that code typed at a prompt (no source file) is served
    too: the loads at the call's own start position, before it. [] when the callee is
    not a plain or dotted name (`f(x)(y)`, `fs[0](x)`)."""
    call = instrs[pos].positions
    if call is None or call.lineno is None:
        return []
    start = (call.lineno, call.col_offset)
    names: list[str] = []
    for ins in instrs[:pos]:
        p = ins.positions
        if p is None or (p.lineno, p.col_offset) != start:
            continue
        if ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and names:
            names.append(ins.argval)
        elif ins.opname.startswith(("LOAD_GLOBAL", "LOAD_NAME", "LOAD_FAST", "LOAD_DEREF")):
            names = [ins.argval]
        elif ins.opname not in _CALL_STEPS:  # a call or a subscript makes the callee
            names = []
    return names


def called_function(frame: FrameType | None = None) -> object:
    """The function the user's code is calling now, when the call is written as a plain
    or dotted name (`max(…)`, `math.exp(…)`, `exp(…)`); None otherwise."""
    frame = frame or user_frame()
    if frame is None:
        return None
    instrs, pos = _current(frame)
    if pos < 0 or not instrs[pos].opname.startswith("CALL"):
        return None
    names = _callee_names(instrs, pos)
    if not names:
        return None
    first, *rest = names
    scopes = (frame.f_locals, frame.f_globals, vars(builtins))
    obj = next((scope[first] for scope in scopes if first in scope), None)
    for attr in rest:
        if not isinstance(obj, ModuleType):  # read modules' attributes only: no side effects
            return None
        obj = getattr(obj, attr, None)
    return obj


_STORES = {"STORE_FAST", "STORE_NAME", "STORE_GLOBAL", "STORE_DEREF"}
_SKIP = {"GET_ITER", "FOR_ITER", "CACHE", "NOP", "EXTENDED_ARG"}


def assigned_names(frame: FrameType | None = None) -> list[str]:
    """The names the value of the call now running is stored to, e.g. ['i', 'j'] for
    `i, j = kd.indices(...)` or `for i, j in kd.grid(...)`; [] when it is not stored
    to plain names."""
    frame = frame or user_frame()
    if frame is None:
        return []
    instrs, pos = _current(frame)
    if pos < 0:
        return []
    rest = [ins for ins in instrs[pos + 1 :] if ins.opname not in _SKIP]
    if not rest:
        return []
    count = 1
    if rest[0].opname == "UNPACK_SEQUENCE":
        count = int(rest[0].arg or 0)
        rest = rest[1:]
    names: list[str] = []
    for ins in rest:
        if len(names) >= count:
            break
        if ins.opname in _STORES:
            names.append(str(ins.argval))
        elif ins.opname == "STORE_FAST_STORE_FAST":  # Python 3.13 superinstruction
            names.extend(str(n) for n in ins.argval)
        else:
            break
    return names if len(names) == count else []
