"""The kdsl kernel library, written in kdsl: matmul, matvec, attention, softmax, norms and
GGML's quantized formats.

Each module holds the algorithm, a CPU schedule with its search space (`s.param`),
example shapes for `kdsl autotune`, and a public function that allocates the output
when `out=` is not given.
"""

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
