"""Example arguments: `kd.spec(shape, dtype)`, their text form, and random data for them.

The text form (the CLI's `--args`/`--shape`, DESIGN §4) is a comma-separated list:

    A=512x256:f32, B=256x128:f32, C=512x128:f32, eps=1e-5, n=7, causal=False

* `NAME=DIMSxDIMS:DTYPE` is an array: whole-number dimensions separated by `x`
  (`n=1000:f32` is one-dimensional) and a kdsl dtype name (`f32`, `bf16`, `i8`,
  `u8`, `bool_`, ...; see `kdsl.types.BY_NAME`).
* `NAME=:DTYPE` — no dimensions — is a 0-d array.
* `NAME=NUMBER` is a Python scalar: an int (`7`, `-3`), a float (`1e-5`, `0.5`,
  `inf`) or a bool (`True`, `False`).

Arrays are filled with fresh random data, never zeros: floats uniform in [-1, 1),
signed ints in [-8, 8), unsigned ints in [0, 16), bools half true; `kd.spec(..., low=,
high=)` sets the range (e.g. an index array's valid rows). A concrete NumPy array given as
an example (`kernel.autotune(a, b, c)`) is used as it is: a copy of its values.
"""

from __future__ import annotations

import math
import operator
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kdsl.errors import KdslError
from kdsl.types import BY_NAME, DType, as_dtype

FORM = "NAME=DIMSxDIMS:DTYPE for an array (e.g. A=512x256:f32; A=:f32 is 0-d) or NAME=NUMBER"

_INT = re.compile(r"[+-]?\d+")
_DIM = re.compile(r"\d+")
_SIGNED_RANGE = (-8, 8)
_UNSIGNED_RANGE = (0, 16)


class SpecError(KdslError, ValueError):
    """An example argument that can't be understood: bad text, shape or dtype."""


@dataclass(frozen=True)
class Spec:
    """An example array argument: a shape and a dtype, filled with random data when used
    (in `values` where given, else the dtype's default range)."""

    shape: tuple[int, ...]
    dtype: DType
    values: tuple[float, float] | None = None  # [low, high), from kd.spec(low=, high=)

    def __str__(self) -> str:
        return "x".join(map(str, self.shape)) + ":" + self.dtype.name

    def random(self, rng: np.random.Generator) -> np.ndarray:
        """A new array of this shape and dtype with random (never all-zero) contents."""
        d = self.dtype
        if d.is_float:
            low, high = self.values or (-1.0, 1.0)
            wide = np.float64 if d.bits == 64 else np.float32
            data = rng.random(self.shape, dtype=wide)
            data *= high - low  # in place: no temporaries the size of the array
            data += low
            return data.astype(d.to_numpy(), copy=False)
        if d.is_int:
            low, high = self.values or (_SIGNED_RANGE if d.is_signed else _UNSIGNED_RANGE)
            return rng.integers(int(low), int(high), size=self.shape, dtype=d.to_numpy())
        return rng.random(self.shape) < 0.5


ArgExample = Spec | np.ndarray | bool | int | float | str | None
"""One example argument: an array to make (`Spec`), an array whose values are copied
(NumPy), or a Python value passed as is (a number; a string or None for a constexpr
parameter)."""


def spec(
    shape: int | Sequence[int],
    dtype: object,
    *,
    low: float | None = None,
    high: float | None = None,
) -> Spec:
    """An example array argument, `kd.spec((512, 256), kd.f32)`: random data of that shape.

    `dtype` is a kdsl dtype, a NumPy dtype or a name such as "f32". `low` and `high`
    (given together) make the values fall in [low, high): an index array needs them,
    e.g. `kd.spec((512,), kd.i64, low=0, high=1000)` for rows of a 1000-row table.
    """
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    try:
        dims = tuple(operator.index(n) for n in dims)
    except TypeError:
        raise SpecError(
            f"spec shape {shape!r} is not a tuple of whole numbers",
            fix="e.g. kd.spec((512, 256), kd.f32)",
        ) from None
    if any(n < 0 for n in dims):
        raise SpecError(
            f"spec shape {dims} has a negative dimension", fix="dimensions must be >= 0"
        )
    try:
        dt = as_dtype(dtype)
    except TypeError as exc:
        raise SpecError(str(exc)) from None
    if low is None and high is None:
        return Spec(dims, dt)
    return Spec(dims, dt, _values(dt, low, high))


def _values(dtype: DType, low: float | None, high: float | None) -> tuple[float, float]:
    """`kd.spec`'s low and high, checked: numbers (whole ones for an integer dtype) that
    the dtype holds, low < high."""
    fix = "e.g. kd.spec((512,), kd.i64, low=0, high=1000): values from 0 to 999"
    if dtype.is_bool:
        raise SpecError("a bool spec has no value range (low=, high=)", fix="leave them out")
    kind = int | np.integer if dtype.is_int else int | float | np.integer | np.floating
    numbers = [v for v in (low, high) if isinstance(v, kind) and not isinstance(v, bool)]
    if low is None or high is None or len(numbers) < 2:
        what = "whole numbers" if dtype.is_int else "numbers"
        raise SpecError(f"spec low={low!r}, high={high!r}: both must be {what}", fix=fix)
    if not low < high:
        raise SpecError(f"spec low={low!r} is not below high={high!r}", fix=fix)
    if dtype.is_int:
        info = np.iinfo(dtype.to_numpy())
        if low < info.min or high - 1 > info.max:
            raise SpecError(
                f"spec low={low!r}, high={high!r}: {dtype.name} holds {info.min} to {info.max}",
                fix=fix,
            )
    plain = int if dtype.is_int else float  # (NumPy scalars as Python numbers)
    return plain(low), plain(high)  # type: ignore[arg-type]


def parse_args_spec(text: str) -> dict[str, ArgExample]:
    """Parse `"A=512x256:f32,eps=1e-5,n=7"` into {name: Spec or scalar}, in order."""
    examples: dict[str, ArgExample] = {}
    if not text.strip():
        return examples
    for item in text.split(","):
        name, value = _parse_item(item.strip())
        if name in examples:
            raise SpecError(f"argument '{name}' is given twice in {text!r}", fix=f"write {FORM}")
        examples[name] = value
    return examples


def _parse_item(item: str) -> tuple[str, ArgExample]:
    name, eq, value = item.partition("=")
    name, value = name.strip(), value.strip()
    if not item:
        raise _bad(item, "the item is empty (a stray comma?)")
    if not eq:
        raise _bad(item, "there is no '='")
    if not name.isidentifier():
        raise _bad(item, f"'{name}' is not a parameter name")
    if ":" in value:
        return name, _parse_array(item, value)
    return name, _parse_scalar(item, value)


def _parse_array(item: str, value: str) -> Spec:
    dims_text, _, dtype_name = value.partition(":")
    dims_text, dtype_name = dims_text.strip(), dtype_name.strip()
    if dtype_name not in BY_NAME:
        raise _bad(item, f"'{dtype_name}' is not a dtype (use one of {', '.join(BY_NAME)})")
    dims: list[int] = []
    if dims_text:
        for dim in dims_text.split("x"):
            if not _DIM.fullmatch(dim.strip()):
                raise _bad(item, f"dimension '{dim}' is not a whole number")
            dims.append(int(dim))
    return Spec(tuple(dims), BY_NAME[dtype_name])


def _parse_scalar(item: str, value: str) -> bool | int | float:
    if value in ("True", "False"):
        return value == "True"
    if _INT.fullmatch(value):
        return int(value)
    try:
        return float(value)
    except ValueError:
        looks_like_dims = all(_DIM.fullmatch(dim) for dim in value.split("x"))
        why = (
            f"an array needs a dtype, e.g. '{value}:f32'"
            if looks_like_dims
            else f"'{value}' is neither a number nor DIMS:DTYPE"
        )
        raise _bad(item, why) from None


def _bad(item: str, why: str) -> SpecError:
    return SpecError(f"bad argument spec '{item}': {why}", fix=f"write {FORM}")


def check_fits(examples: Mapping[str, ArgExample]) -> None:
    """SpecError if the example's arrays could not all fit in this machine's memory."""
    arrays = {n: e for n, e in examples.items() if isinstance(e, Spec)}
    nbytes = sum(math.prod(e.shape) * e.dtype.itemsize for e in arrays.values())
    if nbytes > _memory_bytes():
        shapes = ", ".join(f"{n}={e}" for n, e in arrays.items())
        raise SpecError(
            f"example arrays {shapes} need {nbytes / 2**30:.1f} GiB, more than this "
            f"machine's memory ({_memory_bytes() / 2**30:.1f} GiB)",
            fix="give smaller shapes: one compiled kernel serves every size",
        )


def make_arguments(
    examples: Mapping[str, ArgExample], rng: np.random.Generator
) -> dict[str, object]:
    """Concrete arguments for example specs: fresh random arrays; scalars passed as given.
    Arrays that could not all fit in this machine's memory are a SpecError, not a
    MemoryError (or the machine swapping) half-way through."""
    check_fits(examples)
    made: dict[str, object] = {}
    for name, example in examples.items():
        if isinstance(example, Spec):
            made[name] = example.random(rng)
        elif isinstance(example, np.ndarray):
            # a copy (the kernel may write it) in the array's order (order="K": C,
            # Fortran, or the order of a strided view's axes), each its own specialization
            made[name] = np.array(example, order="K")
        elif example is None or isinstance(example, bool | int | float | str):
            made[name] = example
        else:
            raise SpecError(
                f"example argument '{name}' is a {type(example).__name__}",
                fix="give kd.spec(shape, dtype) for an array, or a Python number",
            )
    return made


def _memory_bytes() -> int:
    """This machine's physical memory (no limit where the OS doesn't say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 1 << 62
