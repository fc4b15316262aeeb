"""The kdsl kernel library, written in kdsl: matmul, matvec, attention, softmax, norms and
GGML's quantized formats.

Each module holds the algorithm, a CPU schedule with its search space (`s.param`),
example shapes for `kdsl autotune`, and a public function that allocates the output
when `out=` is not given.
"""

import importlib
import pkgutil

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

from kdsl.kernel import KernelFunction

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
    """The library's public modules (kdsl.kernels.attention, …): what
    benchmarks/ship_tuning.py tunes for the tuning kdsl ships."""
    found = pkgutil.iter_modules(__path__, f"{__name__}.")
    return [m.name for m in found if not m.name.rsplit(".", 1)[1].startswith("_")]


def kernel_functions() -> dict[str, KernelFunction]:
    """Every kernel of those modules, by name."""
    kernels = {}
    for name in module_names():
        module = importlib.import_module(name)
        kernels.update({k.name: k for k in vars(module).values() if isinstance(k, KernelFunction)})
    return kernels
