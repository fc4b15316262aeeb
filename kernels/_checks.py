"""Argument checks shared by the library's public functions: each error names the
function and the argument and says the fix (kd.KernelArgumentError for a wrong type,
dtype or value, kd.ShapeError for shapes that disagree; both are ValueErrors)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import DTypeLike

import kdsl as kd

FLOATS = ("float16", "bfloat16", "float32", "float64")  # dtypes the kernels compute in


def argument_error(func: str, what: str, fix: str) -> kd.KernelArgumentError:
    return kd.KernelArgumentError(f"{func}: {what}", fix=fix)


def shape_error(func: str, what: str, fix: str) -> kd.ShapeError:
    return kd.ShapeError(f"{func}: {what}", fix=fix)


def is_float(dtype: np.dtype) -> bool:
    return dtype.name in FLOATS


def _is_torch_bfloat16(x: object) -> bool:
    return type(x).__module__ == "torch" and str(getattr(x, "dtype", "")) == "torch.bfloat16"


def _torch_bfloat16(x: object) -> np.ndarray:
    """A PyTorch bfloat16 tensor's memory, which NumPy can't read, as ml_dtypes' bfloat16
    (through its bits; kernels read such tensors the same way: kdsl.arguments)."""
    import ml_dtypes
    import torch

    return np.from_dlpack(x.view(torch.int16)).view(ml_dtypes.bfloat16)  # type: ignore[attr-defined]


def as_array(func: str, name: str, x: object, kinds: str = "biuf", min_ndim: int = 0) -> np.ndarray:
    """`x` as a NumPy array whose dtype is of `kinds` ("f": floats, bfloat16 included;
    "biuf": numbers) and that has at least `min_ndim` dimensions."""
    if type(x) is np.ndarray and x.ndim >= min_ndim and x.dtype.kind in kinds and x.dtype.isnative:
        return x  # the usual case
    if x is None:
        raise argument_error(func, f"'{name}' is None", f"pass {name} as a NumPy array")
    if on_a_gpu(x):
        raise on_the_gpu_error(func, name, x)
    try:
        a = _torch_bfloat16(x) if _is_torch_bfloat16(x) else np.asarray(x)
    except (TypeError, ValueError, RuntimeError, BufferError) as e:
        raise argument_error(
            func, f"'{name}' ({type_name(x)}) is not an array: {e}", "pass a NumPy array"
        ) from e
    if not (a.dtype.kind in kinds or ("f" in kinds and is_float(a.dtype))):
        expected = "a float" if kinds == "f" else "a numeric"
        raise argument_error(
            func,
            f"'{name}' has dtype {a.dtype}, expected {expected} array",
            f"pass {name} as a float32 array (e.g. np.asarray({name}, np.float32))",
        )
    if a.ndim < min_ndim:
        raise shape_error(
            func,
            f"'{name}' has shape {a.shape}, expected at least {min_ndim} dimension(s)",
            f"pass {name} as an array (np.atleast_1d({name}) for a single value)",
        )
    # kernels read this CPU's byte order: the other one's values are converted
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


# the functions that run on the GPU of PyTorch and CuPy CUDA arrays (kernels/_device.py)
ON_GPU = ("matmul", "softmax", "rmsnorm", "layernorm", "attention", "qmatvec", "qmatmul")


_DLPACK_CUDA = 2  # kDLCUDA, a DLPack device type


def on_a_gpu(x: object) -> bool:
    """Whether `x` is an array in a GPU's memory: a PyTorch CUDA tensor, or an array
    whose DLPack device says so (CuPy, JAX), or one that gives a
    `__cuda_array_interface__` (Numba); asked in that order (JAX's CPU arrays have the
    interface's property on their class, raising)."""
    try:
        cuda = getattr(x, "is_cuda", None)
        if isinstance(cuda, bool):
            return cuda
        device = getattr(x, "__dlpack_device__", None)
        if device is not None:
            return bool(device()[0] == _DLPACK_CUDA)
        return getattr(x, "__cuda_array_interface__", None) is not None
    except Exception:  # (whatever an odd object raises: not an array on a GPU)
        return False


def on_the_gpu_error(func: str, name: str, x: object) -> kd.KernelArgumentError:
    """The error for a CUDA array passed to a library function that computes on the host:
    one that takes only host arrays, or one whose first array is in host memory."""
    if func in ON_GPU:
        return argument_error(
            func,
            f"'{name}' is a CUDA array ({type_name(x)}), and the first array is in host memory",
            f"pass every array on one device: on a GPU kdsl.kernels.{func} runs there (e.g. "
            "x.cuda()), or move them to the host (tensor.cpu())",
        )
    return argument_error(
        func,
        f"'{name}' is a CUDA array ({type_name(x)}); kdsl.kernels.{func} takes host (NumPy) arrays",
        "move the arrays to the host (e.g. tensor.cpu())",
    )


def as_axis(func: str, axis: object, ndim: int) -> int:
    """`axis` of an array of `ndim` dimensions, as a non-negative int."""
    if type(axis) is int and -ndim <= axis < ndim:  # the usual case
        return axis % ndim
    try:
        if isinstance(axis, bool):
            raise TypeError
        index = operator.index(axis)
    except TypeError:
        raise argument_error(
            func, f"'axis' is {axis!r} ({type_name(axis)}), expected an int", "pass an int"
        ) from None
    if not -ndim <= index < ndim:
        raise argument_error(
            func,
            f"'axis' is {index}, out of range for an array of {ndim} dimension(s)",
            f"pass an axis from {-ndim} to {ndim - 1}",
        )
    return index % ndim


def as_float(func: str, name: str, value: object) -> float:
    """A real scalar argument (eps, scale) as a Python float."""
    if type(value) is float or type(value) is int:  # the usual case, without NumPy
        return float(value)
    a = None if isinstance(value, (str, bytes)) else np.asarray(value)
    if a is None or a.ndim or a.dtype.kind not in "iuf":
        raise argument_error(
            func,
            f"'{name}' is {value!r} ({type_name(value)}), expected a number",
            "pass a float",
        )
    return float(a)


def type_name(x: object) -> str:
    """`x`'s type for a message: `list`, `numpy.ndarray`, `torch.Tensor`."""
    kind = type(x)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def out_array(
    func: str, out: object, shape: tuple[int, ...], dtype: DTypeLike, also: Sequence[DTypeLike] = ()
) -> np.ndarray:
    """The array a function writes its result to: a new one of `shape` and `dtype` when
    `out` is None, else `out` checked to be a writable array of `shape` and `dtype` (or one
    of `also`): the array itself, or NumPy's view of a CPU tensor's memory (DLPack)."""
    if out is None:
        return np.empty(shape, dtype)
    if type(out) is np.ndarray and out.shape == shape and out.dtype == dtype:
        if out.flags.writeable:  # the common case, in a fraction of a µs
            return out

    def fix() -> str:
        return f"pass a NumPy array of shape {shape} and dtype {np.dtype(dtype)}, or out=None"

    array = expect_array(func, "out", out, shape, (dtype, *also), fix, either_order=True)
    if not array.flags.writeable:
        raise argument_error(func, "'out' is read-only", fix())
    return array


def apart(out: object, target: np.ndarray, *inputs: object) -> np.ndarray:
    """Where a function computes a result to be written to `target` (`out_array(out)`):
    `target` itself, or a new array like it where it may share memory with one of the
    `inputs` (a kernel may not write what it reads elsewhere), or is of the other byte
    order (which kernels don't write). `written` then copies it over: `softmax(x, out=x)`
    works in place, as NumPy's `np.exp(x, out=x)` does. Without `out`, `target` is new:
    nothing else shares it (a small call skips the tests)."""
    if out is not None and (
        not target.dtype.isnative
        or any(type(a) is np.ndarray and np.may_share_memory(target, a) for a in inputs)
    ):
        return np.empty_like(target, dtype=target.dtype.newbyteorder("="))
    return target


def written(work: np.ndarray, target: np.ndarray, out: object) -> object:
    """The end of a function that computed into `work` (`apart(target, …)`): `work`
    copied into `target` if they differ; `out` itself when given (a tensor, say)."""
    if work is not target:
        target[...] = work
    return target if out is None else out


def expect_array(
    func: str,
    name: str,
    a: object,
    shape: tuple[int, ...],
    dtypes: Sequence[DTypeLike],
    fix: Callable[[], str],
    *,
    either_order: bool = False,
) -> np.ndarray:
    """`a` as a NumPy array (or a view of a DLPack tensor's memory) of `shape` and one of
    `dtypes` (names for those NumPy may not know: "bfloat16"; of either byte order if
    `either_order`), else KernelArgumentError for another type or dtype, ShapeError for
    another shape; `fix()` says what to pass. (Called on every call with `out=`: the
    messages are made only when raised.)"""
    array = _view(a)
    if array is None:  # (asked only here: a GPU array has no NumPy view)
        if on_a_gpu(a):
            raise on_the_gpu_error(func, name, a)
        raise argument_error(func, f"'{name}' is {type_name(a)}, expected a NumPy array", fix())
    if array.shape != shape:
        raise shape_error(func, f"'{name}' has shape {array.shape}, expected {shape}", fix())
    dtype = array.dtype.newbyteorder("=") if either_order else array.dtype
    if not any(dtype.name == d if isinstance(d, str) else dtype == d for d in dtypes):
        names = dict.fromkeys(d if isinstance(d, str) else np.dtype(d).name for d in dtypes)
        expected = f"one of {', '.join(names)}" if len(names) > 1 else next(iter(names))
        raise argument_error(func, f"'{name}' has dtype {array.dtype}, expected {expected}", fix())
    return array


def _view(out: object) -> np.ndarray | None:
    """`out` itself, NumPy's view of a DLPack tensor (a CPU PyTorch tensor), or None."""
    if isinstance(out, np.ndarray):
        return out
    if hasattr(out, "__dlpack__"):
        try:
            return _torch_bfloat16(out) if _is_torch_bfloat16(out) else np.from_dlpack(out)
        except (BufferError, RuntimeError, TypeError, ValueError):  # a GPU tensor, bfloat16
            return None
    return None
