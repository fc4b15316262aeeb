"""The library's public functions on CUDA arrays: PyTorch tensors and CuPy arrays on one
GPU. The arrays are reshaped with their own methods (`reshape`, `swapaxes`, indexing:
both libraries have them), results are made by the same library on the same device,
and the kernels' CUDA schedules run on the arrays' stream, as any kdsl kernel called on
them does. Errors name the function and the argument, as on the host.

Unlike the host functions, which convert what NumPy can, these take the dtypes their
kernels read and say how to convert others: a conversion on the GPU is the caller's
to see (it allocates), and PyTorch's own functions refuse mixed dtypes too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kdsl.kernels._checks import (
    argument_error,
    as_axis,
    as_float,
    on_a_gpu,
    shape_error,
    type_name,
)

import kdsl as kd
from kdsl import types as T
from kdsl.targets.cuda import arrays

FRAMEWORKS = ("torch", "cupy")  # whose arrays have the methods used here
_NAMES = {
    "torch": "PyTorch tensor",
    "cupy": "CuPy array",
    "cai": "CUDA array",
    "dlpack": "CUDA array",
}
FLOATS = (T.f32, T.bf16, T.f16)


def dtype_name(dtype: T.DType) -> str:
    """As PyTorch and NumPy name it."""
    return "bfloat16" if dtype == T.bf16 else dtype.to_numpy().name


def launch(kernel: kd.KernelFunction, *args: object) -> None:
    """Run `kernel`'s CUDA schedule (the one place this module runs a kernel)."""
    kernel[kd.cuda](*args)


class Device:
    """The device that a call's CUDA arrays live on, and the library that made them."""

    def __init__(self, func: str, framework: str, device: int) -> None:
        self.func, self.framework, self.device = func, framework, device

    def array(
        self, name: str, x: object, dtypes: tuple[T.DType, ...] = FLOATS, like: str = ""
    ) -> Any:
        """`x`, checked: a CUDA array of this call's library and device, of one of `dtypes`
        (the dtype of the array named `like`, when given)."""
        info = arrays.device_array(x) if on_a_gpu(x) else None
        if info is None:
            raise argument_error(
                self.func,
                f"'{name}' is {type_name(x)} in host memory, and the other arrays are on "
                f"GPU {self.device}",
                f"pass every array on one device (e.g. {name}.cuda() or {name}.to(x.device))",
            )
        if info.device != self.device or info.framework != self.framework:
            mine, first = _NAMES[info.framework], _NAMES[self.framework]
            raise argument_error(
                self.func,
                f"'{name}' is a {mine} on GPU {info.device}, and the first array is a {first} "
                f"on GPU {self.device}",
                f"pass every array from one library on one device (e.g. {name}.to(x.device))",
            )
        if info.dtype not in dtypes:
            have = dtype_name(info.dtype)
            if like:
                what, fix = f"and '{like}' has {dtype_name(dtypes[0])}", f"{name}.to({like}.dtype)"
            else:
                what = f"and on a GPU this function takes {', '.join(map(dtype_name, dtypes))}"
                fix = f"{name}.float()"
            raise argument_error(
                self.func,
                f"'{name}' has dtype {have}, {what}",
                f"convert it first (e.g. {fix} with PyTorch, .astype() with CuPy)",
            )
        return x

    def empty(self, shape: tuple[int, ...], dtype: T.DType) -> Any:
        return arrays.empty(self.framework, shape, dtype, self.device, 0)

    def out(self, out: object, shape: tuple[int, ...], dtypes: tuple[T.DType, ...]) -> Any:
        """`out` checked to take a result of `shape` (one of `dtypes`), or a new array of
        `shape` and the first of `dtypes`."""
        if out is None:
            return self.empty(shape, dtypes[0])
        self.array("out", out, dtypes)
        if tuple(out.shape) != shape:
            raise shape_error(
                self.func,
                f"'out' has shape {tuple(out.shape)}, expected {shape}",
                f"pass out of shape {shape}, or out=None",
            )
        if arrays.device_array(out).readonly:
            raise argument_error(self.func, "'out' is read-only", "pass a writable array")
        return out


def on_device(func: str, first: object) -> Device | None:
    """The device of a call whose first array is `first`, or None when `first` is not
    a CUDA array (the host function runs, and refuses a CUDA array among the others)."""
    if not on_a_gpu(first):
        return None
    info = arrays.device_array(first)
    if info is None:
        raise argument_error(
            func,
            f"the first array ({type_name(first)}) has a dtype that kdsl can't read",
            "pass float32, bfloat16 or float16 arrays",
        )
    if info.framework not in FRAMEWORKS:
        raise argument_error(
            func,
            f"the arrays are {type_name(first)} ({info.framework}); on a GPU "
            "kdsl.kernels' functions take PyTorch tensors or CuPy arrays",
            "pass torch.as_tensor(x, device='cuda') or cupy.asarray(x), or call the "
            "function's kernel on these arrays",
        )
    return Device(func, info.framework, info.device)


def _rows_view(a: Any, rows: int, n: int) -> Any | None:
    """`a` as rows × n without a copy, or None when its strides don't allow one (both
    libraries' `reshape` copies then, and the copy starts elsewhere)."""
    view = a.reshape(rows, n)
    same = arrays.device_array(view).ptr == arrays.device_array(a).ptr
    return view if same else None


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
    dtype = arrays.device_array(dev.array("x", x)).dtype
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
        y = _rows_view(moved_target, rows, n)
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
) -> Any:
    """The library's matmul on the GPU: `kernels` are the plain product's and the one with
    an epilogue; shapes checked by the caller. The result has the inputs' dtype, or
    `out`'s (any float: f32 sums of bf16 inputs)."""
    dtype = arrays.device_array(dev.array("a", a)).dtype
    dev.array("b", b, (dtype,), like="a")
    c = dev.out(out, (*a.shape[:-1], b.shape[-1]), (dtype, *(d for d in FLOATS if d != dtype)))
    n = b.shape[-1]
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
    for t in range(a.shape[0]) if a.ndim == 3 else [...]:
        x, y, z = a[t], b[t] if b.ndim == 3 else b, c[t]
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
    scale: float,
    causal: bool,
    kernels: Mapping[str, kd.KernelFunction],
) -> Any:
    """The library's attention on the GPU: f32 on the CUDA cores (`kernels["f32"]`, and
    `kernels["decode"]` for one query), bf16 on tensor cores (`kernels["bf16"]`); the
    result is f32 unless `out` says otherwise; shapes checked by the caller."""
    dtype = arrays.device_array(dev.array("q", q, (T.f32, T.bf16))).dtype
    dev.array("k", k, (dtype,), like="q")
    dev.array("v", v, (dtype,), like="q")
    shape = tuple(q.shape)
    o = dev.out(out, shape, FLOATS)
    if math.prod(shape) == 0:
        return o
    B, H, Lq, D = shape
    group = H // k.shape[1]
    if causal and k.shape[2] > Lq:  # top-left: keys past the last query are never seen
        k, v = k[:, :, :Lq], v[:, :, :Lq]
    into = o if arrays.device_array(o).dtype == T.f32 else dev.empty(shape, T.f32)
    if dtype == T.bf16:
        launch(kernels["bf16"], q, k, v, into, scale, group, D, bool(causal))
    elif Lq == 1:
        launch(kernels["decode"], q, k, v, into, scale, group, D)
    else:
        launch(kernels["f32"], q, k, v, into, scale, group, D, bool(causal))
    if into is not o:
        o[...] = into
    return o
