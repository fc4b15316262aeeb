"""`@kd.kernel`: the user's function, its specializations, the call path and inspection."""

from __future__ import annotations

import difflib
import inspect
import operator
import os
import sysconfig
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from kdsl.arguments import Signature, check_examples, fast_key, host_views, spec_of
from kdsl.autotune.database import SavedConfig
from kdsl.autotune.gpu import tune_on
from kdsl.autotune.tuner import TuneReport, check_strategy, example_of
from kdsl.call_stats import CallStats
from kdsl.config import CONFIG, dumps
from kdsl.dispatch import CudaDispatch, TunedDispatch
from kdsl.errors import CompileError, KdslError, KernelArgumentError, ScheduleError, SourceLoc
from kdsl.ir.hashing import structural_hash
from kdsl.ir.nodes import Kernel
from kdsl.ir.passes import lower
from kdsl.ir.printer import format_kernel
from kdsl.schedule import recipe, user_function
from kdsl.schedule.default import default_schedule
from kdsl.schedule.recipe import Schedule
from kdsl.schedule.user_function import ScheduleFunction
from kdsl.specs import ArgExample
from kdsl.targets.cpu import jit
from kdsl.targets.cpu.amx import tile_instructions
from kdsl.targets.cpu.backend import compile_kernel
from kdsl.targets.cpu.call import CallLayout, Specialization
from kdsl.targets.cpu.vector import vector_obstacle
from kdsl.targets.cuda import driver
from kdsl.targets.cuda.arrays import fast_key as cuda_fast_key
from kdsl.targets.cuda.arrays import is_device
from kdsl.targets.cuda.backend import PtxCode, compile_ptx_kernel
from kdsl.targets.cuda.call import CudaSpecialization
from kdsl.targets.cuda.mma import tile_instructions as gpu_tile_instructions
from kdsl.targets.interp.interpreter import interpret
from kdsl.trace.bindings import Bindings
from kdsl.trace.tracer import ArgSpec, ArraySpec, ScalarSpec, exact_key, trace

# the constexpr values the fast call path keys on (matmul's activation="gelu" and None
# took the careful path: 60-80 us more a call)
_FAST_CONSTANTS = frozenset({int, float, bool, str, type(None)})

TILE_INSTRUCTIONS = {"cpu": tile_instructions, "cuda": gpu_tile_instructions}  # `s.has`
recipe.target_tile_instructions.update(TILE_INSTRUCTIONS)  # for Schedule.replay

GpuCall = CudaSpecialization | CudaDispatch
Compiled = Specialization | TunedDispatch | GpuCall  # serves one signature

AUTOTUNE_BUDGET_S = 20.0  # per new shape, for @kd.kernel(autotune=True)


def _autotune_budget(autotune: bool | float, name: str) -> float:
    if autotune is True:
        return AUTOTUNE_BUDGET_S
    if autotune is False or autotune is None:
        return 0.0
    if isinstance(autotune, int | float) and autotune > 0:
        return float(autotune)
    raise KernelArgumentError(
        f"autotune={autotune!r} is neither a bool nor a positive budget in seconds",
        kernel=name,
        fix="write @kd.kernel(autotune=True) or @kd.kernel(autotune=30)",
    )


class Target:
    """Where a kernel runs: `kd.cpu` or `kd.cuda`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"kd.{self.name}"

    def __reduce__(self) -> str:
        return self.name  # (pickled and copied as the module's own: `is kd.cpu` holds)


class CpuTarget(Target):
    """The host CPU (`kd.cpu`), with the facts a schedule or a library function sizes its
    tiles by."""

    def cache_bytes(self, level: int | None = None) -> int:
        """The data cache at `level` (1, 2, 3, …; None: the last level, the largest) in
        bytes, as Linux reports it for the first CPU: an L1 or L2 is usually a core's own,
        an L3 the whole cache a group of cores shares. Where Linux reports no L1 or L2,
        32 KiB and 1 MiB; a level past the last one (an L3 on a CPU with two) is the last
        one; KdslError for anything but a positive integer or None."""
        sizes = jit.cache_bytes()
        if level is None:
            return max(sizes.values())
        try:
            n = operator.index(level)
        except TypeError:
            n = 0
        if n < 1 or isinstance(level, bool):
            raise KdslError(
                f"kd.cpu.cache_bytes({level!r}): a cache level is 1, 2 or 3 (or None)",
                fix="ask for level 1, 2 or 3, or leave it out for the last level",
            )
        if n in sizes:
            return sizes[n]
        if n < 3:
            return jit.DEFAULT_CACHE_BYTES[n]
        below = [size for m, size in sizes.items() if m < n]
        return max(below, default=jit.DEFAULT_CACHE_BYTES[3])


cpu = CpuTarget("cpu")
cuda = Target("cuda")


class IRView:
    """Printable IR: text in a terminal, a <pre> block in a notebook."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def __str__(self) -> str:
        return format_kernel(self.kernel)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(str(self))}</pre>"

    @property
    def hash(self) -> str:
        return structural_hash(self.kernel)


class KernelFunction:
    """A Python function compiled by kdsl on first call for each argument signature."""

    def __init__(
        self,
        fn: Callable[..., object],
        *,
        static_shapes: bool = False,
        checks: bool | None = None,
        strict_fp: bool = False,
        name: str | None = None,
        examples: Sequence[Mapping[str, ArgExample]] | None = None,
        autotune: bool | float = False,
    ) -> None:
        if not (inspect.isfunction(inspect.unwrap(fn)) or inspect.ismethod(fn)):
            raise KernelArgumentError(
                f"kd.kernel decorates a Python function (def or lambda), not {fn!r}",
                fix="write the kernel as a def and put @kd.kernel above it",
            )
        params = list(inspect.signature(fn).parameters)
        if inspect.isfunction(fn) and params[:1] == ["self"]:  # decorated in a class body
            raise KernelArgumentError(
                f"kd.kernel on a method ('{fn.__name__}' takes self): a kernel is a function "
                "of arrays and numbers, and a call through an object would pass it as one",
                kernel=fn.__name__,
                fix="define the kernel outside the class (or under @staticmethod, without "
                "self) and call it from a method, passing what it needs from self as arguments",
            )
        self.fn = fn
        self.name = name or fn.__name__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.static_shapes = static_shapes
        self.checks = CONFIG.debug if checks is None else checks
        self.strict_fp = strict_fp
        self.signature = Signature.of(fn, self.name)
        self.examples = check_examples(examples or [], self.signature)
        self.autotune_budget = _autotune_budget(autotune, self.name)
        self._fast: dict[tuple[object, ...], Compiled] = {}
        self._fast_cuda: dict[tuple[object, ...], GpuCall] = {}
        self._by_spec: dict[tuple[ArgSpec, ...], Compiled] = {}
        self._bindings: Bindings | _AnyOf | None = None  # the globals the compiled code read
        # the last traced IR's schedule under its default params, with the IR and target:
        # a first call asks for its search space (the tuning lookup), then compiles it
        self._default: tuple[Kernel, str, Schedule] | None = None
        self._lock = threading.RLock()
        self._fast_ok = not static_shapes
        self._constexpr_pos = tuple(
            n for n, name in enumerate(self.signature.names) if name in self.signature.constexpr
        )
        self._no_constexprs = not self._constexpr_pos
        self._arity = len(self.signature.names)
        self._stats = CallStats()
        self._calls = self._stats.counts  # (the fast path counts its call here)
        # shape → where its schedule params came from (for the thread count that chose them)
        self.tuning: dict[str, str] = {}
        self._schedules: dict[str, ScheduleFunction] = {}

    def __repr__(self) -> str:
        return f"<kdsl kernel {self.signature}>"

    def schedule(self, target: Target = cpu) -> Callable[[ScheduleFunction], Any]:
        """Attach a schedule for `target`: `@kernel.schedule(kd.cpu) def _(s): ...`."""
        if not isinstance(target, Target):
            raise TypeError(f"{target!r} is not a kdsl target; use kd.cpu or kd.cuda")

        def attach(fn: ScheduleFunction) -> ScheduleFunction:
            user_function.check_attached(fn, self.name)
            with self._lock:
                self._schedules[target.name] = fn
                self._forget()  # (its globals are watched from the next compile on)
            return fn

        return attach

    def scheduled(
        self,
        kernel: Kernel,
        target: Target = cpu,
        config: Mapping[str, object] | None = None,
        heuristic: bool = False,
    ) -> Schedule:
        """Apply this kernel's schedule for `target`, with tunables set from `config`, to
        traced IR; the default (heuristic) schedule when it has none or `heuristic`. A
        param that `config` leaves out takes its first choice, but a config from the
        tuning database that leaves out one of the search space's is refused (a
        ScheduleError): an edited or cut tuning file, not what the autotuner measured."""
        s = Schedule(
            lower(kernel),
            target=target.name,
            strict_fp=self.strict_fp,
            checks=self.checks,
            config=config,
            vector_check=vector_obstacle if target is cpu else None,
            tile_instructions=TILE_INSTRUCTIONS.get(target.name, frozenset),
        )
        fn = None if heuristic else self._schedules.get(target.name)
        user_function.run(fn or default_schedule, s)
        if (
            fn is not None
            and isinstance(config, SavedConfig)
            and any(n not in config for n in s.space)
        ):
            self._check_complete(kernel, target, config)
        return s

    def _check_complete(self, kernel: Kernel, target: Target, config: Mapping[str, object]) -> None:
        """Refuse a config that lacks a param of the search space (a param that only a
        choice of another one reaches is not in it, and may be left out)."""
        space = self.scheduled(kernel, target).space
        missing = [name for name in space if name not in config]
        if missing:
            given = ", ".join(f"{k}={v!r}" for k, v in config.items())
            raise ScheduleError(
                f"the configured params ({given}) give no value for "
                + ", ".join(f"'{name}' (one of {list(space[name])})" for name in missing)
                + ": an incomplete config (an edited or partial tuning file?)",
                kernel=self.name,
                fix="tune again (`kdsl autotune`), or give every param in the file",
            )

    def search_space(self, kernel: Kernel, target: Target = cpu) -> dict[str, tuple[object, ...]]:
        """The schedule's tunable params and their choices ({} without a schedule)."""
        if target.name not in self._schedules:
            return {}
        return dict(self._scheduled_by_default(kernel, target).space)

    def scheduled_ir(
        self, kernel: Kernel, config: Mapping[str, object] | None = None, heuristic: bool = False
    ) -> Kernel:
        """Traced IR with the schedule applied: what the target compiles (it expands the
        schedule's vector, unroll and tile annotations itself)."""
        if config is None and not heuristic:
            return self._scheduled_by_default(kernel, cpu).kernel
        return self.scheduled(kernel, config=config, heuristic=heuristic).kernel

    def _scheduled_by_default(self, kernel: Kernel, target: Target) -> Schedule:
        """scheduled(kernel, target), kept for the last IR asked about (the object itself:
        each trace makes a new one): a call's tuning lookup, then its compile, apply the
        schedule once (it took 7% of compiling four library kernels a second time)."""
        with self._lock:  # (_forget drops it under the lock)
            last = self._default
            if last is not None and last[0] is kernel and last[1] == target.name:
                return last[2]
            s = self.scheduled(kernel, target)
            self._default = (kernel, target.name, s)
            return s

    def __getitem__(self, target: Target) -> Callable[..., object]:
        """`kernel[kd.cpu](...)` or `kernel[kd.cuda](...)`: run on that target."""
        if not isinstance(target, Target):
            raise TypeError(f"{target!r} is not a kdsl target; use kd.cpu or kd.cuda")
        return lambda *args, **kwargs: self._call_on(target, args, kwargs)

    def __call__(self, *args: object, **kwargs: object) -> object:
        """Run the kernel where its arrays live: the CPU for NumPy arrays, the GPU for
        CUDA arrays (PyTorch, CuPy, any `__cuda_array_interface__` or DLPack array)."""
        self._calls["calls"] += 1
        bindings = self._bindings  # (inline: every cached call asks)
        if bindings is not None and bindings.changed():
            self._forget()
        try:
            # the common call first, inline (through another method it took 0.5 µs more):
            # NumPy arrays and numbers, by position, of a signature seen before
            # (static_shapes keeps `_fast` empty)
            if not kwargs and len(args) == self._arity:
                key = fast_key(args) if self._no_constexprs else self._fast_key(args, fast_key)
                spec = self._fast.get(key)
                if spec is not None:
                    return spec.run(args)
            return self._other_call(args, kwargs, None)
        except KdslError as err:
            raise self._failed(err) from None
        except BaseException:  # (the user's own error, its traceback as Python tells it)
            self._stats.failed()
            raise

    def _call_on(self, target: Target, args: Sequence[object], kwargs: dict[str, object]) -> object:
        """`kernel[target](...)`: __call__ with the target forced."""
        self._calls["calls"] += 1
        bindings = self._bindings
        if bindings is not None and bindings.changed():
            self._forget()
        try:
            return self._other_call(args, kwargs, target)
        except KdslError as err:
            raise self._failed(err) from None
        except BaseException:
            self._stats.failed()
            raise

    def _failed(self, err: KdslError) -> KdslError:
        """A call raised `err`: counted (no cache hit), and the error to raise, with the
        user's call as the last frame shown."""
        self._stats.failed()
        return err if CONFIG.debug else err.with_traceback(None)

    def _other_call(
        self, args: Sequence[object], kwargs: dict[str, object], target: Target | None
    ) -> object:
        """A call of parameters named or left to their defaults, of CUDA arrays or PyTorch
        tensors, or of a new signature: the fast path's other forms, else the careful one."""
        if (kwargs or len(args) < self._arity) and self._fast_ok:
            args, kwargs = self._positional(args, kwargs)
        if not kwargs and self._fast_ok and len(args) == self._arity:
            key = self._fast_key(args, fast_key) if target is not cuda else None
            if key is not None:
                spec = self._fast.get(key)
                if spec is not None:
                    return spec.run(args)
            elif target is not cpu and (key := self._fast_key(args, cuda_fast_key)) is not None:
                gpu = self._fast_cuda.get(key)
                if gpu is not None:
                    return gpu.run_tensors(args)
            if key is None and target is not cuda and (host := host_views(args)) is not None:
                spec = self._fast.get(self._fast_key(host, fast_key))  # (CPU tensors)
                if spec is not None:
                    return spec.run(host)
        return self._careful_call(args, kwargs, target)

    def _careful_call(
        self, args: Sequence[object], kwargs: dict[str, object], target: Target | None
    ) -> object:
        """A call the fast path did not take: it may compile (counted, for stats())."""
        with self._stats.slow_path():
            stream = kwargs.pop("stream", None) if "stream" not in self.signature.names else None
            call, bound = self._specialize(args, kwargs, target)
            if isinstance(call, CudaSpecialization | CudaDispatch):
                return call.run(bound, stream)
            if stream is not None:
                raise self.signature.error(
                    "stream= was given, but this call runs on the CPU",
                    "pass stream= only with CUDA arrays",
                )
            return call.run(bound)

    # ----------------------------------------------------------- specialization

    def _positional(
        self, args: Sequence[object], kwargs: dict[str, object]
    ) -> tuple[Sequence[object], dict[str, object]]:
        """A call with the parameters after the positional ones named or left to their
        defaults, as all positional (what the fast path takes: a constexpr left to its
        default took the careful path, 2-3x the call's cost); as given when it names
        others or leaves out one without a default."""
        names, defaults = self.signature.names, self.signature.defaults
        rest = names[len(args) :]
        if any(n not in rest for n in kwargs):  # a name that is not a parameter, or given twice
            return args, kwargs
        if any(n not in kwargs and n not in defaults for n in rest):
            return args, kwargs
        return (*args, *(kwargs[n] if n in kwargs else defaults[n] for n in rest)), {}

    def _forget_if_rebound(self) -> None:
        bindings = self._bindings
        if bindings is not None and bindings.changed():
            self._forget()

    def _forget(self) -> None:
        """Drop every compiled signature: a global or closure variable that the traces or
        the schedules read is now another value (a notebook cell redefined a helper or a
        constant), so the next call traces again and every signature sees the same
        values."""
        with self._lock:
            self._by_spec.clear()
            self._fast.clear()
            self._fast_cuda.clear()
            self._bindings = None
            self._default = None

    def _fast_key(
        self, args: Sequence[object], keyer: Callable[[Sequence[object]], tuple[object, ...] | None]
    ) -> tuple[object, ...] | None:
        """The fast path's key: `keyer`'s (array kinds and scalar types) plus the values of
        the constexpr arguments (by type and exact value, as ConstSpec compares them), which
        pick the specialization; None for the careful path (a constexpr other than a Python
        number, string or None among them: values whose equality is their identity as a
        key, unlike a tuple holding any object or an instance of the user's class)."""
        key = keyer(args)
        if key is None or not self._constexpr_pos:
            return key
        if len(args) != self._arity:  # a constexpr left to its default
            return None
        values = []
        for n in self._constexpr_pos:
            v = args[n]
            t = type(v)
            if t not in _FAST_CONSTANTS:
                return None
            values.append(exact_key(v))  # -0.0 is not 0.0 here
        return key + tuple(values)

    def _specs(
        self, args: Sequence[object], kwargs: dict[str, object]
    ) -> tuple[tuple[ArgSpec, ...], list[object]]:
        return self._specs_of(self.signature.bind(args, dict(kwargs)))

    def _specs_of(self, bound: Sequence[object]) -> tuple[tuple[ArgSpec, ...], list[object]]:
        """The trace specs of bound arguments, and the values to pass."""
        specs, values = [], []
        for name, value in zip(self.signature.names, bound):
            spec, passed = spec_of(name, value, self.signature, self.static_shapes)
            specs.append(spec)
            values.append(passed)
        return tuple(specs), values

    def _target_of(self, bound: Sequence[object], forced: Target | None) -> Target:
        """Where the call runs: the forced target, else where its arrays live; mixing
        host and device arrays is an error that says how to move them."""
        on_gpu, on_host = [], []
        for name, v in zip(self.signature.names, bound):
            if name in self.signature.constexpr:
                continue
            if is_device(v):
                on_gpu.append(name)
            elif isinstance(v, np.ndarray) or hasattr(v, "__dlpack__"):
                on_host.append(name)
        if forced is None and on_gpu and on_host:
            raise self.signature.error(
                f"the arguments mix devices: '{on_gpu[0]}' is a CUDA array and "
                f"'{on_host[0]}' a host array",
                "put them on one side: on the host (tensor.cpu(), cupy.asnumpy(x)) or on "
                "the GPU (torch.as_tensor(x, device='cuda'), cupy.asarray(x))",
            )
        target = forced or (cuda if on_gpu else cpu)
        if target is cuda:
            driver.require()  # first: moving arrays to a GPU needs CUDA (say what is missing)
        if target is cpu and on_gpu:
            raise self.signature.error(
                f"argument '{on_gpu[0]}' is a CUDA array, but this call runs on the CPU",
                "move it to the host first (e.g. tensor.cpu() or cupy.asnumpy(x))",
            )
        if target is cuda and on_host:
            raise self.signature.error(
                f"argument '{on_host[0]}' is a host array, but this call runs on the GPU",
                "move it to the GPU first (e.g. torch.as_tensor(x, device='cuda') or "
                "cupy.asarray(x))",
            )
        return target

    def _specialize(
        self, args: Sequence[object], kwargs: dict[str, object], target: Target | None = None
    ) -> tuple[Compiled, list[object]]:
        self._forget_if_rebound()
        bound_args = self.signature.bind(args, dict(kwargs))
        target = self._target_of(bound_args, target)
        specs, bound = self._specs_of(bound_args)
        key = (target.name, specs) if target is cuda else specs
        spec = self._by_spec.get(key)  # type: ignore[arg-type]
        if spec is None:
            with self._lock:
                spec = self._by_spec.get(key) or self._compile(specs, target)  # type: ignore[arg-type]
                self._by_spec[key] = spec  # type: ignore[index]
        if target is cuda:
            if (
                self._fast_ok
                and not kwargs
                and (fast := self._fast_key(args, cuda_fast_key)) is not None
            ):
                self._fast_cuda[fast] = spec  # type: ignore[assignment]
            return spec, bound
        if self._fast_ok and not kwargs:
            # a CPU tensor is keyed as the NumPy view it is passed as (host_views)
            viewed = [b if type(a).__module__ == "torch" else a for a, b in zip(args, bound)]
            key = self._fast_key(viewed, fast_key)
            if key is not None:
                self._fast[key] = spec
        return spec, bound

    def trace(self, specs: tuple[ArgSpec, ...]) -> Kernel:
        named = list(zip(self.signature.names, specs))
        kernel = trace(self.fn, self.name, named)
        if dumps("trace"):
            print(format_kernel(kernel))
        return kernel

    def _compile(self, specs: tuple[ArgSpec, ...], target: Target = cpu) -> Compiled:
        """The compiled code for one signature; a dispatcher over tuned variants when the
        tuning database has results for it (or `autotune=` asks to make them)."""
        try:
            traced = self.trace(specs)
            if self._bindings is None:  # (after the trace: what a helper set in it stays)
                self._bindings = self._watch()
            layout = self.call_layout(specs, traced)
            if target is cuda:
                found = CudaDispatch.find(self, specs, traced, layout)
                return found or self.build_cuda(traced, layout)
            dispatch = TunedDispatch.find(self, specs, traced, layout)
            return dispatch or self.build(traced, layout)
        except RecursionError as exc:  # kdsl's passes recurse into expressions
            if not _raised_in_kdsl(exc):
                raise  # the user's own recursion, as Python tells it
            code = getattr(inspect.unwrap(self.fn), "__code__", None)
            raise CompileError(
                "an expression is nested too deeply for kdsl's compiler (each operation "
                "built in a Python loop nests the expression one level deeper)",
                kernel=self.name,
                loc=code and SourceLoc(code.co_filename, code.co_firstlineno),
                fix="loop with kd.range instead, or keep the chain's value in a local every "
                "few dozen operations (`v = kd.local(v)`, in a kd.grid/kd.range loop)",
            ) from None

    def shape_free(self, specs: tuple[ArgSpec, ...], traced: Kernel) -> Kernel:
        """`traced` as it is for any shape: under static_shapes, traced again with the
        shapes left symbolic (what tuning results are filed under, so that the nearest
        tuned shape serves a new one, as it does without static_shapes)."""
        if not self.static_shapes:
            return traced
        return self.trace(
            tuple(replace(s, shape=None) if isinstance(s, ArraySpec) else s for s in specs)
        )

    def _watch(self) -> Bindings | _AnyOf | None:
        """The outside names that the kernel's code and its schedules read (a schedule's
        `TILE` is baked into the code as much as the kernel's `SCALE`): a call after one
        is rebound compiles again. None when they read none."""
        watched = [b for f in (self.fn, *self._schedules.values()) if (b := Bindings(f))]
        if len(watched) > 1:
            return _AnyOf(watched)
        return watched[0] if watched else None

    def call_layout(self, specs: tuple[ArgSpec, ...], traced: Kernel) -> CallLayout:
        array_pos = tuple(n for n, s in enumerate(specs) if isinstance(s, ArraySpec))
        scalar_pos = tuple(n for n, s in enumerate(specs) if isinstance(s, ScalarSpec))
        buffers = {b.name: b for b in traced.buffers}
        results = tuple((buffers[r].shape, buffers[r].dtype.to_numpy()) for r in traced.results)
        return CallLayout(array_pos, scalar_pos, self.signature.names, results)

    def build(
        self, traced: Kernel, layout: CallLayout, config: Mapping[str, object] | None = None
    ) -> Specialization:
        """Compile (or load from the object cache) one version of the kernel."""
        compiled = compile_kernel(
            self.scheduled_ir(traced, config), checks=self.checks, strict_fp=self.strict_fp
        )
        self._stats.compiled(compiled.from_cache)
        return layout.specialization(self.name, traced, compiled)

    def ptx_code(self, traced: Kernel, config: Mapping[str, object] | None = None) -> PtxCode:
        """PTX for traced IR under this kernel's CUDA schedule (no GPU needed)."""
        scheduled = (
            self.scheduled(traced, cuda, config)
            if config is not None
            else self._scheduled_by_default(traced, cuda)
        ).kernel
        code = compile_ptx_kernel(scheduled, checks=self.checks, strict_fp=self.strict_fp)
        self._stats.compiled(code.from_cache)
        return code

    def build_cuda(
        self, traced: Kernel, layout: CallLayout, config: Mapping[str, object] | None = None
    ) -> CudaSpecialization:
        code = self.ptx_code(traced, config)
        return CudaSpecialization(
            self.name, traced, code, layout.array_pos, layout.scalar_pos, layout.param_names
        )

    # --------------------------------------------------------------- inspection

    def _spec_for(self, args: Sequence[object], kwargs: dict[str, object]) -> Specialization:
        try:
            call, bound = self._specialize(args, kwargs)
            return call.variant(bound) if isinstance(call, TunedDispatch) else call
        except KdslError as err:
            raise (err if CONFIG.debug else err.with_traceback(None)) from None

    def _traced(
        self, args: Sequence[object], kwargs: dict[str, object]
    ) -> tuple[Kernel, list[object]]:
        try:
            specs, bound = self._specs(args, kwargs)
            return self.trace(specs), bound
        except KdslError as err:
            raise (err if CONFIG.debug else err.with_traceback(None)) from None

    def ir(self, *args: object, **kwargs: object) -> IRView:
        """The traced IR for these arguments (printable; shown as HTML in notebooks)."""
        traced = self._traced(args, kwargs)[0]
        recipe.traced_kernels.add(traced)  # Schedule.replay onto it lowers it first
        return IRView(traced)

    def lowered(self, *args: object, **kwargs: object) -> IRView:
        """The IR after scheduling and lowering, as the target compiles it."""
        try:
            return IRView(self._spec_for(args, kwargs).compiled.final)
        except KdslError as err:
            raise (err if CONFIG.debug else err.with_traceback(None)) from None

    def schedule_of(self, *args: object, **kwargs: object) -> Schedule:
        """The schedule applied for these arguments, with their tuned params if any: prints
        as steps, `.to_json()` saves it."""
        try:
            call, bound = self._specialize(args, kwargs)
            if isinstance(call, TunedDispatch):
                return self.scheduled(call.traced, config=call.config(bound))
            if isinstance(call, CudaDispatch):
                return self.scheduled(call.traced, cuda, call.config(bound))
            return self.scheduled(call.ir, cuda if isinstance(call, CudaSpecialization) else cpu)
        except KdslError as err:
            raise (err if CONFIG.debug else err.with_traceback(None)) from None

    def llvm(self, *args: object, optimized: bool = True, **kwargs: object) -> str:
        """LLVM IR for these arguments (after LLVM's optimizations unless optimized=False)."""
        compiled = self._spec_for(args, kwargs).compiled
        return compiled.optimized_ir if optimized else compiled.llvm_ir

    def asm(self, *args: object, **kwargs: object) -> str:
        """The host assembly for these arguments."""
        return self._spec_for(args, kwargs).compiled.asm

    def ptx(self, *args: object, **kwargs: object) -> str:
        """The PTX of the kernel's CUDA schedule for these arguments' signature (host or
        device arrays; no GPU needed: the architecture is the device's, KDSL_CUDA_ARCH's
        or sm_80)."""
        traced, _ = self._traced(args, kwargs)
        try:
            return self.ptx_code(traced).ptx
        except KdslError as err:
            err = err.with_kernel(self.name)
            raise (err if CONFIG.debug else err.with_traceback(None)) from None

    def interpret(self, *args: object, **kwargs: object) -> object:
        """Run the kernel in the reference interpreter (slow, exact): the oracle for tests."""
        traced, bound = self._traced(args, kwargs)
        kernel = lower(traced)
        named = {p.name: bound[self.signature.names.index(p.name)] for p in kernel.params}
        try:
            results = interpret(kernel, named)
        except KdslError as err:
            err = err.with_kernel(self.name)
            raise (err if CONFIG.debug else err.with_traceback(None)) from None
        if not results:
            return None
        return results[0] if len(results) == 1 else tuple(results)

    # ----------------------------------------------------------------- tuning

    def autotune(
        self,
        *args: object,
        budget: float = 60.0,
        strategy: str = "auto",
        jobs: int | None = None,
        progress: bool = True,
        target: Target | None = None,
        **kwargs: object,
    ) -> list[TuneReport]:
        """Tune this kernel's schedule params and record the best in the tuning database.

        With arguments, tune for their shapes and dtypes (`k.autotune(a, b, c)`); without,
        for each of the kernel's declared `examples`. `budget` is in seconds per example.
        `target=kd.cuda` tunes the CUDA schedule on the GPU. Later calls (in any process)
        use the results; see `kdsl cache list`.
        """
        options = {"budget", "strategy", "jobs", "progress", "target"}
        clash = [n for n in self.signature.names[len(args) :] if n in options and n not in kwargs]
        if (args or kwargs) and clash:
            raise KernelArgumentError(
                f"parameter(s) {', '.join(clash)} share a name with autotune's options",
                kernel=self.name,
                fix="pass the kernel's arguments by position",
            )
        if args or kwargs:
            bound = self.signature.bind(args, dict(kwargs))
            examples = [example_of(self.signature.names, tuple(bound))]
        elif self.examples:
            examples = list(self.examples)
        else:
            raise KernelArgumentError(
                "autotune() needs example arguments: none were given and the kernel "
                "declares no examples",
                kernel=self.name,
                fix=f"call {self.name}.autotune(...) with arrays, or declare "
                "@kd.kernel(examples=[{...}])",
            )
        if target is not None and not isinstance(target, Target):
            raise KernelArgumentError(
                f"autotune target={target!r} is not a kdsl target",
                kernel=self.name,
                fix="pass target=kd.cpu or target=kd.cuda, or leave it out (the CPU)",
            )
        check_strategy(strategy, self.name)
        where = (target or cpu).name
        reports = [
            tune_on(
                where, self, e, budget_s=budget, strategy=strategy, jobs=jobs, progress=progress
            )
            for e in examples
        ]
        with self._lock:  # new results: signatures look them up again
            self._fast.clear()
            self._fast_cuda.clear()
            self._by_spec.clear()
        return reports

    def stats(self) -> dict[str, object]:
        """Calls; compilations (versions built: traced, scheduled and compiled) and how
        many of those loaded their machine code from the cache directory instead of
        running LLVM; specializations; and where each tuned shape's schedule params came
        from: makes recompiles and tuning misses visible."""
        return {
            **self._stats.counts,
            "specializations": len(self._by_spec),
            "cache_hits": self._stats.cache_hits(),
            "tuning": dict(self.tuning),
        }


class _AnyOf:
    """Several functions' `Bindings` as one: changed when any of them is."""

    __slots__ = ("_parts",)

    def __init__(self, parts: list[Bindings]) -> None:
        self._parts = parts

    def changed(self) -> bool:
        return any(b.changed() for b in self._parts)


def _raised_in_kdsl(exc: BaseException) -> bool:
    """`exc` (a RecursionError) comes from kdsl's code recursing, not the user's: most of
    the innermost frames that are not the standard library's are kdsl's (the standard
    library's are left out: kdsl's recursion may hit the limit inside dataclasses)."""
    frames = [
        f.filename
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith(_STDLIB)
    ][-100:]
    ours = sum(name.startswith(_KDSL_DIR + os.sep) for name in frames)
    return ours > len(frames) - ours


_KDSL_DIR = os.path.dirname(os.path.abspath(__file__))
_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep


def kernel(fn: Callable[..., object] | None = None, **options: Any) -> Any:
    """Decorate a function to make it a kdsl kernel: `@kd.kernel` or `@kd.kernel(...)`.

    Options: static_shapes (bake shapes in), checks (bounds checks with the source line;
    default on under KDSL_DEBUG=1), strict_fp (forbid reassociating reductions), name,
    examples (example calls for `kdsl autotune`: a list of {param: kd.spec(...) or a
    number}), autotune (True, or a budget in seconds: a call whose shape has no tuning
    result tunes it first).
    """
    known = list(inspect.signature(KernelFunction.__init__).parameters)[2:]
    for option in options:
        if option not in known:
            close = difflib.get_close_matches(option, known, n=1)
            raise KernelArgumentError(
                f"kd.kernel has no option {option!r}",
                fix=(f"did you mean {close[0]!r}? " if close else "")
                + f"the options are {', '.join(known)}",
            )
    if fn is None:
        return lambda f: KernelFunction(f, **options)
    return KernelFunction(fn, **options)
