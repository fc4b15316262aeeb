"""A structural hash of IR: equal for equal programs, stable across processes."""

from __future__ import annotations

import hashlib

from kdsl.ir.nodes import Kernel


def structural_hash(kernel: Kernel) -> str:
    """Hex digest of the kernel's structure (dataclass reprs leave source locations out)."""
    return hashlib.sha256(repr(kernel).encode()).hexdigest()
