"""A structural hash of IR: equal for equal programs, stable across processes.

Each node's digest covers its type and fields, with child nodes replaced by their
digests. Digests are memoized by identity, so a kernel whose expressions share
sub-trees (a traced value used twice at every step) hashes in time linear in its DAG,
while equal trees hash equal however they are shared. Source locations are left out:
`source_locations` lists them in the same walk order, so code compiled for one kernel
can report errors at the lines of another kernel with the same hash. A field added
to a node later is left out while it has its default (UNSET_UNHASHED), so the keys of
traced IR without it, in tuning databases, stay the same.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib

from kdsl.errors import SourceLoc
from kdsl.ir.nodes import UNSET_UNHASHED, Kernel
from kdsl.types import DType


def structural_hash(kernel: Kernel) -> str:
    """Hex digest of the kernel's structure."""
    memo: dict[int, tuple[object, str]] = {}

    def digest(value: object) -> str:
        hit = memo.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        if isinstance(value, tuple):
            text = "(" + ",".join(digest(v) for v in value) + ")"
        elif dataclasses.is_dataclass(value) and not isinstance(value, DType):
            fields = [
                f"{f.name}={digest(getattr(value, f.name))}"
                for f in dataclasses.fields(value)
                if f.compare  # source locations are not compared, nor hashed
                and not (f.metadata.get(UNSET_UNHASHED) and getattr(value, f.name) == f.default)
            ]
            text = f"{type(value).__name__}({','.join(fields)})"
        elif isinstance(value, enum.Enum):
            text = f"{type(value).__name__}.{value.name}"
        else:
            text = f"{type(value).__name__}:{value!r}"  # bool 1 vs int 1 vs float 1.0
        result = hashlib.sha256(text.encode()).hexdigest()
        memo[id(value)] = (value, result)
        return result

    return digest(kernel)


def source_locations(kernel: Kernel) -> tuple[SourceLoc | None, ...]:
    """The source locations of the kernel's nodes, each node once (a shared sub-tree is
    visited once, as for the hash), in a fixed walk order: two kernels with the same
    hash traced from the same code list theirs position for position."""
    found: list[SourceLoc | None] = []
    seen: set[int] = set()

    def visit(value: object) -> None:
        if isinstance(value, tuple):
            for v in value:
                visit(v)
        elif dataclasses.is_dataclass(value) and not isinstance(value, DType | SourceLoc):
            if id(value) in seen:
                return
            seen.add(id(value))
            for f in dataclasses.fields(value):
                child = getattr(value, f.name)
                if f.name == "loc":
                    found.append(child)
                else:
                    visit(child)

    visit(kernel)
    return tuple(found)
