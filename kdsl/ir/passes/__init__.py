"""The target-independent lowering pipeline: a short list of named passes, run in order.

`KDSL_DUMP=name1,name2` (or `all`) prints the IR after the named passes; under
`KDSL_DEBUG=1` the verifier runs after each one.
"""

from __future__ import annotations

from collections.abc import Callable

from kdsl.config import CONFIG, dumps
from kdsl.ir.nodes import Kernel
from kdsl.ir.passes.bounds import hoist_bounds_checks
from kdsl.ir.passes.in_place import mark_in_place
from kdsl.ir.printer import format_kernel
from kdsl.ir.verify import verify

PASSES: tuple[tuple[str, Callable[[Kernel], Kernel]], ...] = (
    ("in_place", mark_in_place),
    ("bounds", hoist_bounds_checks),
)


def lower(kernel: Kernel, stage: str = "traced") -> Kernel:
    """Run every pass of PASSES on `kernel`."""
    for name, run in PASSES:
        kernel = run(kernel)
        if CONFIG.debug:
            verify(kernel, stage)
        if dumps(name):
            print(f"--- after {name}\n{format_kernel(kernel)}")
    return kernel
