"""Stand-ins for a GPU on a machine without one: PyTorch CUDA tensors over host
memory, and a driver that records launches instead of queueing them. For the host
side's tests (test_host_call.py) and its timing (benchmarks/cuda_call_overhead.py)."""

from __future__ import annotations

import ctypes

import numpy as np

from kdsl.targets.cuda import arrays as A
from kdsl.targets.cuda import driver


class _DType:
    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return f"torch.{self.name}"


F32 = _DType("float32")


class Tensor:
    """What kdsl reads of a PyTorch CUDA tensor, over host memory nobody touches; its
    methods answer from attributes, as cheaply as PyTorch's C methods do."""

    is_cuda = True

    def __init__(self, shape, device=0, strides=None, base=None):
        self.shape = tuple(shape)
        self.dtype = F32
        self.memory = base if base is not None else np.empty(max(1, int(np.prod(shape))), "f4")
        packed = tuple(int(np.prod(shape[k + 1 :])) for k in range(len(shape)))
        self._strides = strides or packed
        self._contiguous = self._strides == packed
        self._ptr = self.memory.ctypes.data
        self.device = device

    def dim(self):
        return len(self.shape)

    def is_contiguous(self):
        return self._contiguous

    def data_ptr(self):
        return self._ptr

    def stride(self):
        return self._strides

    def get_device(self):
        return self.device


class _Module:
    def function(self, name):
        return 1000 + int(name.rsplit("_", 1)[1])


class Recorder(list):
    """The launches queued: (entry, grid, block, stream, the first `words` arguments)."""

    words = 0

    def launch(self, fn, grid, block, stream, params, shared=0):
        pointers = ctypes.cast(params, ctypes.POINTER(ctypes.c_void_p))
        words = tuple(ctypes.c_int64.from_address(pointers[k]).value for k in range(self.words))
        self.append((fn, grid, block, stream, words, shared))


def install(patch, setenv) -> Recorder:
    """Replace the driver's device calls (with `patch`: setattr, or pytest's monkeypatch.setattr)
    and set the architecture; the recorder of launches."""
    recorder = Recorder()
    setenv("KDSL_CUDA_ARCH", "sm_90")
    patch(driver, "unavailable_reason", lambda: None)
    patch(driver, "use_device", lambda device: None)
    patch(driver, "multiprocessors", lambda device: 132)
    patch(driver, "device_arch", lambda device=0: "sm_90")
    patch(driver, "device_name", lambda device=0: "stub GPU")
    patch(driver, "module", lambda key, ptx, device: _Module())
    patch(driver, "launch", recorder.launch)
    patch(driver, "allow_shared", lambda fn, nbytes: None)
    patch(A, "torch_stream", lambda device: 77 + device)
    patch(A, "current_stream", lambda arrays, device: 77 + device)
    return recorder
