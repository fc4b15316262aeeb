"""The one comparison helper: compiled vs interpreter vs NumPy, with explicit tolerances."""

from __future__ import annotations

import os
import pathlib
import re
import zlib

import numpy as np

GOLDEN = pathlib.Path(__file__).parent / "golden"
ALL_SLOW = "KDSL_ALL_SLOW"  # set (or pytest --all-slow): every case of the slow sweeps


def sweep(full: int, bounded: int) -> int:
    """Examples for a hypothesis sweep marked slow: `bounded` in the default run (the
    suite's ten minutes), `full` under --all-slow or KDSL_ALL_SLOW=1."""
    return full if os.environ.get(ALL_SLOW) else bounded


def keyed_rng(*key: object) -> np.random.Generator:
    """A generator seeded by `key` (a test's parameters), the same in every process:
    a failure reruns with its data (Python's str hash differs between processes)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: object) -> np.ndarray:
    """Fresh random data, never zeros: floats in [-1, 1), ints in a small signed/unsigned range."""
    dt = np.dtype(dtype)
    if dt.kind == "f" or dt.name == "bfloat16":
        return rng.uniform(-1, 1, shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    lo = 0 if dt.kind == "u" else -50
    return rng.integers(lo, 50, shape).astype(dt)


def build_config(kernel, config: dict[str, object], *args: object):
    """`kernel` compiled for these arguments with `config` for its schedule's params (one
    point of its search space, as the autotuner would), and the arguments bound for it."""
    specs, bound = kernel._specs(args, {})
    traced = kernel.trace(specs)
    return kernel.build(traced, kernel.call_layout(specs, traced), config), bound


def run_config(kernel, config: dict[str, object], *args: object) -> None:
    """Call `kernel` compiled with `config` for its schedule's params."""
    compiled, bound = build_config(kernel, config, *args)
    compiled.run(bound)


def each_choice(kernel, *args: object) -> list[dict[str, object]]:
    """The configs that take each choice of each of `kernel`'s params for these
    arguments beyond the first, the other params at their first choice."""
    space = kernel.search_space(kernel.ir(*args).kernel)
    return [{name: choice} for name, choices in space.items() for choice in choices[1:]]


def _copies(args: list[object]) -> list[object]:
    return [a.copy() if isinstance(a, np.ndarray) else a for a in args]


def check_kernel(
    kernel,
    args: list[object],
    expected: dict[int, np.ndarray] | np.ndarray,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Run `kernel` compiled and interpreted on copies of `args`; compare both to NumPy.

    `expected` is the kernel's return value, or {argument position: expected contents}
    for kernels that write into arguments.
    """
    compiled_args, interp_args = _copies(args), _copies(args)
    outputs = {"compiled": (kernel(*compiled_args), compiled_args)}
    outputs["interpreter"] = (kernel.interpret(*interp_args), interp_args)
    for name, (returned, after) in outputs.items():
        pairs = (
            [(f"{name}, argument {p}", after[p], want) for p, want in expected.items()]
            if isinstance(expected, dict)
            else [(name, returned, expected)]
        )
        for label, got, want in pairs:
            np.testing.assert_allclose(
                np.asarray(got, np.float64),
                np.asarray(want, np.float64),
                rtol=rtol,
                atol=atol,
                err_msg=label,
            )


def check_golden(name: str, text: str, update: bool) -> None:
    """Compare `text` with tests/golden/NAME.txt (rewritten under --update-golden)."""
    path = GOLDEN / f"{name}.txt"
    if update:
        path.write_text(text + "\n")
    assert path.exists(), f"{path} is missing; create it with --update-golden"
    assert text + "\n" == path.read_text(), (
        f"{path} differs; rerun with --update-golden if intended"
    )


def asm_loops(asm: str) -> list[list[str]]:
    """The instructions of each loop in the assembly: a label and the straight code up to
    a branch back to it."""
    lines = [ln.strip() for ln in asm.splitlines()]
    found = []
    for n, line in enumerate(lines):
        label = re.fullmatch(r"(\.LBB\w+):", line)
        if label is None:
            continue
        for end in range(n + 1, len(lines)):
            if lines[end].endswith(":") and not lines[end].startswith("#"):
                break
            if re.fullmatch(rf"j\w+\s+{re.escape(label.group(1))}", lines[end]):
                found.append(lines[n + 1 : end])
                break
    return found


def vector_register() -> str:
    """The assembly name of this CPU's widest float vector registers: "zmm" with AVX-512,
    "ymm" with AVX2 only (a 16-lane f32 vector is then two of them)."""
    from kdsl.targets.cpu.jit import host_features

    return "zmm" if host_features().get("avx512f") else "ymm"
