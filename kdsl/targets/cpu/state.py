"""What a function being generated can see: arrays, scalars, loop variables, locals."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from llvmlite import ir


@dataclass
class ArrayInfo:
    data: ir.Value
    dims: list[ir.Value]
    strides: list[ir.Value]  # in bytes


@dataclass
class CodegenState:
    arrays: dict[str, ArrayInfo] = field(default_factory=dict)
    scalars: dict[str, ir.Value] = field(default_factory=dict)
    loops: dict[str, ir.Value] = field(default_factory=dict)  # loop name -> i64 slot
    locals: dict[str, ir.Value] = field(default_factory=dict)  # local name -> slot
    heap_slots: list[ir.Value] = field(default_factory=list)
    tiles_configured: bool = False  # ldtilecfg emitted in this function's entry (amx.py)


class ErrorKind(enum.IntEnum):
    CHECK = 1  # index: ordinal of the Check statement (program order)
    READONLY = 2  # index: position of the array argument
    ALIAS = 3  # index: written array position << 16 | other array position
    BOUNDS = 4  # index: ordinal of the checked access (program order)
    NO_MEMORY = 5  # index: 0
