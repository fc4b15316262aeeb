"""From call arguments to specialization keys and trace specs, with clear argument errors."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kdsl import types as T
from kdsl.errors import KernelArgumentError
from kdsl.specs import ArgExample, Spec
from kdsl.targets.cuda.arrays import device_array
from kdsl.trace.api import constexpr
from kdsl.trace.frames import location
from kdsl.trace.tracer import ArgSpec, ArraySpec, ConstSpec, ScalarSpec

_DLPACK_CPU = 1
_DLPACK_CUDA = (2, 3, 13)  # CUDA, CUDA host, CUDA managed


@dataclass(frozen=True)
class Signature:
    kernel: str
    names: tuple[str, ...]
    constexpr: frozenset[str]
    defaults: dict[str, object]

    @classmethod
    def of(cls, fn: Callable[..., object], kernel: str) -> Signature:
        sig = inspect.signature(fn)
        names, consts, defaults = [], set(), {}
        for p in sig.parameters.values():
            if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                raise KernelArgumentError(
                    f"parameter '{p.name}' is {p.kind.description}",
                    kernel=kernel,
                    fix="kernel parameters must be plain positional parameters",
                )
            names.append(p.name)
            if _is_constexpr_annotation(p.annotation):
                consts.add(p.name)
            if p.default is not p.empty:
                defaults[p.name] = p.default
        return cls(kernel, tuple(names), frozenset(consts), defaults)

    def __str__(self) -> str:
        return f"{self.kernel}({', '.join(n + (': kd.constexpr' if n in self.constexpr else '') for n in self.names)})"

    def bind(self, args: Sequence[object], kwargs: dict[str, object]) -> list[object]:
        if len(args) > len(self.names):
            raise self.error(f"takes {len(self.names)} arguments but {len(args)} were given")
        unknown = [k for k in kwargs if k not in self.names]
        if unknown:  # (before 'missing': a misspelt name is both)
            raise self.error(f"unexpected argument(s) {', '.join(map(repr, unknown))}")
        bound = list(args)
        for name in self.names[len(args) :]:
            if name in kwargs:
                bound.append(kwargs.pop(name))
            elif name in self.defaults:
                bound.append(self.defaults[name])
            else:
                raise self.error(f"missing argument '{name}'")
        if kwargs:  # a parameter given by position and by name
            raise self.error(f"argument(s) {', '.join(map(repr, kwargs))} given twice")
        return bound

    def error(self, what: str, fix: str | None = None) -> KernelArgumentError:
        return KernelArgumentError(
            f"{what}; the kernel's signature is {self}",
            kernel=self.kernel,
            fix=fix or f"call it as {self}",
        )


def _is_constexpr_annotation(annotation: object) -> bool:
    if annotation is constexpr:
        return True
    return isinstance(annotation, str) and annotation.split(".")[-1] == "constexpr"


def as_host_array(value: object, name: str, sig: Signature) -> np.ndarray:
    """A NumPy view of a host array given through DLPack; errors for device arrays."""
    device = getattr(value, "__dlpack_device__", None)
    if device is not None:
        try:
            kind = device()[0]
        except (TypeError, ValueError, RuntimeError, BufferError) as exc:  # torch's "meta"
            raise sig.error(
                f"argument '{name}' has no memory that kdsl can read ({exc})",
                "pass an array on the CPU or a CUDA GPU",
            ) from None
        if kind in _DLPACK_CUDA:
            raise sig.error(
                f"argument '{name}' is a CUDA array of a dtype kdsl does not support",
                "convert it (e.g. tensor.float())",
            )
        if kind != _DLPACK_CPU:
            raise sig.error(f"argument '{name}' lives on DLPack device type {kind}, not the CPU")
    if getattr(value, "is_neg", lambda: False)():  # a torch view whose sign is pending
        raise sig.error(
            f"argument '{name}' is a tensor with its negation pending (torch's neg bit), "
            "which DLPack does not carry: its values would be read with the wrong sign",
            "pass tensor.resolve_neg()",
        )
    try:
        return host_view(value)
    except (TypeError, BufferError, RuntimeError) as exc:
        raise sig.error(
            f"argument '{name}' could not be read through DLPack: {exc}", _dlpack_fix(str(exc))
        ) from None


def _dlpack_fix(refusal: str) -> str:
    """What to pass instead of a tensor that DLPack refused to export, by its reason."""
    if "gradient" in refusal:
        return "pass tensor.detach() (a tensor that requires grad is not exported)"
    if "layout" in refusal or "sparse" in refusal:
        return "pass tensor.to_dense()"
    if "conj" in refusal:
        return "pass tensor.resolve_conj()"
    return "convert it to a dtype NumPy reads (tensor.float())"


def host_view(value: object) -> np.ndarray:
    """NumPy's view of a host array's memory through DLPack; a PyTorch bfloat16 tensor's
    (which NumPy can't read) through its bits, as ml_dtypes' bfloat16."""
    if type(value).__module__ == "torch" and str(getattr(value, "dtype", "")) == "torch.bfloat16":
        import torch

        bits = np.from_dlpack(value.view(torch.int16))  # type: ignore[attr-defined]
        return bits.view(T.bf16.to_numpy())
    return np.from_dlpack(value)  # type: ignore[arg-type]


def describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def _scalar_kind(value: np.generic) -> str:
    names = {"f": "long double", "c": "complex"}
    return names.get(value.dtype.kind, type(value).__name__)


def _unsupported_scalar_fix(name: str, value: np.generic) -> str:
    if value.dtype.kind == "f":
        return f"pass '{name}' as a float or an np.float64: float(value) (f64 is kdsl's widest)"
    if value.dtype.kind == "c":
        return (
            f"kdsl has no complex numbers: pass value.real and value.imag as two float "
            f"arguments in place of '{name}'"
        )
    return f"pass '{name}' as a Python number, or a NumPy int, float or bool scalar"


def spec_of(
    name: str, value: object, sig: Signature, static_shapes: bool
) -> tuple[ArgSpec, object]:
    """The trace spec of one argument and the value to pass (DLPack arrays become NumPy)."""
    if name in sig.constexpr or isinstance(value, constexpr):
        raw = value.value if isinstance(value, constexpr) else value
        try:
            hash(raw)
        except TypeError:
            raise sig.error(
                f"constexpr argument '{name}' must be hashable, got {describe(raw)}",
                f"pass {name}.item() (a 0-d array's number)"
                if isinstance(raw, np.ndarray) and raw.ndim == 0
                else f"pass a tuple: tuple({name})"
                + (f" (tuple({name}.tolist()) for an array)" if isinstance(raw, np.ndarray) else "")
                + ", or make the parameter an array argument",
            ) from None
        return ConstSpec(raw), raw
    if value is None:
        raise sig.error(f"argument '{name}' is None", "pass a NumPy array or a number")
    if isinstance(value, np.generic):  # checked first, as np.float64 is a float
        d = T.from_numpy(value.dtype)
        if d is None:
            raise sig.error(
                f"argument '{name}' is a NumPy {_scalar_kind(value)} scalar ({value.dtype}), "
                "which kdsl does not support",
                _unsupported_scalar_fix(name, value),
            )
        return ScalarSpec(d, True), value.item()  # weak, as a Python number (language.md)
    if isinstance(value, bool):
        return ScalarSpec(T.bool_, True), value
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            raise sig.error(
                f"argument '{name}' = {value} does not fit in 64 bits",
                f"pass np.uint64({value}) for an unsigned value below 2**64"
                if 0 < value < 1 << 64
                else "pass a value that fits a 64-bit integer, or split it",
            )
        return ScalarSpec(T.i64, True), value
    if isinstance(value, float):
        return ScalarSpec(T.f64, True), value
    if not isinstance(value, np.ndarray):
        device = device_array(value)
        if device is not None:
            shape = device.shape if static_shapes else None
            return ArraySpec(device.dtype, len(device.shape), device.contiguous, shape), device
        if hasattr(value, "__dlpack__"):
            value = as_host_array(value, name, sig)
        elif type(value).__module__.startswith("kdsl.trace"):  # an array or value of a trace
            raise KernelArgumentError(
                f"kernel '{sig.kernel}' is called inside another kernel (argument '{name}' is "
                "one of its arrays or values): kdsl kernels don't call each other",
                kernel=sig.kernel,
                loc=location(),
                fix=f"make '{sig.kernel}' a plain Python function (no @kd.kernel): called in a "
                "kernel, a function is traced into it",
            )
        elif isinstance(value, list | tuple):
            raise sig.error(
                f"argument '{name}' is a {type(value).__name__}", "pass np.asarray(value) instead"
            )
        else:
            raise sig.error(
                f"argument '{name}' is {describe(value)}",
                "pass a NumPy array (or a DLPack array on the CPU), or a Python/NumPy scalar",
            )
    array: np.ndarray = value  # type: ignore[assignment]
    d = T.from_numpy(array.dtype)
    if d is None:
        native = array.dtype.newbyteorder("=")
        swapped = not array.dtype.isnative and T.from_numpy(native) is not None
        target = f"np.{native.name}" if swapped else "np.float32"
        raise sig.error(
            f"argument '{name}' has dtype {array.dtype}"
            + (" (the other byte order)" if swapped else "")
            + ", which kdsl does not support",
            f"convert it, e.g. {name}.astype({target}); for an output, write into that array "
            f"and copy it back into '{name}'",
        )
    shape = tuple(array.shape) if static_shapes else None
    c_order = bool(array.flags.c_contiguous)
    fortran = not c_order and bool(array.flags.f_contiguous)
    return ArraySpec(d, array.ndim, c_order, shape, fortran), array


def fast_key(args: Sequence[object]) -> tuple[object, ...] | None:
    """The specialization key of plain NumPy arrays, Python scalars and strings, or None
    when some argument needs the careful path (DLPack, NumPy scalars, bad input)."""
    key: list[object] = []
    for a in args:
        t = type(a)
        if t is np.ndarray:
            # its order: NumPy's C_CONTIGUOUS (1) and F_CONTIGUOUS (2) flags, in one read
            key.append((a.dtype, a.ndim, a.flags.num & 3))  # type: ignore[union-attr]
        elif t is float or t is bool or (t is int and -(1 << 63) <= a < (1 << 63)):  # type: ignore[operator]
            key.append(t)
        elif t is str or a is None:  # (a constexpr's value: the kernel keys on it too)
            key.append(t)
        else:  # (an int beyond 64 bits: the careful path says so; ctypes would wrap it)
            return None
    return tuple(key)


def host_views(args: Sequence[object]) -> list[object] | None:
    """`args` with their PyTorch CPU tensors as NumPy views (`tensor.numpy()`, 0.7 µs;
    DLPack takes 2.4), for the fast path; None where one can't be viewed so (a CUDA,
    bf16, grad-tracking or sign-pending tensor: the careful path says what to do)."""
    out = list(args)
    for n, a in enumerate(args):
        if type(a).__module__ == "torch":
            try:
                out[n] = a.numpy()  # type: ignore[attr-defined]
            except (RuntimeError, TypeError, AttributeError):
                return None
    return out


def check_examples(
    examples: Sequence[Mapping[str, ArgExample]], sig: Signature
) -> list[dict[str, ArgExample]]:
    """`@kd.kernel(examples=[...])`, checked at decoration: one dict per example call,
    naming every parameter (or leaving it to its default)."""
    if isinstance(examples, Mapping):
        examples = [examples]
    names = ", ".join(f'"{n}": ...' for n in sig.names)
    example_fix = f"name each of the kernel's parameters once: examples=[{{{names}}}]"
    checked = []
    for example in examples:
        if not isinstance(example, Mapping):
            raise sig.error(
                f"an example is a {type(example).__name__}, not a dict",
                'write examples=[{"A": kd.spec((512, 256), kd.f32), ...}]',
            )
        unknown = [n for n in example if n not in sig.names]
        if unknown:
            raise sig.error(
                f"the example names unknown parameter(s) {', '.join(unknown)}", example_fix
            )
        missing = [n for n in sig.names if n not in example and n not in sig.defaults]
        if missing:
            raise sig.error(f"the example gives no value for {', '.join(missing)}", example_fix)
        full: dict[str, ArgExample] = {n: sig.defaults[n] for n in sig.names if n not in example}  # type: ignore[misc]
        for name, value in example.items():
            constant = name in sig.constexpr and (value is None or isinstance(value, str))
            if not (constant or isinstance(value, Spec | bool | int | float)):
                raise sig.error(
                    f"example value for '{name}' is {describe(value)}",
                    "give kd.spec(shape, dtype) for an array, or a Python number (or, for "
                    "a kd.constexpr parameter, a string or None)",
                )
            full[name] = value
        checked.append({n: full[n] for n in sig.names})
    return checked
