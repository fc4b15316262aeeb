"""GGML's Q8_0 and Q4_0 block formats as kdsl's kernels read them: `QTensor`.

A block holds 32 consecutive values of a row and one f16 scale d:
* Q8_0 (34 bytes): d, then 32 int8 q;           value = d·q
* Q4_0 (18 bytes): d, then 16 bytes of nibbles;  value j = d·(nibble - 8), the low
  nibbles holding values 0–15 and the high nibbles values 16–31.
A `QTensor` holds exactly GGML's values, laid out as kdsl's kernels read them fastest:
each row's scales in one array and its quants in another, padded with zero blocks to a
whole number of groups of blocks whose quants fill a 64-byte vector (2 Q8_0 blocks, 4
Q4_0 blocks). `tobytes()` writes GGML's interleaved bytes and `QTensor.frombuffer` reads
them, bit for bit. (The kernels that make and use them: kernels/quant.py.)
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
from kdsl.kernels import _device
from kdsl.kernels._checks import argument_error, expect_array, on_a_gpu, shape_error, type_name

BLOCK = 32  # values per block, both formats
FORMATS = {"q8_0": 34, "q4_0": 18}  # bytes per block in GGML's files
QUANT_BYTES = {"q8_0": 32, "q4_0": 16}  # the quants' bytes of a block
GROUP = {"q8_0": 2, "q4_0": 4}  # blocks whose quants fill one 64-byte vector
QUANT_TYPES = {"q8_0": np.int8, "q4_0": np.uint8}


@dataclass(frozen=True)
class QTensor:
    """A [rows, cols] matrix in a GGML block format: `d` holds each row's f16 scales and
    `q` its quants (int8 for Q8_0, bytes of two nibbles for Q4_0), both padded with
    zero blocks (zero scale) to a multiple of GROUP[format] blocks."""

    format: str
    shape: tuple[int, int]
    d: np.ndarray  # f16 [rows, padded blocks]
    q: np.ndarray  # [rows, padded blocks · QUANT_BYTES]

    def __post_init__(self) -> None:
        """The format known, and `d` and `q` of the shapes and dtypes `shape` takes (the
        kernels read them by their own shapes: a mismatch would be read as zeros)."""
        rows, cols = check_shape("QTensor", self.format, self.shape)
        padded = padded_blocks(cols, self.format)

        def fix() -> str:
            return (
                f"make a {self.format} {rows}x{cols} QTensor with QTensor.empty (then fill "
                "its scales and quants), quantize_q8_0/quantize_q4_0 or QTensor.frombuffer"
            )

        quants = (rows, padded * QUANT_BYTES[self.format])
        if on_a_gpu(self.d) or on_a_gpu(self.q):
            qtype = np.dtype(QUANT_TYPES[self.format]).name
            _device.check_blocks(self.d, self.q, (rows, padded), quants, qtype, fix())
            object.__setattr__(self, "shape", (rows, cols))
            return
        d = expect_array("QTensor", "d", self.d, (rows, padded), [np.float16], fix)
        q = expect_array("QTensor", "q", self.q, quants, [QUANT_TYPES[self.format]], fix)
        if q.size and q.strides[1] != q.itemsize:  # (`quants` views a row's blocks)
            raise argument_error("QTensor", "'q' is not contiguous along its rows", fix())
        for name, value in (("shape", (rows, cols)), ("d", d), ("q", q)):
            object.__setattr__(self, name, value)

    @classmethod
    def empty(cls, fmt: str, shape: tuple[int, int]) -> QTensor:
        """Zero blocks, to be filled through `scales` and `quants`."""
        rows, cols = check_shape("QTensor.empty", fmt, shape)
        padded = padded_blocks(cols, fmt)
        d = np.zeros((rows, padded), np.float16)
        q = np.zeros((rows, padded * QUANT_BYTES[fmt]), QUANT_TYPES[fmt])
        return cls(fmt, (rows, cols), d, q)

    @property
    def blocks(self) -> int:
        return self.shape[1] // BLOCK

    @property
    def nbytes(self) -> int:
        """GGML's size of the matrix (the padding adds at most GROUP - 1 blocks a row)."""
        return self.shape[0] * self.blocks * FORMATS[self.format]

    @property
    def scales(self) -> np.ndarray:
        """f16 [rows, blocks], a view."""
        return self.d[:, : self.blocks]

    @property
    def quants(self) -> np.ndarray:
        """int8 [rows, blocks, 32] (Q8_0) or uint8 [rows, blocks, 16] (Q4_0 nibble pairs),
        a view."""
        count = QUANT_BYTES[self.format]
        if not isinstance(self.q, np.ndarray):  # on a GPU: its library's view
            return self.q.reshape(self.shape[0], self.q.shape[1] // count, count)[:, : self.blocks]
        shape, strides = (self.shape[0], self.blocks, count), (self.q.strides[0], count, 1)
        # (a strided view: `q` may be rows of a wider buffer, or in reverse order)
        return np.lib.stride_tricks.as_strided(self.q, shape, strides)

    def to(self, like: object) -> QTensor:
        """These blocks where the array `like` is, as `torch.Tensor.to(other)`: on its GPU
        for a PyTorch tensor or a CuPy array there, in host memory for a host array (NumPy,
        a CPU tensor); `self` when they are there already."""
        target = _device.on_device("QTensor.to", like, "like")
        host = isinstance(like, np.ndarray) or hasattr(like, "__dlpack__")  # (a CPU tensor)
        if target is None and not host:
            raise argument_error(
                "QTensor.to",
                f"'like' is {type_name(like)}, expected an array where the blocks should go",
                "pass a NumPy array for host memory, or a PyTorch tensor or CuPy array on the GPU",
            )
        here = _device.on_device("QTensor.to", self.d, "d")
        if here is None and target is None:
            return self
        if here is not None and target is not None and here.same_device(like):
            return self
        d, q = (here.lib.to_host(a) for a in (self.d, self.q)) if here else (self.d, self.q)
        if target is not None:
            d, q = target.lib.from_host(like, d), target.lib.from_host(like, q)
        return QTensor(self.format, self.shape, d, q)

    def ggml(self) -> np.ndarray:
        """GGML's bytes, uint8 [rows, blocks · bytes per block]: each block's f16 scale,
        then its quants (in host memory, wherever the blocks are)."""
        if on_a_gpu(self.d):
            return self.to(np.empty(0)).ggml()
        count = QUANT_BYTES[self.format]
        out = np.empty((self.shape[0], self.blocks * FORMATS[self.format]), np.uint8)
        ggml_view(out, self.format, np.float16, 0, 1)[..., 0] = self.scales
        ggml_view(out, self.format, self.q.dtype, 2, count)[...] = self.quants
        return out

    def tobytes(self) -> bytes:
        return self.ggml().tobytes()

    @classmethod
    def frombuffer(cls, buffer: object, fmt: str, shape: tuple[int, int]) -> QTensor:
        """A QTensor from GGML bytes (e.g. a memory-mapped file's), copied into kdsl's
        layout."""
        if isinstance(buffer, str) and buffer in FORMATS:
            raise argument_error(
                "QTensor.frombuffer",
                f"the first argument is the format {buffer!r}: the order is (buffer, fmt, "
                "shape)",
                f"call QTensor.frombuffer(data, {buffer!r}, (rows, cols))",
            )
        rows, cols = check_shape("QTensor.frombuffer", fmt, shape)
        out = cls.empty(fmt, (rows, cols))
        try:
            data = np.frombuffer(buffer, np.uint8)  # type: ignore[call-overload]
        except (TypeError, ValueError) as exc:
            raise argument_error(
                "QTensor.frombuffer",
                f"the buffer is {type_name(buffer)}, not bytes ({exc})",
                "pass bytes, a bytearray, a memoryview or a NumPy array of the GGML blocks",
            ) from None
        row_bytes = (cols // BLOCK) * FORMATS[fmt]
        expected = rows * row_bytes
        if data.size != expected:
            raise shape_error(
                "QTensor.frombuffer",
                f"{fmt} {rows}x{cols} takes {expected} bytes, the buffer has {data.size}",
                "pass the matrix's shape and exactly its bytes",
            )
        data = data.reshape(rows, row_bytes)
        out.scales[...] = ggml_view(data, fmt, np.float16, 0, 1)[..., 0]
        out.quants[...] = ggml_view(data, fmt, out.q.dtype, 2, QUANT_BYTES[fmt])
        return out


def padded_blocks(cols: int, fmt: str) -> int:
    """Blocks a row of `cols` values takes in kdsl's layout: whole groups of them."""
    group = GROUP[fmt]
    return -(-(cols // BLOCK) // group) * group


def ggml_view(data: np.ndarray, fmt: str, dtype: object, at: int, count: int) -> np.ndarray:
    """[rows, blocks, count] elements of `dtype` from byte `at` of each GGML block."""
    size = FORMATS[fmt]
    shape = (data.shape[0], data.shape[1] // size, count)
    if not data.size:  # (no bytes for an offset into)
        return np.empty(shape, dtype)
    strides = (data.strides[0], size, np.dtype(dtype).itemsize)
    return np.ndarray(shape, dtype, data, at, strides)


def check_shape(func: str, fmt: object, shape: object) -> tuple[int, int]:
    """(rows, cols) of a matrix in `fmt`, for `func`'s errors."""
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise argument_error(
            func,
            f"unknown format {fmt!r}: expected one of {sorted(FORMATS)}",
            "pass 'q8_0' or 'q4_0'",
        )
    try:
        rows, cols = (operator.index(n) for n in shape)
    except (TypeError, ValueError):
        rows, cols = -1, -1
    if rows < 0 or cols < 0 or cols % BLOCK:
        raise shape_error(
            func,
            f"{fmt} stores rows in blocks of {BLOCK}: expected a 2-D shape whose last "
            f"dimension is a multiple of {BLOCK}, got {shape!r}",
            f"pad the rows to a multiple of {BLOCK} values",
        )
    return rows, cols
