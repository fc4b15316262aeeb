"""Whether two strided arrays share memory, exactly.

A kernel that writes one array argument while reading another must refuse arrays that
share memory. Comparing the address ranges the arrays span is quick, but too coarse
for views of one buffer: a matrix's left and right column halves, its even and odd
rows, a block and another's transpose all span overlapping ranges without sharing a
byte. Where the ranges meet, NumPy's exact solver (`np.shares_memory`, a bounded
search over the strides' integer combinations) decides. It is given views of the
addresses alone (the memory is never read), so it serves GPU arrays too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_WORK = 100_000  # the solver's bound: past it, the arrays are taken to share memory


@dataclass(frozen=True)
class Layout:
    """Where an array's elements lie: its first element's address, its shape, its
    strides in bytes and its element size."""

    address: int
    shape: Sequence[int]
    strides: Sequence[int]
    itemsize: int

    @staticmethod
    def of(a: np.ndarray) -> Layout:  # type: ignore[type-arg]
        return Layout(a.__array_interface__["data"][0], a.shape, a.strides, a.itemsize)

    def view(self) -> np.ndarray:  # type: ignore[type-arg]
        """An array at these addresses, for the solver only (never read)."""
        interface = {
            "version": 3,
            "shape": tuple(self.shape),
            "strides": tuple(self.strides),
            "typestr": f"|V{self.itemsize}",
            "data": (self.address, True),
        }
        return np.asarray(_Interface(interface))


class _Interface:
    def __init__(self, interface: dict[str, object]) -> None:
        self.__array_interface__ = interface


def share_memory(a: Layout, b: Layout) -> bool:
    """Whether some byte belongs to an element of both (True when the solver would
    take too long to say)."""
    try:
        return bool(np.shares_memory(a.view(), b.view(), max_work=MAX_WORK))
    except np.exceptions.TooHardError:
        return True


def overlaps_itself(a: Layout) -> bool:
    """Whether two elements of `a` surely share memory: a stride of 0 along an axis of
    two elements or more, or fewer bytes spanned than its elements fill (a writable
    `as_strided` view whose rows overlap). The CPU entry makes the same test in its
    code (codegen's _check_self_overlap)."""
    count, lo, hi, repeats = 1, 0, a.itemsize, False
    for n, s in zip(a.shape, a.strides):
        repeats |= n > 1 and s == 0
        count *= n
        lo, hi = (lo + (n - 1) * s, hi) if s < 0 else (lo, hi + (n - 1) * s)
    return count > 1 and (repeats or hi - lo < count * a.itemsize)  # (none: no overlap)


def one_view(a: Layout, b: Layout) -> bool:
    """Whether `a` and `b` are the same view of an array whose elements are all apart
    (a sliding window's rows overlap: one element there is several of the view's), so
    that distinct subscripts are distinct elements: what an in-place update needs."""
    if a != b:
        return False
    reach = a.itemsize  # bytes spanned by the axes of smaller stride
    for stride, n in sorted((abs(s), n) for n, s in zip(a.shape, a.strides) if n > 1):
        if stride < reach:
            return False
        reach = stride * (n - 1) + reach
    return True
