"""What a tuning result is filed under (DESIGN §4): kernel identity, target, signature, shape.

* kernel identity — content-addressed: the structural hash of the traced IR (which
  captures every helper the trace ran, in any module), the schedule's search space
  (param names and choices: results never apply to another schedule's params), and
  kdsl's version; never file times or the function's text.
* target — the CPU model and a digest of its features, e.g. `cpu/znver4/3f2a91c0`.
* signature — each parameter's dtype and rank (and layout), or a constexpr's value.
* shape — the array arguments' shapes in parameter order; scalars are not part of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import llvmlite.binding as llvm
import numpy as np

from kdsl.config import VERSION
from kdsl.ir.hashing import structural_hash
from kdsl.ir.nodes import Kernel
from kdsl.trace.tracer import ArgSpec, ArraySpec, ConstSpec, ScalarSpec

if TYPE_CHECKING:
    from kdsl.kernel import KernelFunction

Shape = tuple[tuple[int, ...], ...]


def kernel_identity(traced: Kernel, space: Mapping[str, Sequence[object]]) -> str:
    text = f"{structural_hash(traced)}/{sorted((k, repr(v)) for k, v in space.items())}/{VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def tuning_key(
    fn: KernelFunction,
    specs: tuple[ArgSpec, ...],
    traced: Kernel,
    space: Mapping[str, Sequence[object]],
    target: str,
) -> tuple[str, str, str]:
    """What the tuning database files a kernel signature's results under: the kernel's
    identity (of its code with symbolic shapes, under static_shapes too: a result then
    serves other shapes, as the nearest tuned one), the target (`target_key()`, or a
    GPU's), the signature."""
    identity = kernel_identity(fn.shape_free(specs, traced), space)
    return identity, target, signature_key(fn.signature.names, specs)


def target_key(target: str = "cpu") -> str:
    features = llvm.get_host_cpu_features().flatten()
    digest = hashlib.sha256(features.encode()).hexdigest()[:8]
    return f"{target}/{llvm.get_host_cpu_name()}/{digest}"


def signature_key(names: Sequence[str], specs: Sequence[ArgSpec]) -> str:
    parts = []
    for name, spec in zip(names, specs):
        match spec:
            case ArraySpec():
                layout = "C" if spec.contiguous else "F" if spec.fortran else "S"
                parts.append(f"{name}:{spec.dtype.name}[{spec.ndim},{layout}]")
            case ScalarSpec():
                parts.append(f"{name}:{spec.dtype.name}")
            case ConstSpec():
                parts.append(f"{name}={spec.value!r}")
    return " ".join(parts)


def shape_of(args: Sequence[object]) -> Shape:
    """The shapes of the array arguments, in order."""
    return tuple(tuple(a.shape) for a in args if isinstance(a, np.ndarray))


def format_shape(shape: Shape) -> str:
    return ", ".join("x".join(map(str, s)) or "scalar" for s in shape)
