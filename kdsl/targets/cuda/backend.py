"""The CUDA target's compiler entry: scheduled IR → launch plan → PTX, kept in the
object store (keyed by the scheduled IR's hash and the GPU architecture) so a new
process skips LLVM. Loading PTX onto a device is the driver's job (driver.py)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from kdsl.config import CONFIG
from kdsl.ir.flatten import flatten_rows
from kdsl.ir.hashing import source_locations, structural_hash
from kdsl.ir.nodes import Buffer, Kernel
from kdsl.targets.cpu.backend import expand
from kdsl.targets.cpu.codegen import ErrorSites
from kdsl.targets.cpu.objects import STORE, ObjectStore, object_key
from kdsl.targets.cuda import ptx as nvptx
from kdsl.targets.cuda.codegen import EntryParams, generate
from kdsl.targets.cuda.plan import Plan, plan, shared_limit


@dataclass(frozen=True)
class PtxCode:
    """A compiled GPU kernel: PTX text with one entry per launch, and how to call it."""

    ptx: str
    symbol: str  # entry n is f"{symbol}_{n}"
    sm: str
    plan: Plan
    params: EntryParams
    sites: ErrorSites
    buffers: tuple[Buffer, ...]  # the compiled kernel's: parameters, results, temporaries
    from_cache: bool = False

    @functools.cached_property
    def resources(self) -> str:
        """ptxas' report: registers, shared memory and spills of each entry."""
        return nvptx.assemble(self.ptx, self.sm)


def launches_of(
    scheduled: Kernel, sm: str, checks: bool = False, strict_fp: bool = False
) -> tuple[Kernel, Plan]:
    """The IR the code generator compiles (the schedule expanded, C-ordered rows
    addressed as runs where subscripts aren't checked) and its launches on `sm`."""
    final = expand(scheduled, strict_fp)
    if not checks:
        final = flatten_rows(final)
    return final, plan(final, shared_limit(sm))


def build_ptx(scheduled: Kernel, key: str, sm: str, checks: bool, strict_fp: bool) -> PtxCode:
    final, launches = launches_of(scheduled, sm, checks, strict_fp)
    symbol = f"kdsl_{scheduled.name}_{key[:12]}".replace(".", "_")
    module, sites, params = generate(final, launches, symbol, checks, strict_fp)
    sites.locations = source_locations(scheduled)
    ptx = nvptx.compile_ptx(module, sm)
    return PtxCode(ptx, symbol, sm, launches, params, sites, final.buffers)


def compile_ptx_kernel(
    scheduled: Kernel,
    checks: bool = False,
    strict_fp: bool = False,
    sm: str | None = None,
    store: ObjectStore = STORE,
) -> PtxCode:
    """PTX for scheduled IR, from the object store when it was built before."""
    sm = sm or nvptx.arch()
    key = object_key("cuda", structural_hash(scheduled), checks, strict_fp, sm)
    code = None if CONFIG.dump else store.load(key)
    if isinstance(code, PtxCode):
        return replace(code, from_cache=True, sites=code.sites.located_in(scheduled))
    code = build_ptx(scheduled, key, sm, checks, strict_fp)
    store.save(key, code)
    return code
