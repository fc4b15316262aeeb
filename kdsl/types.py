"""Scalar dtypes and kdsl's promotion rules (NumPy-like, with weak Python scalars)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class Kind(enum.Enum):
    BOOL = "b"
    INT = "i"
    UINT = "u"
    FLOAT = "f"


@dataclass(frozen=True)
class DType:
    """A scalar element type. Instances are singletons: compare with `is` or `==`."""

    name: str
    kind: Kind
    bits: int

    def __repr__(self) -> str:
        return f"kd.{self.name}"

    @property
    def itemsize(self) -> int:
        return max(1, self.bits // 8)

    @property
    def is_float(self) -> bool:
        return self.kind is Kind.FLOAT

    @property
    def is_int(self) -> bool:
        return self.kind in (Kind.INT, Kind.UINT)

    @property
    def is_signed(self) -> bool:
        return self.kind is Kind.INT

    @property
    def is_bool(self) -> bool:
        return self.kind is Kind.BOOL

    @property
    def is_half(self) -> bool:
        """f16 and bf16 are storage types: kdsl computes on them in f32."""
        return self.kind is Kind.FLOAT and self.bits == 16

    def to_numpy(self) -> np.dtype:
        if self.name == "bf16":
            return _bf16_numpy()
        return np.dtype(_NUMPY_NAMES[self.name])


bool_ = DType("bool_", Kind.BOOL, 1)
i8 = DType("i8", Kind.INT, 8)
i16 = DType("i16", Kind.INT, 16)
i32 = DType("i32", Kind.INT, 32)
i64 = DType("i64", Kind.INT, 64)
u8 = DType("u8", Kind.UINT, 8)
u16 = DType("u16", Kind.UINT, 16)
u32 = DType("u32", Kind.UINT, 32)
u64 = DType("u64", Kind.UINT, 64)
f16 = DType("f16", Kind.FLOAT, 16)
bf16 = DType("bf16", Kind.FLOAT, 16)
f32 = DType("f32", Kind.FLOAT, 32)
f64 = DType("f64", Kind.FLOAT, 64)

ALL_DTYPES: tuple[DType, ...] = (bool_, i8, i16, i32, i64, u8, u16, u32, u64, f16, bf16, f32, f64)
BY_NAME: dict[str, DType] = {d.name: d for d in ALL_DTYPES}

_NUMPY_NAMES = {
    "bool_": "bool",
    "i8": "int8",
    "i16": "int16",
    "i32": "int32",
    "i64": "int64",
    "u8": "uint8",
    "u16": "uint16",
    "u32": "uint32",
    "u64": "uint64",
    "f16": "float16",
    "f32": "float32",
    "f64": "float64",
}
_FROM_NUMPY = {np.dtype(v): BY_NAME[k] for k, v in _NUMPY_NAMES.items()}

#: The dtype a weak Python scalar takes when nothing typed meets it.
DEFAULT_INT = i64
DEFAULT_FLOAT = f32
INDEX = i64


def _bf16_numpy() -> np.dtype:
    try:
        import ml_dtypes
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "bf16 arrays on the host need the 'ml_dtypes' package: pip install ml_dtypes"
        ) from exc
    return np.dtype(ml_dtypes.bfloat16)  # type: ignore[no-any-return]


def from_numpy(dt: np.dtype) -> DType | None:
    """The kdsl dtype of a NumPy dtype, or None when kdsl has no such dtype."""
    found = _FROM_NUMPY.get(dt)
    if found is None and dt.name == "bfloat16":
        return bf16
    return found


def as_dtype(value: object) -> DType:
    """Accept a kdsl dtype, a NumPy dtype or type, or a name such as 'f32' or 'float32'."""
    if isinstance(value, DType):
        return value
    if isinstance(value, str) and value in BY_NAME:
        return BY_NAME[value]
    try:
        found = from_numpy(np.dtype(value))  # type: ignore[call-overload]
    except TypeError:
        found = None
    if found is None:
        names = ", ".join(d.name for d in ALL_DTYPES)
        raise TypeError(f"{value!r} is not a kdsl dtype; use one of: {names}")
    return found


def promote(a: DType, b: DType) -> DType | None:
    """Promote two typed operands; None when their kinds differ and a cast is required.

    Signed and unsigned integers mix as in NumPy (u32 with i32 gives i64); u64 with a
    signed integer has no integer result, so it needs a cast too.
    """
    if a == b:
        return a
    if a.is_float and b.is_float:
        if a.is_half and b.is_half:
            return f32
        return a if a.bits >= b.bits else b
    if a.is_int and b.is_int:
        result = np.promote_types(a.to_numpy(), b.to_numpy())
        return from_numpy(result) if result.kind in "iu" else None
    return None


def compute_dtype(d: DType) -> DType:
    """The dtype arithmetic happens in: f16/bf16 are widened to f32."""
    return f32 if d.is_half else d
