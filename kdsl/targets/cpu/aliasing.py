"""Alias scopes on the loads and stores of array arguments (LLVM's `!alias.scope` and
`!noalias`), so that LLVM may keep a value loaded from one array in a register across a
store to another (reuse it, hoist it out of a loop), as kdsl's own vector code does
between fused statements (vector.py's `forget_written`): the scalar code and LLVM's
passes otherwise load `x[i, 0]` again after each store to `y`.

Sound because the entry refuses a written array that shares a byte with any other
argument (codegen's _check_aliasing, call.py's exact test where address ranges meet),
but for the same view of an array that one statement updates in place (Kernel.in_place):
such arrays share one scope, as any array does with itself. Results are new arrays that
the call allocates (call.py), so no argument can share their memory; a way to pass one
in (an `out=` for results) must bring them under the entry's test first. Temporaries
are left untagged: LLVM tells the kernel's own allocations apart where it sees them
made, though not in a parallel loop's task, which takes them from a closure (an
optimization missed there, never a wrong answer); so are other instructions (AMX and
dot-product intrinsics, prefetches), which keep LLVM's own answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llvmlite import ir

from kdsl.ir.nodes import BufferRole, Kernel

if TYPE_CHECKING:
    from kdsl.targets.cpu.codegen import _Codegen

# The intrinsics whose memory an annotation describes, and which argument is the address.
_ADDRESS_ARG = {
    "llvm.masked.load": 0,
    "llvm.masked.store": 1,
    "llvm.masked.gather": 0,
    "llvm.masked.scatter": 1,
}


def annotate_aliasing(gen: _Codegen) -> None:
    """Tag each load and store of an array parameter in `gen`'s function with its
    array's scope, and as not aliasing the other arrays' scopes."""
    groups = scope_groups(gen.kernel)
    if len(set(groups.values())) < 2:
        return  # (one array, or all one: nothing to tell apart)
    module = gen.fn.module
    domain = module.add_metadata([ir.MetaDataString(module, f"kdsl.{gen.kernel.name}")])
    scopes = {
        group: module.add_metadata(
            [ir.MetaDataString(module, f"kdsl.{gen.kernel.name}.{group}"), domain]
        )
        for group in sorted(set(groups.values()))
    }
    tags = {
        group: (
            module.add_metadata([scope]),
            module.add_metadata([s for g, s in scopes.items() if g != group]),
        )
        for group, scope in scopes.items()
    }
    bases = {
        id(gen.state.arrays[name].data): groups[name] for name in groups if name in gen.state.arrays
    }
    for block in gen.fn.blocks:
        for instr in block.instructions:
            group = _base(_address(instr), bases)
            if group is not None:
                scope, others = tags[group]
                instr.set_metadata("alias.scope", scope)
                instr.set_metadata("noalias", others)


def scope_groups(kernel: Kernel) -> dict[str, str]:
    """Each array argument's scope (parameters, and results: new arrays): its own name, or
    the first name of the arrays that one statement may update in place, one view of
    them all."""
    names = [b.name for b in kernel.buffers if b.role is not BufferRole.TEMP]
    group = {name: name for name in names}

    def root(name: str) -> str:
        while group[name] != name:
            name = group[name]
        return name

    for written, other in kernel.in_place:
        if written in group and other in group:
            a, b = sorted((root(written), root(other)))
            group[b] = a
    return {name: root(name) for name in names}


def _address(instr: ir.Instruction) -> ir.Value | None:
    """The address (or vector of addresses) that a memory instruction reads or writes."""
    if isinstance(instr, ir.LoadInstr):
        return instr.operands[0]
    if isinstance(instr, ir.StoreInstr):
        return instr.operands[1]
    if isinstance(instr, ir.CallInstr) and isinstance(instr.callee, ir.Function):
        name = instr.callee.name
        for prefix, position in _ADDRESS_ARG.items():
            if name.startswith(prefix + "."):
                return instr.args[position]
    return None


def _base(address: ir.Value | None, bases: dict[int, str]) -> str | None:
    """The scope of the array parameter whose data pointer `address` is computed from, by
    address arithmetic alone; None for anything else."""
    while address is not None:
        found = bases.get(id(address))
        if found is not None:
            return found
        if isinstance(address, ir.GEPInstr):
            address = address.pointer
        elif isinstance(address, ir.CastInstr) and address.opname in ("bitcast", "addrspacecast"):
            address = address.operands[0]
        elif isinstance(address, ir.SelectInstr) and _on_the_stack(address.operands[2]):
            address = address.operands[1]  # (the lanes that are off: vector.off_lanes_elsewhere)
        else:
            return None
    return None


def _on_the_stack(value: ir.Value) -> bool:
    """Whether `value` is an alloca's address, or a vector of it: memory no argument
    shares."""
    while True:
        if isinstance(value, ir.AllocaInstr):
            return True
        if isinstance(value, ir.ShuffleVector):
            value = value.operands[0]
        elif isinstance(value, ir.InsertElement):
            value = value.operands[1]
        else:
            return False
