"""The kdsl kernel library, written in kdsl: matmul, matvec, attention, softmax, norms and
GGML's quantized formats.

Each module holds the algorithm, a CPU schedule with its search space (`s.param`),
example shapes for `kdsl autotune`, and a public function that allocates the output
when `out=` is not given.
"""

import importlib
import pkgutil
from collections.abc import Sequence

from kdsl.kernels.attention import attention
from kdsl.kernels.matmul import matmul
from kdsl.kernels.matvec import matvec
from kdsl.kernels.norms import layernorm, rmsnorm
from kdsl.kernels.quant import (
    QTensor,
    dequantize,
    qmatmul,
    qmatvec,
    quantize_q4_0,
    quantize_q8_0,
)
from kdsl.kernels.softmax import softmax

import kdsl as kd

__all__ = [
    "QTensor",
    "attention",
    "dequantize",
    "layernorm",
    "matmul",
    "matvec",
    "qmatmul",
    "qmatvec",
    "quantize_q4_0",
    "quantize_q8_0",
    "rmsnorm",
    "softmax",
]


def module_names() -> list[str]:
    """The library's public modules that define kernels (kdsl.kernels.attention, …): what
    benchmarks/ship_tuning.py tunes for the tuning kdsl ships (`kdsl autotune` refuses
    a module of none, such as qtensor)."""
    found = pkgutil.iter_modules(__path__, f"{__name__}.")
    public = [m.name for m in found if not m.name.rsplit(".", 1)[1].startswith("_")]
    return [name for name in public if _kernels_of(name)]


def kernel_functions(modules: Sequence[str] | None = None) -> dict[str, kd.KernelFunction]:
    """Every kernel of those modules (or of `modules`, full names), by name."""
    return {k.name: k for name in modules or module_names() for k in _kernels_of(name)}


def _kernels_of(module_name: str) -> list[kd.KernelFunction]:
    module = importlib.import_module(module_name)
    return [k for k in vars(module).values() if isinstance(k, kd.KernelFunction)]
