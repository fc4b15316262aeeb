"""`Schedule`: the object a schedule function receives, and the recipe it records.

Each primitive applies at once to the kernel's IR (so a refused step points at the
user's line) and is recorded as a `Step` of plain JSON values. The recorded steps,
with the tunable parameters and the values chosen for them, are the schedule as data:
`str(s)` prints it, `s.to_json()` saves it, `Schedule.replay(json, kernel)` applies it to
a freshly traced kernel and gives the same IR.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kdsl.config import kdsls_own
from kdsl.errors import ScheduleError, SourceLoc
from kdsl.ir.nodes import Const, Kernel, Loop
from kdsl.ir.passes import lower
from kdsl.schedule import caching, fusion, layouts, loops, reuse, rfactor, stages, tree
from kdsl.schedule.step import Step, StepContext, plain
from kdsl.types import DType, as_dtype

VectorCheck = Callable[[Loop, Kernel], "str | None"]
TileInstructions = Callable[[], frozenset[str]]  # the target's matrix instructions ("amx")


# What `replay` assumes of each target: kdsl.kernel puts their matrix instructions here
# (the schedule layer does not import the targets).
target_tile_instructions: dict[str, TileInstructions] = {}


# The traced IR that `kernel.ir(...)` handed out (kdsl.kernel adds it): `replay` lowers it
# first, as a kernel's own schedule starts from lowered IR. Any other Kernel is taken as
# lowered already: lowering twice would repeat its checks.
class _ByIdentity:
    """Kernels held weakly and found by identity: a Kernel's own hash walks its whole tree,
    which takes exponential time on shared sub-expressions (a WeakSet hashed it)."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref[Kernel]] = {}

    def add(self, kernel: Kernel) -> None:
        key = id(kernel)

        def forget(_: weakref.ref[Kernel]) -> None:
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(kernel, forget)

    def __contains__(self, kernel: object) -> bool:
        ref = self._refs.get(id(kernel))
        return ref is not None and ref() is kernel


traced_kernels = _ByIdentity()


def choice_text(value: object) -> str:
    """A choice's JSON text: how the autotuner and the tuning database tell choices apart
    (a tuple and a list of the same items are one choice; repr for what JSON can't hold)."""
    return json.dumps(value, sort_keys=True, default=repr)


def _caller() -> SourceLoc | None:
    """The user's line that called the primitive."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not kdsls_own(path):
            return SourceLoc(path, frame.f_lineno)
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _dtype_name(dtype: object) -> object:
    """A dtype as a step holds it: its kdsl name ("f32"), or as given where it names none
    (the step then says so)."""
    if dtype is None:
        return None
    try:
        return as_dtype(dtype).name
    except TypeError:
        return dtype


class Schedule:
    """A schedule being built on one kernel (`s` in `@kernel.schedule(kd.cpu)`)."""

    def __init__(
        self,
        kernel: Kernel,
        *,
        target: str = "cpu",
        strict_fp: bool = False,
        config: Mapping[str, object] | None = None,
        vector_check: VectorCheck | None = None,
        tile_instructions: TileInstructions = frozenset,
        checks: bool = False,
    ) -> None:
        self.kernel = kernel
        self.target = target
        self.strict_fp = strict_fp
        self.checks = checks  # each subscript checked where it runs (kd.kernel(checks=True))
        self.config = dict(config or {})
        self.vector_check = vector_check
        self.tile_instructions = tile_instructions  # asked only when a schedule needs them
        self.steps: list[tuple[Step, object]] = []  # each step with what it returned
        self.space: dict[str, tuple[object, ...]] = {}
        self.chosen: dict[str, object] = {}
        self._clones: dict[str, list[str]] = {}
        self._closed = False  # its schedule function returned (user_function.run)

    # ----------------------------------------------------------------- tunables

    def param(self, name: str, choices: Sequence[object]) -> Any:
        """A tunable: the autotuner's choice, or the first of `choices` without tuning."""
        self._check_open(f"param({name!r}, …)")
        if isinstance(choices, str | bytes) or not isinstance(choices, Iterable):
            raise self._refuse(
                f"param({name!r}, {choices!r})",
                "choices must be a non-empty sequence of values, "
                f"not {type(choices).__name__} {choices!r}",
                f"write s.param({name!r}, [{choices!r}]) for one value, or list the choices",
            )
        options = tuple(plain(c) for c in choices)  # np.int64 choices recorded as ints
        if not isinstance(name, str) or not options:
            raise self._refuse(
                f"param({name!r}, {list(options)!r})",
                "a param needs a name and at least one choice",
                'write s.param("tile", [32, 64])',
            )
        # the autotuner tells choices apart by their JSON text (lists by value)
        texts = [choice_text(c) for c in options]
        repeats = [c for n, c in enumerate(options) if texts[n] in texts[:n]]
        if repeats:
            once = [c for n, c in enumerate(options) if texts[n] not in texts[:n]]
            raise self._refuse(
                f"param({name!r}, {list(options)!r})",
                f"param '{name}' lists the choice {repeats[0]!r} more than once",
                f"list each choice once: s.param({name!r}, {once!r})",
            )
        if name in self.space and list(map(choice_text, self.space[name])) != texts:
            raise self._refuse(
                f"param({name!r}, …)",
                f"param '{name}' was declared before with other choices {list(self.space[name])}",
                "give each param one set of choices, or a new name",
            )
        # so is a configured value: a saved config holds a tuple choice as a list
        value = self.config.get(name, options[0])
        text = choice_text(value)
        if text not in texts:
            raise self._refuse(
                f"param({name!r}, …)",
                f"the configured value {value!r} is not one of {list(options)}",
                "tune again: the search space changed since this configuration was saved",
            )
        value = options[texts.index(text)]  # the choice as the schedule wrote it
        self.space[name] = options
        self.chosen[name] = value
        return value

    def dtype(self, buffer: str) -> Any:
        """A buffer's element type (`kd.bf16`, …): what a schedule may depend on besides
        its params, e.g. packing bf16 operands for the dot-product instructions."""
        try:
            return self.kernel.buffer(buffer).dtype
        except KeyError:
            names = ", ".join(b.name for b in self.kernel.buffers)
            raise self._refuse(
                f"dtype({buffer!r})", f"there is no buffer named {buffer!r}", f"name one of {names}"
            ) from None

    def extent(self, loop: str) -> int | None:
        """How many iterations `loop` runs where that is a constant (a constexpr's, a
        trace-time value's; of a split of a constant loop, the outer loop always and the
        inner one where the factor divides), else None (a shape's, an inner loop whose
        last tile may be short): for schedules that size a register block by it
        (attention's P·V holds 64 floats of D in eight ymm: 4 queries where its chunk of D
        is 16, 2 where it is 32)."""
        found = tree.find_loop(self.kernel.body, loop) if isinstance(loop, str) else None
        if found is None:
            names = ", ".join(tree.loop_names(self.kernel)) or "none"
            raise self._refuse(
                f"extent({loop!r})", f"there is no loop named {loop!r}", f"name one of {names}"
            )
        extent = found[1].extent
        return int(extent.value) if isinstance(extent, Const) else None

    def has(self, instruction: str) -> bool:
        """Whether the target has a matrix instruction that `tensorize` can use ("amx":
        the CPU's AMX-BF16 tile registers), for schedules that differ where it is."""
        return instruction in self.tile_instructions()

    def default(self) -> None:
        """The target's default schedule (what a kernel without a schedule gets), as
        steps of this one: for a schedule that is special only in some cases (a dtype,
        an instruction the target lacks)."""
        from kdsl.schedule.default import default_schedule  # (it builds on this class)

        default_schedule(self)

    if not TYPE_CHECKING:  # (hidden from mypy, which then still flags a misspelled step)

        def __getattr__(self, name: str) -> Any:
            """A misspelled step (`s.vectorise`) is the user's mistake: say so at their
            line, with the steps it is close to. Private and dunder names, which Python's
            own machinery probes, stay an AttributeError."""
            kernel = vars(self).get("kernel")
            if name.startswith("_") or kernel is None:
                raise AttributeError(name)
            steps = [*sorted(PRIMITIVES), "param", "has", "dtype", "extent", "default"]
            close = difflib.get_close_matches(name, steps, n=3)
            hint = f"did you mean {' or '.join(f's.{c}' for c in close)}? " if close else ""
            raise ScheduleError(
                f"'{name}' is not a schedule step",
                kernel=kernel.name,
                loc=_caller(),
                fix=f"{hint}the steps are {', '.join(steps)}",
            )

    # --------------------------------------------------------------- primitives

    def split(self, loop: str, factor: int) -> tuple[str, str]:
        """`loop` → (outer, inner) with the inner running `factor` iterations."""
        return self._apply(Step("split", (loop, factor)))  # type: ignore[return-value]

    def tile(self, l1: str, l2: str, f1: int, f2: int) -> tuple[str, str, str, str]:
        """Split two nested loops and order the pieces (outer1, outer2, inner1, inner2)."""
        return self._apply(Step("tile", (l1, l2, f1, f2)))  # type: ignore[return-value]

    def collapse(self, outer: str, inner: str) -> str:
        """Make a loop and the loop that is its whole body one loop over both (the same
        iterations, in the same order); returns its name (`"ij"` for `"i"`, `"j"`)."""
        return self._apply(Step("collapse", (outer, inner)))  # type: ignore[return-value]

    def reorder(self, *loops_: str) -> None:
        """Put the named loops of one nest in this order, outermost first (as arguments,
        or as one list or tuple of them)."""
        if len(loops_) == 1 and isinstance(loops_[0], list | tuple):
            loops_ = tuple(loops_[0])
        self._apply(Step("reorder", loops_))

    def unroll(self, loop: str, factor: int | None = None) -> None:
        self._apply(Step("unroll", (loop,) if factor is None else (loop, factor)))

    def vectorize(self, loop: str, width: int) -> None:
        self._apply(Step("vectorize", (loop, width)))

    def parallelize(self, loop: str, threads: int | None = None) -> None:
        self._apply(Step("parallelize", (loop,) if threads is None else (loop, threads)))

    def bind(self, loop: str, axis: str, threads: int | None = None) -> None:
        """Run `loop` across GPU blocks or threads ("block.x", "thread.x", ...). A loop
        bound to threads gets `threads` of them (at most its extent's constant bound;
        without `threads`: that bound, else 256 along x); it strides when its extent is
        larger."""
        kwargs = () if threads is None else (("threads", threads),)
        self._apply(Step("bind", (loop, axis), kwargs))

    def tensorize(self, loop: str, instruction: str) -> None:
        """Run the tile product whose rows loop is `loop` (rows, columns, pairs of k, k:
        see kdsl/ir/tile_product.py) on the target's matrix instruction ("amx")."""
        self._apply(Step("tensorize", (loop, instruction)))

    def prefetch(
        self, buffer: str, loop: str, distance: int = 1, inside: str | None = None
    ) -> None:
        """At the top of each iteration of `loop` (or of the loop `inside` within it),
        fetch the cache lines of `buffer` that the iteration of `loop` `distance` ahead
        reads (a hint for streams from DRAM; results never change). Best as a last step."""
        args = (buffer, loop, distance) if inside is None else (buffer, loop, distance, inside)
        self._apply(Step("prefetch", args))

    def nontemporal(self, buffer: str, above: int | None = None) -> None:
        """Write `buffer` past the caches where it is larger than the last-level cache
        (an output streamed to DRAM: no read of its lines before they are written), or
        than `above` bytes: an output that must share the cache with inputs as large
        overflows it at half its size (a tunable: `above=s.param(...)`; None keeps the
        cache's size)."""
        kwargs = () if above is None else (("above", above),)
        self._apply(Step("nontemporal", (buffer,), kwargs))

    def specialize(self, loop: str, below: int) -> tuple[str, ...]:
        """Run a copy of the nest holding `loop` where `loop`'s extent (known when the
        kernel runs) is under `below`, the nest as it is otherwise; returns the copy's
        loop names, outermost first, to schedule each version its own way."""
        return self._apply(Step("specialize", (loop,), (("below", below),)))  # type: ignore[return-value]

    def rfactor(self, loop: str) -> str:
        """Make reduction loop `loop` (the outer loop of a split reduction) parallel: each
        iteration accumulates into parts of its own, combined in order after it; returns
        the combining loop's name. Then `parallelize(loop)`."""
        return self._apply(Step("rfactor", (loop,)))  # type: ignore[return-value]

    def fuse(self, loop_a: str, loop_b: str) -> str:
        """Merge sibling loop `loop_b` into `loop_a` (same range); shrink temporaries that no
        longer need their full extent. Returns the fused loop's name (`loop_a`)."""
        return self._apply(Step("fuse", (loop_a, loop_b)))  # type: ignore[return-value]

    def reuse(self, loop_a: str, loop_b: str) -> None:
        """Compute once what sibling loops `loop_a` and `loop_b` (right after it) both
        compute from the same elements: `loop_a` also stores it where `loop_b` writes,
        and `loop_b` reads it back from there (a one-statement softmax's exponentials)."""
        self._apply(Step("reuse", (loop_a, loop_b)))

    def compute_at(self, stage: str, loop: str) -> None:
        """Compute temporary `stage` inside `loop` of its consumer, only the part it needs."""
        self._apply(Step("compute_at", (stage, loop)))

    def inline(self, stage: str) -> None:
        """Replace reads of temporary `stage` by the expression that computes it."""
        self._apply(Step("inline", (stage,)))

    def cache(
        self,
        buffer: str,
        at: str,
        layout: str | Callable[..., object] | None = None,
        scope: str | None = None,
        dtype: DType | None = None,
    ) -> str:
        """Copy the tile of `buffer` used in one iteration of `at` into a local buffer
        (re-laid out by `layout`, e.g. "packed", or cut in blocks: lambda k, n: (n // 16,
        k, n % 16); its values converted to a wider `dtype`, e.g. kd.f32 for bf16);
        returns the local buffer's name."""
        held = _dtype_name(dtype)  # (steps hold JSON values)
        named = (("layout", layouts.spelled(layout)), ("scope", scope), ("dtype", held))
        kwargs = tuple((k, v) for k, v in named if v is not None)
        return self._apply(Step("cache", (buffer, at), kwargs))  # type: ignore[return-value]

    # ------------------------------------------------------------- application

    @contextlib.contextmanager
    def _all_or_none(self) -> Iterator[None]:
        """Steps that apply together or not at all: a refusal inside puts the schedule
        back as it was before them (the default schedule's compound steps)."""
        saved = self.kernel, list(self.steps), self._clones
        try:
            yield
        except ScheduleError:
            self.kernel, self.steps[:], self._clones = saved
            raise

    def _close(self) -> None:
        self._closed = True

    def _check_open(self, step: object) -> None:
        """Refuse a step on a schedule whose function returned: the kernel was built from
        the steps made until then, so a kept `s` would take steps that change nothing."""
        if self._closed:
            raise self._refuse(
                str(step),
                "this schedule is finished (its schedule function returned), so a step "
                "made now would change nothing that runs",
                "make every step inside the schedule function; to try more steps on the "
                "result, replay it: kd.Schedule.replay(s.to_json(), kernel.ir(*args))",
            )

    def _apply(self, step: Step, loc: SourceLoc | None = None) -> object:
        self._check_open(step)
        ctx = StepContext(
            self.kernel,
            step,
            strict_fp=self.strict_fp,
            target=self.target,
            loc=loc or _caller(),
            clones={k: list(v) for k, v in self._clones.items()},  # kept only on success
            vector_check=self.vector_check,
            tile_instructions=self.tile_instructions,
        )
        primitive = PRIMITIVES.get(step.primitive)
        if primitive is None:
            raise ctx.refuse(
                f"'{step.primitive}' is not a schedule primitive",
                f"use one of {', '.join(sorted(PRIMITIVES))}",
            )
        result = primitive(ctx, *step.args, **dict(step.kwargs))
        loops.recheck_annotations(ctx)
        self.kernel = ctx.kernel
        self._clones = ctx.clones
        self.steps.append((step, result))
        return result

    def _refuse(self, step: str, what: str, fix: str) -> ScheduleError:
        return ScheduleError(
            f"schedule step {step} is not possible: {what}",
            kernel=self.kernel.name,
            loc=_caller(),
            fix=fix,
        )

    # ---------------------------------------------------------------- as data

    def __str__(self) -> str:
        lines = [f"# schedule for {self.kernel.name} ({self.target})"]
        lines += [f"# param {n} in {list(c)}: {self.chosen[n]!r}" for n, c in self.space.items()]
        for step, result in self.steps:
            if isinstance(result, tuple):
                lines.append(f"{', '.join(map(str, result))} = s.{step}")
            else:
                lines.append(f"s.{step}")
        return "\n".join(lines)

    __repr__ = __str__

    def to_dict(self) -> dict[str, object]:
        return {
            "kernel": self.kernel.name,
            "target": self.target,
            "params": {n: list(c) for n, c in self.space.items()},
            "config": dict(self.chosen),
            "steps": [[s.primitive, list(s.args), dict(s.kwargs)] for s, _ in self.steps],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def replay(
        cls,
        recipe: str | Mapping[str, Any],
        kernel: Kernel | Any,
        *,
        strict_fp: bool = False,
        vector_check: VectorCheck | None = None,
        tile_instructions: TileInstructions | None = None,
    ) -> Schedule:
        """Apply recorded steps to `kernel` (freshly traced): the same IR as when recorded.
        A recipe may use its target's matrix instructions here (`tensorize`) unless
        `tile_instructions` says which. `kernel` may be what `kernel.ir(...)` returns, or
        its `.kernel`: lowered first (its bounds checks added), as `kernel.schedule_of`
        does; any other Kernel is taken as lowered already (`kdsl.ir.passes.lower`)."""
        # (an IRView: kdsl.kernel may not be imported here)
        kernel = getattr(kernel, "kernel", kernel)
        if kernel in traced_kernels:
            kernel = lower(kernel)
        data = json.loads(recipe) if isinstance(recipe, str) else recipe
        if tile_instructions is None:
            target = data.get("target", "cpu")
            tile_instructions = target_tile_instructions.get(target, frozenset)
        s = cls(
            kernel,
            target=data.get("target", "cpu"),
            strict_fp=strict_fp,
            config=data.get("config", {}),
            vector_check=vector_check,
            tile_instructions=tile_instructions,
        )
        for name, choices in data.get("params", {}).items():
            s.param(name, choices)
        for primitive, args, kwargs in data["steps"]:
            s._apply(Step(primitive, tuple(args), tuple(sorted(kwargs.items()))))
        return s


PRIMITIVES: dict[str, Callable[..., object]] = {
    "split": loops.split,
    "tile": loops.tile,
    "collapse": loops.collapse,
    "reorder": lambda ctx, *names: loops.reorder(ctx, names),
    "unroll": loops.unroll,
    "vectorize": loops.vectorize,
    "parallelize": loops.parallelize,
    "tensorize": loops.tensorize,
    "prefetch": loops.prefetch,
    "nontemporal": loops.nontemporal,
    "specialize": loops.specialize,
    "rfactor": rfactor.rfactor,
    "bind": loops.bind,
    "fuse": fusion.fuse,
    "reuse": reuse.reuse,
    "compute_at": stages.compute_at,
    "inline": stages.inline,
    "cache": caching.cache,
}
