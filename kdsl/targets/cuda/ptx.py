"""LLVM's NVPTX back end through llvmlite: the GPU architecture to build for, the
optimization pipeline, PTX text, and `ptxas` to check it where a toolkit is installed."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import threading

import llvmlite.binding as llvm
from llvmlite import ir

from kdsl.config import cuda_arch
from kdsl.errors import CompileError

TRIPLE = "nvptx64-nvidia-cuda"
DEFAULT_ARCH = "sm_80"  # without a device or KDSL_CUDA_ARCH: runs on Ampere and later
PTX_FEATURES = "+ptx80"  # PTX ISA 8.0 (CUDA 12.0): every driver kdsl supports loads it
# what kdsl builds for: the architectures of PTX ISA 8.0 from CUDA 12's oldest (LLVM
# stops the process on a newer one). A newer GPU gets sm_90's PTX, which its driver
# compiles for it (PTX runs on later GPUs; sm_90a's, made for Hopper alone, does not).
ARCHS = (
    *("sm_50", "sm_52", "sm_53", "sm_60", "sm_61", "sm_62", "sm_70", "sm_72", "sm_75"),
    *("sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_90a"),
)
NEWEST_PORTABLE = "sm_90"

_lock = threading.Lock()


def arch() -> str:
    """The `sm_XX` to build for: KDSL_CUDA_ARCH (one of ARCHS, `90` for sm_90 too; a
    CompileError if not), else the current device's (sm_90 for one newer than ARCHS),
    else sm_80."""
    forced = cuda_arch()
    if forced:
        sm = forced if forced.startswith("sm_") else f"sm_{forced}"
        if sm not in ARCHS:
            raise CompileError(
                f"KDSL_CUDA_ARCH={forced!r} is not a GPU architecture kdsl builds for",
                fix=f"set it to one of {', '.join(ARCHS)} ({NEWEST_PORTABLE} for a newer "
                "GPU: its driver compiles that PTX for it), or unset it to build for this "
                f"machine's GPU ({DEFAULT_ARCH} without one)",
            )
        return sm
    from kdsl.targets.cuda import driver

    device = driver.device_arch()
    if device is None:
        return DEFAULT_ARCH
    newer = device not in ARCHS and int(device.removeprefix("sm_")) > 90
    return NEWEST_PORTABLE if newer else device


@functools.cache
def target_machine(sm: str) -> llvm.TargetMachine:
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    target = llvm.Target.from_triple(TRIPLE)
    return target.create_target_machine(cpu=sm, features=PTX_FEATURES, opt=3)


def compile_ptx(module: ir.Module, sm: str) -> str:
    """Verify, optimize (O3) and emit PTX for `sm`."""
    tm = target_machine(sm)
    with _lock:  # one LLVM context user at a time
        try:
            ref = llvm.parse_assembly(str(module))
            ref.verify()
        except RuntimeError as exc:
            raise CompileError(
                f"LLVM rejected the generated GPU code: {exc}",
                fix="this is a kdsl bug; please report it with the kernel's source",
            ) from exc
        ref.triple = TRIPLE
        ref.data_layout = str(tm.target_data)
        pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
        pb.getModulePassManager().run(ref, pb)
        return str(tm.emit_assembly(ref))


def ptxas_path() -> str | None:
    return shutil.which("ptxas")


def assemble(ptx: str, sm: str, optimize: bool = True) -> str:
    """Run `ptxas` on the PTX (it must be on PATH); its resource report (registers,
    shared memory, spills). A rejected PTX raises CompileError with ptxas' messages.
    `optimize=False` only checks it (-O0: a large kernel's 1.5 s become 0.4; the
    registers and spills reported are then not the driver's)."""
    exe = ptxas_path()
    if exe is None:
        raise CompileError("ptxas is not on PATH", fix="install the CUDA toolkit to check PTX")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        done = subprocess.run(
            [
                exe,
                f"-arch={sm}",
                "-v",
                *([] if optimize else ["-O0"]),
                src,
                "-o",
                os.path.join(tmp, "kernel.cubin"),
            ],
            capture_output=True,
            text=True,
        )
    if done.returncode:
        raise CompileError(f"ptxas rejected the PTX for {sm}:\n{done.stderr.strip()}")
    return done.stderr
