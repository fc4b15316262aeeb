"""PTX without a GPU: every test kernel and library kernel, under the default GPU
schedule, becomes PTX that `ptxas` accepts for sm_80 and sm_90."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from kdsl.targets.cuda import ptx as nvptx
from tests.targets.cuda.cases import cases

CASES = cases(np.random.default_rng(7))
needs_ptxas = pytest.mark.skipif(nvptx.ptxas_path() is None, reason="ptxas is not on PATH")


def assemble(text: str, sm: str) -> str:
    """ptxas' report on the PTX: sm_90's optimized as the driver would (its optimizer
    sees every kernel once), sm_80's only checked (a third of the time)."""
    return nvptx.assemble(text, sm, optimize=sm == "sm_90")


@needs_ptxas
@pytest.mark.parametrize("sm", ["sm_80", "sm_90"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_ptx_assembles(case, sm, monkeypatch):
    monkeypatch.setenv("KDSL_CUDA_ARCH", sm)
    text = case.kernel.ptx(*case.args)
    assert f".target {sm}" in text
    report = assemble(text, sm)
    assert "Compiling entry function" in report


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_host_side_of_the_call_builds(case, monkeypatch):
    """What the host keeps for each call (argument format, the written arrays, the
    shapes it allocates) is made from the compiled kernel, the schedule's own buffers
    included, without a GPU; the arrays the case writes are among those the call checks
    before writing."""
    monkeypatch.setenv("KDSL_CUDA_ARCH", "sm_90")
    kernel = case.kernel
    specs, _ = kernel._specs(case.args, {})
    traced = kernel.trace(specs)
    spec = kernel.build_cuda(traced, kernel.call_layout(specs, traced))
    names = kernel.signature.names
    assert {names[pos] for pos in case.expected if pos >= 0} <= set(spec.written)
    assert struct.calcsize(spec.format) == 8 * spec.count


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.name.startswith("lib_")], ids=lambda c: c.name
)
def test_library_launches_spread_over_blocks(case, monkeypatch):
    """No launch of a library kernel's GPU schedule is a single block walking the rows
    (a statement over rows left out of the fused nest runs so: layer norm's output did,
    500 times slower than PyTorch on an H200)."""
    monkeypatch.setenv("KDSL_CUDA_ARCH", "sm_90")
    specs, _ = case.kernel._specs(case.args, {})
    code = case.kernel.ptx_code(case.kernel.trace(specs))
    for launch in code.plan.launches:
        assert any(e is not None for e in launch.grid), f"launch {launch.index} is one block"


@needs_ptxas
@pytest.mark.parametrize("sm", ["sm_80", "sm_90"])
def test_large_tiles_go_to_dynamic_shared_memory(sm, monkeypatch):
    """Flash attention with D = 128 keeps its accumulator and scores (48 KB past its
    static 34 KB) in shared memory where the GPU lets a kernel opt in to that much, and
    the PTX declares the dynamic array; on an architecture without the table's opt-in
    they stay in global scratch."""
    from kdsl.kernels.attention import flash_kernel

    from kdsl.targets.cuda.plan import shared_limit

    monkeypatch.setenv("KDSL_CUDA_ARCH", sm)
    q = np.zeros((1, 2, 70, 128), np.float32)
    args = (q, q, q, np.empty_like(q), 0.1, 1, 128, False)
    specs, _ = flash_kernel._specs(args, {})
    code = flash_kernel.ptx_code(flash_kernel.trace(specs))
    (launch,) = code.plan.launches
    assert {t.buffer for t in launch.scratch("dynamic-shared")} == {"acc", "sT"}
    assert not launch.scratch("block-scratch")
    assert 48 * 1024 <= launch.dynamic_shared <= shared_limit(sm)
    assert ".extern .shared" in code.ptx
    assert "Compiling entry function" in assemble(code.ptx, sm)
    monkeypatch.setenv("KDSL_CUDA_ARCH", "sm_75")
    old = flash_kernel.ptx_code(flash_kernel.trace(specs)).plan.launches[0]
    assert old.dynamic_shared == 0 and old.scratch("block-scratch")


@needs_ptxas
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_flash_attention_of_16_bit_inputs_on_the_cuda_cores(dtype, monkeypatch):
    """flash_kernel on 16-bit inputs (the library's GPU attention takes bf16 of an odd
    head size there, which tensor cores don't; f16 when called directly): each key
    tile's keys and values are widened to f32 once, by the block's threads (a key row
    each), and the PTX assembles for sm_80 and sm_90."""
    import ml_dtypes
    from kdsl.kernels.attention import flash_kernel

    from kdsl.ir.printer import format_kernel
    from kdsl.kernel import cuda

    q = np.zeros((1, 2, 70, 21), getattr(ml_dtypes, dtype, None) or np.dtype(dtype))
    args = (q, q, q, np.empty(q.shape, np.float32), 0.2, 1, 21, True)
    specs, _ = flash_kernel._specs(args, {})
    scheduled = format_kernel(flash_kernel.scheduled(flash_kernel.trace(specs), cuda).kernel)
    copies = [
        line for line in scheduled.splitlines() if line.strip().startswith(("for kw", "for vw"))
    ]
    assert len(copies) == 4 and all("thread.x" in line for line in copies), copies
    for sm in ("sm_80", "sm_90"):
        monkeypatch.setenv("KDSL_CUDA_ARCH", sm)
        code = flash_kernel.ptx_code(flash_kernel.trace(specs))
        assert "Compiling entry function" in assemble(code.ptx, sm)


@needs_ptxas
def test_warps_tiles_past_48_kb_go_to_dynamic_shared_memory(monkeypatch):
    """Tensor-core flash attention with D = 128: its four warps' tiles (about 90 KB) are
    each warp's slice of dynamic shared memory, after the static part; sm_90 lets a
    block have that much, and the PTX assembles."""
    import ml_dtypes
    from kdsl.kernels.attention_tc import flash_mma_kernel

    from kdsl.targets.cuda.plan import SHARED_BYTES, shared_limit

    monkeypatch.setenv("KDSL_CUDA_ARCH", "sm_90")
    q = np.zeros((1, 1, 70, 128), ml_dtypes.bfloat16)
    args = (q, q, q, np.empty(q.shape, np.float32), 0.1, 1, 128, True)
    specs, _ = flash_mma_kernel._specs(args, {})
    code = flash_mma_kernel.ptx_code(flash_mma_kernel.trace(specs))
    (launch,) = code.plan.launches
    warps = launch.block[1] * launch.block[2]
    places = {t.place for t in launch.temps}
    assert warps == 4 and {"warp-shared", "warp-dynamic"} <= places
    static = sum(int(t.nbytes.value) for t in launch.scratch("warp-shared"))
    assert static <= SHARED_BYTES < static + launch.dynamic_shared <= shared_limit("sm_90")
    warps_copies = launch.scratch("warp-shared") + launch.scratch("warp-dynamic")
    assert all(int(t.nbytes.value) % warps == 0 for t in warps_copies)
    assert ".extern .shared" in code.ptx
    assert "Compiling entry function" in nvptx.assemble(code.ptx, "sm_90")
