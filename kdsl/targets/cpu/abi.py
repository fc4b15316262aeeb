"""Where NumPy keeps an array's fields, so compiled code can read them from the object.

`PyArrayObject` starts with the object header, then data, nd, dimensions, strides,
base, descr and flags (NumPy's stable ABI). The header's size comes from the running
interpreter (`object.__basicsize__`), and the layout is checked against a real array
once at import: a mismatch disables the fast path instead of reading wrong memory.
"""

from __future__ import annotations

import ctypes

import numpy as np

_HEAD = object.__basicsize__
_PTR = ctypes.sizeof(ctypes.c_void_p)

ARRAY_LAYOUT = {
    "data": _HEAD,
    "nd": _HEAD + _PTR,
    "dimensions": _HEAD + 2 * _PTR,
    "strides": _HEAD + 3 * _PTR,
    "flags": _HEAD + 6 * _PTR,
}
WRITEABLE_FLAG = 0x0400


def _read(obj: object, field: str, ctype: type) -> int:
    return ctype.from_address(id(obj) + ARRAY_LAYOUT[field]).value  # type: ignore[attr-defined, no-any-return]


def layout_matches() -> bool:
    """True when ARRAY_LAYOUT reads this NumPy's arrays correctly."""
    probe = np.zeros((3, 5), np.float32)[:, ::2]
    dims = ctypes.cast(_read(probe, "dimensions", ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64))
    strides = ctypes.cast(_read(probe, "strides", ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64))
    readonly = np.zeros(2)
    readonly.flags.writeable = False
    return (
        _read(probe, "data", ctypes.c_void_p) == probe.ctypes.data
        and _read(probe, "nd", ctypes.c_int) == 2
        and (dims[0], dims[1]) == probe.shape
        and (strides[0], strides[1]) == probe.strides
        and bool(_read(probe, "flags", ctypes.c_int) & WRITEABLE_FLAG)
        and not _read(readonly, "flags", ctypes.c_int) & WRITEABLE_FLAG
    )
