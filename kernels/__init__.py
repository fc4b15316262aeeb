"""The kdsl kernel library, written in kdsl: matmul, attention, softmax and norms (so far).

Each module holds the algorithm, a CPU schedule with its search space (`s.param`),
example shapes for `kdsl autotune`, and a public function that allocates the output
when `out=` is not given.
"""

from kdsl.kernels.attention import attention
from kdsl.kernels.matmul import matmul
from kdsl.kernels.norms import layernorm, rmsnorm
from kdsl.kernels.softmax import softmax

__all__ = ["attention", "layernorm", "matmul", "rmsnorm", "softmax"]
