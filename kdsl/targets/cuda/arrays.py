"""CUDA arrays from the user's framework: what kdsl needs of one (pointer, shape,
strides, dtype, device, stream), read from a PyTorch tensor directly (the fast path),
from `__cuda_array_interface__` (CuPy, Numba, ...), or from a DLPack capsule; and new
arrays made by the same framework, so results come back as the caller's kind."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from kdsl import types as T

DLPACK_CUDA = 2


class DeviceArray:
    """What kdsl needs of a CUDA array (a plain class: made on every call, so cheap)."""

    __slots__ = (
        "ptr",
        "shape",
        "strides",
        "dtype",
        "device",
        "readonly",
        "framework",
        "stream",
        "keep",
    )

    def __init__(
        self,
        ptr: int,
        shape: tuple[int, ...],
        strides: tuple[int, ...],  # in bytes
        dtype: T.DType,
        device: int,
        readonly: bool,
        framework: str,  # torch | cupy | cai | dlpack
        stream: int | None,  # the stream the producer named, if any
        keep: object = None,  # what must stay alive while kdsl uses the pointer
    ) -> None:
        self.ptr, self.shape, self.strides, self.dtype = ptr, shape, strides, dtype
        self.device, self.readonly, self.framework = device, readonly, framework
        self.stream, self.keep = stream, keep

    @property
    def contiguous(self) -> bool:
        expected = self.dtype.itemsize
        for n, s in zip(reversed(self.shape), reversed(self.strides)):
            if n > 1 and s != expected:
                return False
            expected *= n
        return True


_TORCH_DTYPES: dict[object, T.DType | None] = {}


def _dtype_from_name(name: str) -> T.DType | None:
    if name == "bfloat16":
        return T.bf16
    if name == "bool":
        return T.bool_
    try:
        return T.from_numpy(np.dtype(name))
    except TypeError:
        return None


def _kind(value: object) -> str | None:
    """How `value` is read as a CUDA array, or None when it is not one."""
    if type(value).__name__ == "Tensor":  # its class has the array interface, for CUDA only
        return "torch" if getattr(value, "is_cuda", False) else None
    if hasattr(type(value), "__cuda_array_interface__"):
        return "cai"
    device = getattr(value, "__dlpack_device__", None)
    return "dlpack" if device is not None and device()[0] == DLPACK_CUDA else None


def is_device(value: object) -> bool:
    """Whether `value` is a CUDA array (without reading it)."""
    return _kind(value) is not None


def fast_key(args: Sequence[object]) -> tuple[object, ...] | None:
    """The specialization key of PyTorch CUDA tensors and Python scalars, or None when
    some argument needs the careful path."""
    key: list[object] = []
    for a in args:
        t = type(a)
        if t is float or t is int or t is bool:
            key.append(t)
        elif t.__name__ == "Tensor" and a.is_cuda:  # type: ignore[attr-defined]
            key.append((a.dtype, a.dim(), a.is_contiguous()))  # type: ignore[attr-defined]
        else:
            return None
    return tuple(key)


def device_array(value: object) -> DeviceArray | None:
    """The CUDA array `value` is, or None when it is not one (host arrays included)."""
    kind = _kind(value)
    if kind is None:
        return None
    return {"torch": _torch, "cai": _cai, "dlpack": _dlpack}[kind](value)


def _torch(t: Any) -> DeviceArray | None:
    dtype = _TORCH_DTYPES.get(t.dtype, False)
    if dtype is False:
        dtype = _TORCH_DTYPES[t.dtype] = _dtype_from_name(str(t.dtype).removeprefix("torch."))
    if dtype is None:
        return None
    size = dtype.itemsize
    strides = tuple([s * size for s in t.stride()])
    return DeviceArray(t.data_ptr(), t.shape, strides, dtype, t.get_device(), False, "torch", None)


def _cai(value: Any) -> DeviceArray | None:
    iface = value.__cuda_array_interface__
    dtype = T.from_numpy(np.dtype(iface["typestr"]))
    if dtype is None:
        return None
    ptr, readonly = iface["data"]
    shape = tuple(iface["shape"])
    strides = iface.get("strides")
    if strides is None:
        strides = _c_strides(shape, dtype.itemsize)
    stream = iface.get("stream")
    framework = "cupy" if type(value).__module__.startswith("cupy") else "cai"
    return DeviceArray(
        ptr,
        shape,
        tuple(strides),
        dtype,
        _device_of(ptr),
        bool(readonly),
        framework,
        stream if isinstance(stream, int) and stream > 2 else None,
    )


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    out, acc = [], itemsize
    for n in reversed(shape):
        out.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(out))


def _device_of(ptr: int) -> int:
    from kdsl.targets.cuda import driver

    drv = driver.require()
    attr = drv.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
    err, ordinal = drv.cuPointerGetAttribute(attr, ptr)
    return int(ordinal) if not int(err) else 0


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_DL_CODES = {0: "int", 1: "uint", 2: "float", 4: "bfloat", 6: "bool"}


def _dlpack(value: Any) -> DeviceArray | None:
    capsule = value.__dlpack__()
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    tensor = _DLTensor.from_address(get(capsule, b"dltensor"))  # DLManagedTensor starts so
    kind = _DL_CODES.get(tensor.dtype.code)
    name = {"bfloat": "bfloat16", "bool": "bool"}.get(kind or "", f"{kind}{tensor.dtype.bits}")
    dtype = _dtype_from_name(name) if kind else None
    if dtype is None or tensor.dtype.lanes != 1:
        return None
    shape = tuple(tensor.shape[k] for k in range(tensor.ndim))
    if tensor.strides:
        strides = tuple(tensor.strides[k] * dtype.itemsize for k in range(tensor.ndim))
    else:
        strides = _c_strides(shape, dtype.itemsize)
    return DeviceArray(
        (tensor.data or 0) + tensor.byte_offset,
        shape,
        strides,
        dtype,
        tensor.device.device_id,
        False,
        "dlpack",
        None,
        keep=capsule,
    )


def current_stream(arrays: list[DeviceArray], device: int) -> int:
    """The stream a framework's user expects work on: PyTorch's or CuPy's current one, a
    stream the array interface named, else the default stream."""
    for a in arrays:
        if a.stream is not None:
            return a.stream
    frameworks = {a.framework for a in arrays}
    if "torch" in frameworks:
        return torch_stream(device)
    if "cupy" in frameworks:
        import cupy

        return int(cupy.cuda.get_current_stream().ptr)
    return 0


@functools.cache
def _torch_raw_stream() -> Any:
    import torch

    return getattr(torch._C, "_cuda_getCurrentRawStream", None)  # no Stream object: µs


def torch_stream(device: int) -> int:
    """PyTorch's current stream on `device`."""
    raw = _torch_raw_stream()
    if raw is not None:
        return int(raw(device))
    import torch

    return int(torch.cuda.current_stream(device).cuda_stream)


def stream_handle(stream: object) -> int:
    """A `stream=` argument as a CUstream: an int, or a PyTorch/CuPy/cuda.core stream."""
    for attr in ("cuda_stream", "ptr", "handle"):
        value = getattr(stream, attr, None)
        if value is not None:
            return int(value)
    protocol = getattr(stream, "__cuda_stream__", None)
    if protocol is not None:
        return int(protocol()[1])
    return int(stream)  # type: ignore[call-overload]


def empty(framework: str, shape: tuple[int, ...], dtype: T.DType, device: int, stream: int) -> Any:
    """A new array of the caller's framework on `device` (results and temporaries)."""
    if framework == "torch":
        import torch

        name = "bfloat16" if dtype == T.bf16 else "bool" if dtype.is_bool else dtype.to_numpy().name
        return torch.empty(shape, dtype=getattr(torch, name), device=f"cuda:{device}")
    if framework == "cupy" and dtype != T.bf16:
        import cupy

        with cupy.cuda.Device(device):
            return cupy.empty(shape, dtype=dtype.to_numpy())
    from kdsl.targets.cuda.driver import DeviceBuffer

    return DeviceBuffer(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, stream, shape, dtype)
