"""The CUDA driver through cuda-python (`cuda.bindings.driver`): whether a GPU is
there, its architecture, primary contexts, loading PTX, launching, and memory.

cuda-python is an optional extra (`pip install "kdsl[cuda]"`): importing kdsl never
needs it, and asking for the CUDA target without it (or without a GPU) is a clear
`KernelArgumentError`. The driver API is used directly, not `cuda.core`, because a
launch from Python must stay within a few microseconds.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any

from kdsl.errors import CompileError, KdslError, KernelArgumentError

_lock = threading.Lock()
_local = threading.local()  # the context current on this thread, per device
_contexts: dict[int, Any] = {}


class CudaError(KdslError, RuntimeError):
    """A CUDA driver call failed."""


@functools.cache
def _driver() -> Any:
    try:
        from cuda.bindings import driver
    except ImportError:
        return None
    try:
        (err,) = driver.cuInit(0)
    except Exception:  # the driver library itself is missing: no NVIDIA driver here
        return None
    return driver if int(err) == 0 else None


def unavailable_reason() -> str | None:
    """Why the CUDA target can't run here, or None when it can."""
    try:
        import cuda.bindings  # noqa: F401
    except ImportError:
        return 'cuda-python is not installed (pip install "kdsl[cuda]")'
    drv = _driver()
    if drv is None:
        return "no NVIDIA driver or GPU was found"
    err, count = drv.cuDeviceGetCount()
    if int(err) or count == 0:
        return "no CUDA device is visible"
    return None


def available() -> bool:
    return unavailable_reason() is None


def require() -> Any:
    reason = unavailable_reason()
    if reason is not None:
        raise KernelArgumentError(
            f"the CUDA target can't run: {reason}",
            fix="call the kernel with host (NumPy) arrays, or run on a machine with an "
            'NVIDIA GPU and `pip install "kdsl[cuda]"` (from a checkout: `pip install -e '
            '".[cuda]"`)',
        )
    return _driver()


def check(result: Any, what: str) -> Any:
    """The values of a driver call's result tuple, or CudaError naming the failure."""
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err):
        drv = _driver()
        _, name = drv.cuGetErrorName(err)
        _, text = drv.cuGetErrorString(err)
        raise CudaError(
            f"{what} failed: {name.decode() if name else err} ({text.decode() if text else ''})"
        )
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def device_arch(device: int = 0) -> str | None:
    """`sm_XX` of a device, or None without one."""
    if not available():
        return None
    drv = _driver()
    attr = drv.CUdevice_attribute
    dev = check(drv.cuDeviceGet(device), "cuDeviceGet")
    major = check(
        drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "attr"
    )
    minor = check(
        drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "attr"
    )
    return f"sm_{major}{minor}"


def device_name(device: int = 0) -> str:
    drv = require()
    dev = check(drv.cuDeviceGet(device), "cuDeviceGet")
    return bytes(check(drv.cuDeviceGetName(64, dev), "cuDeviceGetName")).split(b"\0")[0].decode()


def use_device(device: int) -> None:
    """Make the device's primary context (the one PyTorch and CuPy use) current here."""
    current = getattr(_local, "device", None)
    if current == device:
        return
    drv = require()
    with _lock:
        ctx = _contexts.get(device)
        if ctx is None:
            dev = check(drv.cuDeviceGet(device), "cuDeviceGet")
            ctx = _contexts[device] = check(drv.cuDevicePrimaryCtxRetain(dev), "context")
    check(drv.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    _local.device = device


@functools.cache
def multiprocessors(device: int) -> int:
    drv = require()
    dev = check(drv.cuDeviceGet(device), "cuDeviceGet")
    attr = drv.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
    return int(check(drv.cuDeviceGetAttribute(attr, dev), "cuDeviceGetAttribute"))


class Module:
    """PTX loaded on one device: its entry functions by name."""

    def __init__(self, ptx: str, device: int) -> None:
        drv = require()
        use_device(device)
        opt = drv.CUjit_option
        log = bytearray(16384)
        options = [opt.CU_JIT_ERROR_LOG_BUFFER, opt.CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES]
        err, self.handle = drv.cuModuleLoadDataEx(
            ptx.encode() + b"\0", len(options), options, [log, len(log)]
        )
        if int(err):
            message = log.split(b"\0")[0].decode(errors="replace").strip()
            raise CompileError(
                f"the CUDA driver could not load the kernel's PTX ({int(err)}): {message}",
                fix="check the GPU architecture (KDSL_CUDA_ARCH) and the driver version",
            )
        self.functions: dict[str, Any] = {}

    def function(self, name: str) -> Any:
        fn = self.functions.get(name)
        if fn is None:
            drv = _driver()
            fn = self.functions[name] = check(
                drv.cuModuleGetFunction(self.handle, name.encode()), "cuModuleGetFunction"
            )
        return fn


_modules: dict[tuple[str, int], Module] = {}


def module(key: str, ptx: str, device: int) -> Module:
    """The PTX loaded on `device`, once per process."""
    with _lock:
        found = _modules.get((key, device))
    if found is None:
        found = Module(ptx, device)
        with _lock:
            _modules[(key, device)] = found
    return found


@functools.cache
def _raw_launch() -> Any:
    """libcuda's cuLaunchKernel through ctypes: the launch is the one driver call made
    on every kernel call, and this path costs a microsecond where cuda-python's
    argument conversion costs several."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    fn = lib.cuLaunchKernel
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
    return fn


def launch(
    fn: Any,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    stream: int,
    params: int,
    shared: int = 0,
) -> None:
    """Queue one launch on `stream`; `params` is the address of the argument pointers,
    `shared` the bytes of dynamic shared memory a block gets."""
    raw = _raw_launch()
    if raw is not None:
        err = raw(int(fn), *grid, *block, shared, stream, params, None)
    else:
        err = _driver().cuLaunchKernel(fn, *grid, *block, shared, stream, params, 0)[0]
    if int(err):
        check((_driver().CUresult(int(err)),), "launching the kernel")


def allow_shared(fn: Any, nbytes: int) -> None:
    """Let blocks of entry `fn` have `nbytes` of dynamic shared memory (past 48 KB a
    kernel must opt in)."""
    drv = _driver()
    attr = drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    check(drv.cuFuncSetAttribute(fn, attr, nbytes), "allowing dynamic shared memory")


def synchronize(stream: int) -> None:
    check(_driver().cuStreamSynchronize(stream), "cuStreamSynchronize")


def read_word(ptr: int, stream: int) -> int:
    """An int64 in device memory, after the stream's work so far."""
    synchronize(stream)
    out = ctypes.c_int64(0)
    check(_driver().cuMemcpyDtoH(ctypes.addressof(out), ptr, 8), "cuMemcpyDtoH")
    return out.value


def elapsed_s(run: Any, stream: int = 0) -> float:
    """Seconds that the work `run()` queues on `stream` takes there (CUDA events)."""
    drv = _driver()
    start = check(drv.cuEventCreate(0), "cuEventCreate")
    stop = check(drv.cuEventCreate(0), "cuEventCreate")
    try:
        check(drv.cuEventRecord(start, stream), "cuEventRecord")
        run()
        check(drv.cuEventRecord(stop, stream), "cuEventRecord")
        check(drv.cuEventSynchronize(stop), "cuEventSynchronize")
        return float(check(drv.cuEventElapsedTime(start, stop), "cuEventElapsedTime")) / 1e3
    finally:
        drv.cuEventDestroy(start)
        drv.cuEventDestroy(stop)


class DeviceBuffer:
    """Device memory from the driver's stream-ordered allocator, freed on the same
    stream when dropped. It exposes `__cuda_array_interface__` (a byte array unless
    given a shape and dtype), so CuPy, PyTorch or `kdsl` can read it."""

    def __init__(
        self, nbytes: int, stream: int, shape: tuple[int, ...] | None = None, dtype: Any = None
    ) -> None:
        self.nbytes, self.stream = nbytes, stream
        self.shape = shape if shape is not None else (nbytes,)
        self.dtype = dtype
        self.ptr = int(check(_driver().cuMemAllocAsync(max(1, nbytes), stream), "allocating"))

    def zero(self) -> None:
        check(_driver().cuMemsetD8Async(self.ptr, 0, max(1, self.nbytes), self.stream), "memset")

    @classmethod
    def of(cls, host: Any, dtype: Any, stream: int = 0) -> DeviceBuffer:
        """A device copy of the contiguous NumPy array `host` (kdsl dtype `dtype`)."""
        buffer = cls(host.nbytes, stream, tuple(host.shape), dtype)
        synchronize(stream)  # the allocation is stream-ordered; the copy is not
        check(_driver().cuMemcpyHtoD(buffer.ptr, host.ctypes.data, host.nbytes), "copying in")
        return buffer

    def copy_to(self, host: Any) -> None:
        """Into the contiguous NumPy array `host`, after the stream's work so far."""
        synchronize(self.stream)
        check(_driver().cuMemcpyDtoH(host.ctypes.data, self.ptr, host.nbytes), "copying out")

    @property
    def __cuda_array_interface__(self) -> dict[str, object]:
        typestr = "|u1" if self.dtype is None else self.dtype.to_numpy().str
        return {
            "shape": self.shape,
            "typestr": typestr,
            "data": (self.ptr, False),
            "version": 3,
            "stream": None,
        }

    def __del__(self) -> None:
        drv = _driver()
        if drv is not None and getattr(self, "ptr", 0):
            drv.cuMemFreeAsync(self.ptr, self.stream)
