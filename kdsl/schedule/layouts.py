"""The layouts of a cached copy (`cache(..., layout=...)`): which axis of the buffer each
axis of the copy walks, and blocked axes.

A layout is a string, as a schedule step records it: "packed" (the buffer's axis order),
"transposed", or one part per axis of the copy, comma-separated, where a part is a
buffer axis `d`, or `d//w` and `d%w` for an axis cut into blocks of w (the block, then
the element in the block). "1//16,0,1%16" lays a K × N panel out as N/16 micro-panels of
K × 16, each read front to back by a tile 16 columns wide (BLIS's packed B). A function of
the buffer's axes spells the same (`lambda k, n: (n // 16, k, n % 16)`), and is recorded
as its string.
"""

from __future__ import annotations

import inspect
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass


class LayoutError(ValueError):
    """A layout that names no arrangement of the buffer's axes (the message says why)."""


@dataclass(frozen=True)
class Part:
    """One axis of a copy: buffer axis `axis` whole (block 0), or its blocks of `block`
    elements (`inner` False) or the element within a block (`inner` True)."""

    axis: int
    block: int = 0
    inner: bool = False

    def __str__(self) -> str:
        if not self.block:
            return str(self.axis)
        return f"{self.axis}{'%' if self.inner else '//'}{self.block}"


_PART = re.compile(r"^\s*(\d+)\s*(?:(//|%)\s*(\d+)\s*)?$")


def parse(layout: object, ndim: int) -> tuple[Part, ...]:
    """The parts of `layout` for a buffer of `ndim` axes (None: the buffer's order)."""
    if layout is None or layout == "packed":
        return tuple(Part(d) for d in range(ndim))
    if layout == "transposed":
        return tuple(Part(d) for d in reversed(range(ndim)))
    if callable(layout):
        layout = spell(layout)
    if isinstance(layout, list | tuple) and all(type(p) in (int, str) for p in layout):
        layout = ",".join(str(p) for p in layout)  # (1, 0) or ("1//16", 0, "1%16")
    if not isinstance(layout, str):
        raise LayoutError(f"{layout!r} is not a layout")
    if not layout.strip():
        raise LayoutError("it names no axes")
    parts = []
    for text in layout.split(","):
        if not text.strip():
            raise LayoutError("it has an empty part (a comma at an end, or two together)")
        match = _PART.match(text)
        if match is None:
            raise LayoutError(f"{text.strip()!r} is not an axis, 'axis//block' or 'axis%block'")
        axis, op, block = match.groups()
        parts.append(Part(int(axis), _block(int(block)) if op else 0, op == "%"))
    _check(parts, ndim)
    return tuple(parts)


def _check(parts: list[Part], ndim: int) -> None:
    extra = sorted({p.axis for p in parts if p.axis >= ndim})
    if extra:
        axes = f"axes 0 to {ndim - 1}" if ndim > 1 else "axis 0" if ndim else "no axes"
        raise LayoutError(f"it names axis {extra[0]}, and the buffer has {axes}")
    for axis in range(ndim):
        mine = [p for p in parts if p.axis == axis]
        whole = [p for p in mine if not p.block]
        outer = [p for p in mine if p.block and not p.inner]
        inner = [p for p in mine if p.inner]
        if not mine:
            raise LayoutError(f"it leaves out axis {axis}")
        if whole and len(mine) > 1 or len(outer) > 1 or len(inner) > 1:
            raise LayoutError(f"it names axis {axis} more than once")
        if not whole and (len(outer), len(inner)) != (1, 1):
            raise LayoutError(f"axis {axis} needs both its blocks ({axis}//w) and {axis}%w")
        if outer and outer[0].block != inner[0].block:
            raise LayoutError(f"axis {axis} is cut into blocks of two sizes")


class _Axis:
    """A buffer axis passed to a layout function: it may be cut by `//` and `%`."""

    def __init__(self, axis: int) -> None:
        self.axis = axis

    def __repr__(self) -> str:
        return f"axis {self.axis}"

    def __floordiv__(self, block: object) -> Part:
        return Part(self.axis, _block(block), inner=False)

    def __mod__(self, block: object) -> Part:
        return Part(self.axis, _block(block), inner=True)


MAX_FACTOR = 1 << 31  # any factor of a schedule (a split, a distance, a layout's block): far
# past any real extent, and small enough that the IR's 64-bit arithmetic on it can't wrap


def _block(block: object) -> int:
    if isinstance(block, bool) or not isinstance(block, numbers.Integral) or block < 1:
        raise LayoutError(f"a block is a positive int, not {block!r}")
    if int(block) > MAX_FACTOR:
        raise LayoutError(f"a block of {block} elements is more than {MAX_FACTOR}")
    return int(block)


def spell(layout: Callable[..., object]) -> str:
    """The layout string of a layout function, e.g. `lambda k, n: (n // 16, k, n % 16)`
    -> "1//16,0,1%16"."""
    try:
        params = inspect.signature(layout).parameters.values()
        ndim = sum(p.default is p.empty and p.kind is not p.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):
        raise LayoutError(f"{layout!r} is not a function of the buffer's axes") from None
    try:
        parts = layout(*(_Axis(d) for d in range(ndim)))
    except LayoutError:
        raise
    except Exception as err:  # (any other operation on an axis)
        raise LayoutError(
            f"the layout function failed: {err} (it may only cut an axis with // and %)"
        ) from None
    if not isinstance(parts, tuple | list):
        parts = (parts,)
    texts = []
    for p in parts:
        if isinstance(p, _Axis):
            p = Part(p.axis)
        if not isinstance(p, Part):
            raise LayoutError(
                f"the layout function returned {p!r}: return a tuple of axes, "
                "each whole or cut (n // 16, n % 16)"
            )
        texts.append(str(p))
    return ",".join(texts)


def spelled(layout: object) -> object:
    """`layout` as a step records it: a layout function as its string (as given where it
    spells none: the step then says why)."""
    if not callable(layout):
        return layout
    try:
        return spell(layout)
    except LayoutError:
        return layout


def blocked(parts: tuple[Part, ...]) -> bool:
    return any(p.block for p in parts)
