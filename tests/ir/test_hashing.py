"""structural_hash: equal for equal programs, blind to source locations, stable."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np

import kdsl as kd
from kdsl.errors import SourceLoc
from kdsl.ir.hashing import structural_hash
from kdsl.ir.nodes import (
    Buffer,
    BufferRole,
    Const,
    DimOf,
    Kernel,
    Load,
    Loop,
    LoopKind,
    LoopVar,
    Param,
    Scope,
    Store,
)
from kdsl.ir.visit import walk_stmts

F = np.float32
SOURCE = textwrap.dedent(
    """
    import kdsl as kd

    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * SCALE + 1.0
    """
)


def load_kernel(source: str, blank_lines: int = 0, filename: str = "<kernel>"):
    namespace: dict[str, object] = {}
    exec(compile("\n" * blank_lines + source, filename, "exec"), namespace)
    return namespace["k"]


def ir_of(kernel, dtype=F):
    return kernel.ir(np.ones(4, dtype), np.ones(4, dtype)).kernel


def test_hash_is_a_sha256_hex_digest():
    digest = structural_hash(ir_of(load_kernel(SOURCE.replace("SCALE", "2.0"))))
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_two_traces_of_one_kernel_hash_equal():
    k = load_kernel(SOURCE.replace("SCALE", "2.0"))
    first, second = ir_of(k), ir_of(k)
    assert first is not second
    assert structural_hash(first) == structural_hash(second)
    assert k.ir(np.ones(4, F), np.ones(4, F)).hash == structural_hash(first)


def test_changing_one_constant_changes_the_hash():
    a = ir_of(load_kernel(SOURCE.replace("SCALE", "2.0")))
    b = ir_of(load_kernel(SOURCE.replace("SCALE", "2.5")))
    assert structural_hash(a) != structural_hash(b)


def test_same_code_at_other_lines_hashes_the_same():
    a = ir_of(load_kernel(SOURCE.replace("SCALE", "2.0"), 0, "a.py"))
    b = ir_of(load_kernel(SOURCE.replace("SCALE", "2.0"), 40, "b.py"))
    store_a = [s for s in walk_stmts(a.body) if isinstance(s, Store)][0]
    store_b = [s for s in walk_stmts(b.body) if isinstance(s, Store)][0]
    assert (store_a.loc.file, store_b.loc.file) == ("a.py", "b.py")
    assert store_b.loc.line == store_a.loc.line + 40
    assert structural_hash(a) == structural_hash(b)


def test_reindented_code_hashes_the_same():
    indented = "if True:\n" + textwrap.indent(SOURCE.replace("SCALE", "2.0"), "    ")
    a = ir_of(load_kernel(SOURCE.replace("SCALE", "2.0")))
    b = ir_of(load_kernel(indented))
    assert structural_hash(a) == structural_hash(b)


def test_argument_dtypes_are_part_of_the_hash():
    k = load_kernel(SOURCE.replace("SCALE", "2.0"))
    assert structural_hash(ir_of(k, np.float32)) != structural_hash(ir_of(k, np.float64))


def test_kernel_name_is_part_of_the_hash():
    k = load_kernel(SOURCE.replace("SCALE", "2.0"))
    renamed = kd.kernel(k.fn, name="other")
    assert structural_hash(ir_of(k)) != structural_hash(ir_of(renamed))


def _helper_module(tmp_path, name: str, constant: str):
    path = tmp_path / f"{name}.py"
    path.write_text(
        textwrap.dedent(
            f"""
            import kdsl as kd

            def activation(v):
                return kd.maximum(v, {constant})
            """
        )
    )
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_helper_in_another_module_is_part_of_the_hash(tmp_path):
    def kernel_using(helper):
        @kd.kernel
        def k(x, y):
            i = kd.indices(x.shape[0])
            y[i] = helper.activation(x[i])

        return k

    relu = kernel_using(_helper_module(tmp_path, "kdsl_hash_helper_a", "0.0"))
    leaky = kernel_using(_helper_module(tmp_path, "kdsl_hash_helper_b", "0.01"))
    same = kernel_using(_helper_module(tmp_path, "kdsl_hash_helper_c", "0.0"))
    assert structural_hash(ir_of(relu)) != structural_hash(ir_of(leaky))
    assert structural_hash(ir_of(relu)) == structural_hash(ir_of(same))


# ------------------------------------------------------------------------ hand-built IR


def fill(value: float, loc: SourceLoc | None = None) -> Kernel:
    i = LoopVar("i")
    x = Buffer("x", kd.f32, (DimOf("x", 0),), BufferRole.PARAM, Scope.GLOBAL, loc=loc)
    store = Store("x", (i,), Const(value, kd.f32), loc=loc)
    loop = Loop("i", DimOf("x", 0), LoopKind.PARALLEL, (store,), loc=loc)
    return Kernel("fill", (Param("x", kd.f32, 1),), (x,), (loop,))


def test_hand_built_locations_do_not_matter():
    assert structural_hash(fill(1.0)) == structural_hash(fill(1.0, SourceLoc("f.py", 3, 1, 5)))


def test_negative_zero_is_a_different_program():
    assert structural_hash(fill(0.0)) != structural_hash(fill(-0.0))


def test_loop_kind_is_part_of_the_hash():
    k = fill(1.0)
    serial = Kernel(
        k.name, k.params, k.buffers, (Loop("i", DimOf("x", 0), LoopKind.SERIAL, k.body[0].body),)
    )
    assert structural_hash(k) != structural_hash(serial)


def test_hash_is_stable_across_processes():
    """No id(), set order or hash seed leaks into the digest."""
    code = (
        "from tests.ir.test_hashing import fill;"
        "from kdsl.ir.hashing import structural_hash;"
        "print(structural_hash(fill(1.5)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        cwd=__file__.rsplit("/tests/", 1)[0],
    )
    assert out.stdout.strip() == structural_hash(fill(1.5))


def test_load_locations_do_not_matter():
    a = Load("x", (LoopVar("i"),), kd.f32, loc=SourceLoc("a.py", 1))
    b = Load("x", (LoopVar("i"),), kd.f32, loc=SourceLoc("b.py", 99))
    k = fill(1.0)
    store_a = Kernel(
        k.name,
        k.params,
        k.buffers,
        (Loop("i", DimOf("x", 0), LoopKind.PARALLEL, (Store("x", (LoopVar("i"),), a),)),),
    )
    store_b = Kernel(
        k.name,
        k.params,
        k.buffers,
        (Loop("i", DimOf("x", 0), LoopKind.PARALLEL, (Store("x", (LoopVar("i"),), b),)),),
    )
    assert structural_hash(store_a) == structural_hash(store_b)
