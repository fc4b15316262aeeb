"""The library's public functions on CUDA arrays: PyTorch tensors and CuPy arrays on one
GPU. The arrays are reshaped with their own methods (`reshape`, `swapaxes`, indexing:
both libraries have them), results are made by the same library on the same device,
and the kernels' CUDA schedules run on the arrays' stream, as any kdsl kernel called on
them does. Errors name the function and the argument, as on the host. (What is read of
an array goes through its library's public API, `_Torch` and `_CuPy`: the library uses
kdsl's public API only.)

Unlike the host functions, which convert what NumPy can, these take the dtypes their
kernels read and say how to convert others: a conversion on the GPU is the caller's
to see (it allocates), and PyTorch's own functions refuse mixed dtypes too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from kdsl.kernels._checks import (
    argument_error,
    as_axis,
    as_float,
    on_a_gpu,
    shape_error,
    type_name,
)

import kdsl as kd

FLOATS = ("float32", "bfloat16", "float16")  # the dtypes the kernels read


def launch(kernel: kd.KernelFunction, *args: object) -> None:
    """Run `kernel`'s CUDA schedule (the one place this module runs a kernel)."""
    kernel[kd.cuda](*args)


class _Torch:
    """What the functions read of a PyTorch CUDA tensor, and new tensors beside one."""

    kind = "PyTorch tensor"

    @staticmethod
    def dtype(x: Any) -> str:
        return str(x.dtype).removeprefix("torch.")

    @staticmethod
    def device(x: Any) -> int:
        return int(x.get_device())

    @staticmethod
    def pointer(x: Any) -> int:
        return int(x.data_ptr())

    @staticmethod
    def strides(x: Any) -> tuple[int, ...]:  # in elements
        return tuple(x.stride())

    @staticmethod
    def empty(like: Any, shape: tuple[int, ...], dtype: str) -> Any:
        import torch

        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)

    @staticmethod
    def from_host(like: Any, a: np.ndarray) -> Any:
        import torch

        return torch.as_tensor(a, device=like.device)

    @staticmethod
    def to_host(x: Any) -> np.ndarray:
        return np.asarray(x.cpu().numpy())


class _CuPy:
    """The same of a CuPy array."""

    kind = "CuPy array"

    @staticmethod
    def dtype(x: Any) -> str:
        return str(x.dtype)

    @staticmethod
    def device(x: Any) -> int:
        return int(x.device.id)

    @staticmethod
    def pointer(x: Any) -> int:
        return int(x.data.ptr)

    @staticmethod
    def strides(x: Any) -> tuple[int, ...]:
        return tuple(s // x.itemsize for s in x.strides)

    @staticmethod
    def empty(like: Any, shape: tuple[int, ...], dtype: str) -> Any:
        import cupy

        with like.device:
            return cupy.empty(shape, dtype)

    @staticmethod
    def from_host(like: Any, a: np.ndarray) -> Any:
        import cupy

        with like.device:
            return cupy.asarray(a)

    @staticmethod
    def to_host(x: Any) -> np.ndarray:
        return np.asarray(x.get())


LIBRARIES: dict[str, type[_Torch] | type[_CuPy]] = {"torch": _Torch, "cupy": _CuPy}


def _library(x: object) -> type[_Torch] | type[_CuPy] | None:
    return LIBRARIES.get(type(x).__module__.partition(".")[0])


class Device:
    """The device that a call's CUDA arrays live on, the library that made them, and its
    first array (named `first`: `x`, `a`, `q`)."""

    def __init__(self, func: str, first: str, x: Any, lib: type[_Torch] | type[_CuPy]) -> None:
        self.func, self.first, self.like, self.lib = func, first, x, lib
        self.device = lib.device(x)

    def array(self, name: str, x: object, dtypes: tuple[str, ...] = FLOATS, like: str = "") -> str:
        """The dtype of `x`, checked: an array of this call's library on its device, of
        one of `dtypes` (the dtype of the array named `like`, when given)."""
        lib = _library(x) if on_a_gpu(x) else None
        fix = f"pass every array on one device (e.g. {name}.to({self.first}.device))"
        if x is None:
            raise argument_error(self.func, f"'{name}' is None", fix)
        if not on_a_gpu(x):
            where = f"is {type_name(x)} in host memory, and the other arrays are on a GPU"
            raise argument_error(self.func, f"'{name}' {where}", fix)
        if lib is None or not self.same_device(x):
            mine = f"a {lib.kind} on GPU {lib.device(x)}" if lib else f"a {type_name(x)}"
            raise argument_error(
                self.func,
                f"'{name}' is {mine}, and '{self.first}' is a {self.lib.kind} on GPU {self.device}",
                f"pass every array from one library on one device (e.g. "
                f"{name}.to({self.first}.device))",
            )
        dtype = lib.dtype(x)
        if dtype not in dtypes:
            if like:
                what, how = f"and '{like}' has {dtypes[0]}", f"{name}.to({like}.dtype)"
            else:
                what, how = (
                    f"and on a GPU this function takes {', '.join(dtypes)}",
                    f"{name}.to(torch.{dtypes[0]})",
                )
            raise argument_error(
                self.func,
                f"'{name}' has dtype {dtype}, {what}",
                f"convert it first (e.g. {how} with PyTorch, .astype() with CuPy)",
            )
        return dtype

    def same_device(self, x: object) -> bool:
        """Whether `x` (an array on a GPU) is of this call's library on its device."""
        return _library(x) is self.lib and self.lib.device(x) == self.device

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        return self.lib.empty(self.like, shape, dtype)

    def out(self, out: Any, shape: tuple[int, ...], dtypes: tuple[str, ...]) -> Any:
        """`out` checked to take a result of `shape` (one of `dtypes`), or a new array of
        `shape` and the first of `dtypes`."""
        if out is None:
            return self.empty(shape, dtypes[0])
        fix = f"pass out of shape {shape} and dtype {dtypes[0]}, or out=None"
        dtype = self.array("out", out, FLOATS)
        if dtype not in dtypes:
            raise argument_error(
                self.func, f"'out' has dtype {dtype}, expected {' or '.join(dtypes)}", fix
            )
        if tuple(out.shape) != shape:
            raise shape_error(
                self.func, f"'out' has shape {tuple(out.shape)}, expected {shape}", fix
            )
        if any(s == 0 and n > 1 for s, n in zip(self.lib.strides(out), shape)):
            raise argument_error(
                self.func,
                "'out' repeats its elements along an axis (a stride of 0: an expanded view)",
                "pass an array with an element per result (e.g. out.contiguous())",
            )
        return out


def on_device(func: str, first: object, name: str) -> Device | None:
    """The device of a call whose first array (named `name`) is `first`, or None when
    `first` is not a CUDA array (the host function runs, and refuses a CUDA array among
    the others)."""
    if not on_a_gpu(first):
        return None
    lib = _library(first)
    if lib is None:
        raise argument_error(
            func,
            f"'{name}' is {type_name(first)}; on a GPU kdsl.kernels' functions take "
            "PyTorch tensors or CuPy arrays",
            "pass torch.as_tensor(x, device='cuda') or cupy.asarray(x), or call the "
            "function's kernel on these arrays",
        )
    return Device(func, name, first, lib)


def _rows_view(dev: Device, a: Any, rows: int, n: int) -> Any | None:
    """`a` as rows × n without a copy, or None when its strides don't allow one (both
    libraries' `reshape` copies then, and the copy starts elsewhere)."""
    view = a.reshape(rows, n)
    return view if dev.lib.pointer(view) == dev.lib.pointer(a) else None


def over_rows(
    dev: Device,
    kernel: kd.KernelFunction,
    x: Any,
    out: object,
    weights: Mapping[str, object],
    eps: object = None,
    axis: object = -1,
) -> Any:
    """softmax and the norms: `kernel(rows, *weights, [eps], y)` over `axis` of x (any
    shape of at least one dimension), each of the `weights` one value per element of a
    row, in x's dtype."""
    dtype = dev.array("x", x)
    if x.ndim == 0:
        raise shape_error(dev.func, "'x' is 0-d", "pass an array of at least one dimension")
    axis = as_axis(dev.func, axis, x.ndim)
    last = axis == x.ndim - 1
    moved = x if last else x.swapaxes(axis, -1)
    rows, n = math.prod(moved.shape[:-1]), moved.shape[-1]
    for name, w in weights.items():
        dev.array(name, w, (dtype,), like="x")
        if tuple(w.shape) != (n,):
            raise shape_error(
                dev.func,
                f"'{name}' has shape {tuple(w.shape)}, expected ({n},) for rows of {n}",
                f"pass {name} with one value per element of x's last axis",
            )
    args = [moved.reshape(rows, n), *weights.values()]
    if eps is not None:
        args.append(as_float(dev.func, "eps", eps))
    if out is None:  # in x's moved layout, as the host function returns it
        y = dev.empty((rows, n), dtype)
        if rows * n:
            launch(kernel, *args, y)
        result = y.reshape(moved.shape)
        return result if last else result.swapaxes(axis, -1)
    target = dev.out(out, tuple(x.shape), (dtype,))
    moved_target = target if last else target.swapaxes(axis, -1)
    if rows * n:
        y = _rows_view(dev, moved_target, rows, n)
        if y is not None:
            launch(kernel, *args, y)  # straight into `out`
        else:
            y = dev.empty((rows, n), dtype)
            launch(kernel, *args, y)
            moved_target[...] = y.reshape(moved.shape)
    return out


def matmul(
    dev: Device,
    a: Any,
    b: Any,
    out: object,
    bias: object,
    activation: str | None,
    kernels: tuple[kd.KernelFunction, kd.KernelFunction],
    shape_of: Callable[[tuple[int, ...], tuple[int, ...]], tuple[int, ...]],
    matrices: Callable[[Any, Any, Any], Iterable[tuple[Any, Any, Any]]],
) -> Any:
    """The library's matmul on the GPU: `kernels` are the plain product's and the one with
    an epilogue, `shape_of` checks the shapes and gives the result's, `matrices` yields
    the 2-D products that make it (views of a, b and the result). The result has the
    inputs' dtype, or `out`'s (any float: f32 sums of bf16 inputs)."""
    dtype = dev.array("a", a)
    dev.array("b", b, (dtype,), like="a")
    shape = shape_of(tuple(a.shape), tuple(b.shape))
    c = dev.out(out, shape, (dtype, *(d for d in FLOATS if d != dtype)))
    n = b.shape[-1] if b.ndim > 1 else 1
    plain = bias is None and activation is None
    if bias is not None:
        dev.array("bias", bias, (dtype,), like="a")
        if tuple(bias.shape) != (n,):
            raise shape_error(
                dev.func,
                f"'bias' has shape {tuple(bias.shape)}, expected ({n},)",
                "pass one bias value per column of the result, or bias=None",
            )
    if math.prod(c.shape) == 0:
        return c
    epilogue = () if plain else (bias if bias is not None else dev.empty((1,), dtype),)
    for x, y, z in matrices(a, b, c):
        if plain:
            launch(kernels[0], x, y, z)
        else:
            launch(kernels[1], x, y, *epilogue, z, activation, bias is not None)
    return c


def attention(
    dev: Device,
    q: Any,
    k: Any,
    v: Any,
    out: object,
    scale: float | None,
    causal: bool,
    kernels: Mapping[str, kd.KernelFunction],
    check: Callable[[tuple[int, ...], tuple[int, ...], tuple[int, ...]], None],
) -> Any:
    """The library's attention on the GPU, `check` checking the shapes: f32 on the CUDA
    cores (`kernels["f32"]`, and `kernels["decode"]` for one query), bf16 on tensor cores
    (`kernels["bf16"]`, which read pairs along D: an odd D runs on the CUDA cores); the
    result is f32 unless `out` says otherwise."""
    dtype = dev.array("q", q, ("float32", "bfloat16"))
    dev.array("k", k, (dtype,), like="q")
    dev.array("v", v, (dtype,), like="q")
    shape = tuple(q.shape)
    check(shape, tuple(k.shape), tuple(v.shape))
    o = dev.out(out, shape, FLOATS)
    if math.prod(shape) == 0:
        return o
    B, H, Lq, D = shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    group = H // k.shape[1]
    if causal and k.shape[2] > Lq:  # top-left: keys past the last query are never seen
        k, v = k[:, :, :Lq], v[:, :, :Lq]
    into = o if dev.lib.dtype(o) == "float32" else dev.empty(shape, "float32")
    if dtype == "bfloat16" and D % 2 == 0:
        launch(kernels["bf16"], q, k, v, into, scale, group, D, bool(causal))
    elif Lq == 1:
        launch(kernels["decode"], q, k, v, into, scale, group, D)
    else:
        launch(kernels["f32"], q, k, v, into, scale, group, D, bool(causal))
    if into is not o:
        o[...] = into
    return o


def check_blocks(
    d: Any, q: Any, scales: tuple[int, int], quants: tuple[int, int], qtype: str, fix: str
) -> None:
    """A QTensor's arrays on a GPU: its scales `d` (float16, of shape `scales`) and quants
    `q` (`qtype`, of shape `quants`, contiguous along its rows) on one device."""
    dev = on_device("QTensor", d, "d")
    if dev is None:
        raise argument_error(
            "QTensor",
            f"'d' is {type_name(d)} in host memory, and 'q' is on a GPU",
            "pass both in host memory or both on one GPU (QTensor.to(x) moves both)",
        )
    for name, a, shape, dtype in (("d", d, scales, "float16"), ("q", q, quants, qtype)):
        dev.array(name, a, (dtype,))
        if tuple(a.shape) != shape:
            raise shape_error(
                "QTensor", f"'{name}' has shape {tuple(a.shape)}, expected {shape}", fix
            )
    if math.prod(quants) and quants[1] > 1 and dev.lib.strides(q)[1] != 1:
        raise argument_error("QTensor", "'q' is not contiguous along its rows", fix)


def qproduct(dev: Device, w: Any, x: Any, out: object, kernel: kd.KernelFunction) -> Any:
    """qmatvec and qmatmul on the GPU: `kernel(scales, quants, rows of x, rows of y)`
    multiplies the f32 rows of x by the blocks of the QTensor `w` (on x's device),
    dequantized in registers; the result is f32, [n, rows of w] or a vector for a vector
    x."""
    dev.array("x", x, ("float32",))
    if not on_a_gpu(w.d) or not dev.same_device(w.d):
        lib = _library(w.d) if on_a_gpu(w.d) else None
        where = (
            "in host memory"
            if not on_a_gpu(w.d)
            else f"on GPU {lib.device(w.d)}"
            if lib is dev.lib
            else f"in a {type_name(w.d)}"
        )
        raise argument_error(
            dev.func,
            f"'w' holds its blocks {where}, and 'x' is a {dev.lib.kind} on GPU {dev.device}",
            "move the blocks to x's GPU once: w = w.to(x)",
        )
    vector = x.ndim == 1
    batch = x[None] if vector else x
    rows, n = w.shape[0], batch.shape[0]
    y = dev.out(out, (rows,) if vector else (n, rows), ("float32",))
    if n * rows:
        launch(kernel, w.scales, w.quants, batch, y[None] if vector else y)
    return y
