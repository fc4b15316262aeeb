"""Every IR node and IR enum: the one definition of what a kdsl program is.

Nodes are frozen dataclasses with typed fields. Source locations ride on nodes but
stay out of equality, hashing and repr, so two traces of the same code compare equal.
Buffers and loops are referred to by name; names are unique within a kernel.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypeAlias

from kdsl.errors import SourceLoc
from kdsl.types import INDEX, DType, bool_


def _loc() -> SourceLoc | None:
    return field(default=None, compare=False, hash=False, repr=False)  # type: ignore[return-value]


# a field kdsl/ir/hashing.py hashes only when set: one added later leaves the keys of
# traced IR (tuning databases, shipped tuning) as they were
UNSET_UNHASHED = "unset_unhashed"


def _flag() -> bool:
    return field(default=False, metadata={UNSET_UNHASHED: True})  # type: ignore[return-value]


class BinaryOp(enum.Enum):
    ADD = "+"
    SUB = "-"
    MUL = "*"
    DIV = "/"
    FLOORDIV = "//"
    MOD = "%"
    POW = "**"
    MAX = "max"
    MIN = "min"
    AND = "&"
    OR = "|"
    XOR = "^"
    SHL = "<<"
    SHR = ">>"
    LT = "<"
    LE = "<="
    EQ = "=="
    NE = "!="
    GE = ">="
    GT = ">"

    @property
    def is_comparison(self) -> bool:
        return self in _COMPARISONS


_COMPARISONS = frozenset(
    {BinaryOp.LT, BinaryOp.LE, BinaryOp.EQ, BinaryOp.NE, BinaryOp.GE, BinaryOp.GT}
)


class UnaryOp(enum.Enum):
    NEG = "neg"
    INVERT = "invert"  # bitwise not; logical not on bool
    ABS = "abs"
    EXP = "exp"
    EXP2 = "exp2"
    LOG = "log"
    LOG2 = "log2"
    SQRT = "sqrt"
    RSQRT = "rsqrt"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    ERF = "erf"
    SIN = "sin"
    COS = "cos"
    FLOOR = "floor"
    CEIL = "ceil"
    ROUND = "round"  # to the nearest integer, halves to even (np.round, Python's round)

    @property
    def float_only(self) -> bool:
        return self not in (UnaryOp.NEG, UnaryOp.INVERT, UnaryOp.ABS)


class LoopKind(enum.Enum):
    """What the algorithm allows: the dependence kind of a loop."""

    PARALLEL = "parallel"  # implicit loops and kd.grid: iterations are independent
    REDUCTION = "reduction"  # the over= of a reduction: iterations combine associatively
    SERIAL = "serial"  # kd.range: iterations may depend on earlier ones


class LoopExec(enum.Enum):
    """How a loop is executed: chosen by the schedule, checked against LoopKind."""

    SERIAL = "serial"
    VECTORIZED = "vectorized"
    UNROLLED = "unrolled"
    PARALLEL = "parallelized"
    AMX = "amx"  # a tile product on AMX tiles (kdsl/ir/tile_product.py); width 0: from zero
    MMA = "mma"  # a tile product on a GPU warp's mma.sync (the same nest; width 0: from zero)
    GPU_BLOCK_X = "block.x"
    GPU_BLOCK_Y = "block.y"
    GPU_BLOCK_Z = "block.z"
    GPU_THREAD_X = "thread.x"
    GPU_THREAD_Y = "thread.y"
    GPU_THREAD_Z = "thread.z"


class Scope(enum.Enum):
    """Where a buffer lives."""

    GLOBAL = "global"  # a kernel argument or a returned array: caller's memory
    HEAP = "heap"  # a kernel-local temporary too large or dynamic for the stack
    STACK = "stack"  # a small kernel-local temporary
    REGISTER = "register"  # fully unrolled into registers
    SHARED = "shared"  # GPU shared memory


class BufferRole(enum.Enum):
    PARAM = "param"  # passed by the caller
    TEMP = "temp"  # kernel-local
    RESULT = "result"  # allocated for the caller and returned


class CheckKind(enum.Enum):
    SHAPE = "shape"  # argument shapes must agree: ShapeError
    BOUNDS = "bounds"  # a subscript must be in bounds: BoundsError
    ARGUMENT = "argument"  # a scalar argument must fit the dtype it is used as: KernelArgumentError


# ---------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Const:
    value: bool | int | float
    dtype: DType


@dataclass(frozen=True)
class LoopVar:
    """The current iteration of the enclosing loop called `name`."""

    name: str
    dtype: DType = INDEX


@dataclass(frozen=True)
class LocalVar:
    """The current value of a scalar local (declared by DeclareLocal)."""

    name: str
    dtype: DType


@dataclass(frozen=True)
class ScalarArg:
    """A scalar kernel parameter."""

    name: str
    dtype: DType


@dataclass(frozen=True)
class DimOf:
    """The extent of axis `axis` of a buffer, known at run time."""

    buffer: str
    axis: int
    dtype: DType = INDEX


@dataclass(frozen=True)
class Load:
    buffer: str
    index: tuple[Expr, ...]
    dtype: DType
    loc: SourceLoc | None = _loc()
    checked: bool = _flag()  # nothing proves it in bounds before the kernel runs (passes/bounds.py)


@dataclass(frozen=True)
class Binary:
    op: BinaryOp
    lhs: Expr
    rhs: Expr
    dtype: DType


@dataclass(frozen=True)
class Unary:
    op: UnaryOp
    operand: Expr
    dtype: DType


@dataclass(frozen=True)
class Select:
    cond: Expr
    if_true: Expr
    if_false: Expr
    dtype: DType


@dataclass(frozen=True)
class Cast:
    operand: Expr
    dtype: DType


@dataclass(frozen=True)
class Fma:
    """a * b + c with a single rounding."""

    a: Expr
    b: Expr
    c: Expr
    dtype: DType


Expr: TypeAlias = (
    Const | LoopVar | LocalVar | ScalarArg | DimOf | Load | Binary | Unary | Select | Cast | Fma
)


# ----------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class Store:
    buffer: str
    index: tuple[Expr, ...]
    value: Expr
    loc: SourceLoc | None = _loc()
    checked: bool = _flag()  # as Load's
    # the write-back of a cached copy (kdsl/schedule/caching.py): it writes a whole box,
    # which another iteration of a loop around the copy may share
    copy_back: bool = _flag()


@dataclass(frozen=True)
class DeclareLocal:
    """Introduce scalar local `name` with an initial value; visible to the rest of the block."""

    name: str
    dtype: DType
    init: Expr
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True)
class Assign:
    local: str
    value: Expr
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True)
class Allocate:
    """Bring temporary buffer `buffer` into existence for the rest of the enclosing block."""

    buffer: str
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True)
class Prefetch:
    """A hint: bring the cache line holding `buffer[index]` towards the core. Results never
    depend on it, and an index outside the buffer is allowed (the hint is then dropped by
    the hardware, never a fault): a schedule's `prefetch` computes the index of a later
    iteration, which may lie past the end. `write`: the line will be written (fetched
    for ownership, so the store finds it ready)."""

    buffer: str
    index: tuple[Expr, ...]
    loc: SourceLoc | None = _loc()
    write: bool = False


@dataclass(frozen=True)
class Loop:
    """for `var` in [0, extent): body."""

    var: str
    extent: Expr
    kind: LoopKind
    body: tuple[Stmt, ...]
    exec: LoopExec = LoopExec.SERIAL
    width: int = 1  # vector width or unroll factor, when exec says so
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True)
class If:
    cond: Expr
    then: tuple[Stmt, ...]
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True)
class Check:
    """Stop the kernel with an error when `cond` is false.

    `what` names the condition for the user; the runtime adds the values involved;
    `fix` says what to do, where it is not the kind's usual fix.
    """

    cond: Expr
    kind: CheckKind
    what: str
    loc: SourceLoc | None = _loc()
    fix: str | None = field(default=None, metadata={UNSET_UNHASHED: True})


Stmt: TypeAlias = Store | DeclareLocal | Assign | Allocate | Loop | If | Check | Prefetch


# -------------------------------------------------------------------------------- kernel


@dataclass(frozen=True)
class Param:
    """A kernel parameter: an array (ndim >= 0) or a scalar (ndim is None)."""

    name: str
    dtype: DType
    ndim: int | None
    weak: bool = False  # a Python int/float scalar: adapts to the typed values it meets

    @property
    def is_array(self) -> bool:
        return self.ndim is not None


@dataclass(frozen=True)
class Buffer:
    """An array the kernel reads or writes.

    `shape` is in terms of parameters (DimOf, ScalarArg, Const). Parameter buffers take
    their strides from the caller unless `contiguous` (C order) or `fortran` (Fortran
    order: the first axis the contiguous one); temporaries and results are always
    C-contiguous.
    """

    name: str
    dtype: DType
    shape: tuple[Expr, ...]
    role: BufferRole
    scope: Scope
    contiguous: bool = True
    loc: SourceLoc | None = _loc()
    fortran: bool = _flag()
    # written past the caches where larger than the last-level cache (s.nontemporal),
    # or than `nontemporal_above` bytes when that is set
    nontemporal: bool = _flag()
    nontemporal_above: int = field(default=0, metadata={UNSET_UNHASHED: True})

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class Kernel:
    name: str
    params: tuple[Param, ...]
    buffers: tuple[Buffer, ...]
    body: tuple[Stmt, ...]
    results: tuple[str, ...] = ()  # buffers returned to the caller, in order
    # the caller found that no written array argument shares memory with another one:
    # no check of that at the entry (targets/cpu/call.py, where address ranges meet)
    disjoint: bool = _flag()
    # (written, other) array parameters that may be one view of an array, found on the
    # traced IR (kdsl/ir/passes/in_place.py), which a schedule leaves true
    # but not recognizable: the entry lets such a pair through without the caller's check
    in_place: tuple[tuple[str, str], ...] = field(default=(), metadata={UNSET_UNHASHED: True})

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    def __str__(self) -> str:
        """The kernel as the loop IR prints (`print(schedule.replay(...))`)."""
        from kdsl.ir.printer import format_kernel  # (the printer imports this module)

        return format_kernel(self)


def is_bool(e: Expr) -> bool:
    return e.dtype == bool_
