"""Build and run the C baselines of the llama2 runner: `run` (llama2.c's legacy float32
checkpoint) and `runq` (its version-2 int8 checkpoint), compiled with
`gcc -O3 -march=native -fopenmp` into kdsl's cache directory, again when a source changes.

    from llama2_c.build import run_c      # with benchmarks/ on sys.path
    result = run_c("run", "model.bin", "tokenizer.bin", steps=256, threads=2)
    result.tokens, result.text, result.tok_per_s
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kdsl.config import cache_root

SOURCE_DIR = Path(__file__).resolve().parent
COMPILER = "gcc"
FLAGS = ("-O3", "-march=native", "-fopenmp")
PROGRAMS = {"run": ("run.c", "llama2.c"), "runq": ("runq.c", "llama2.c")}


def compiler_available() -> bool:
    """Whether gcc is on PATH and can build an OpenMP program."""
    if shutil.which(COMPILER) is None:
        return False
    probe = "int main(void) {\n#pragma omp parallel\n{}\nreturn 0; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe.c"
        source.write_text(probe)
        command = [COMPILER, *FLAGS, str(source), "-o", str(Path(tmp) / "probe")]
        return subprocess.run(command, capture_output=True).returncode == 0


def build(program: str) -> Path:
    """The compiled `program` ("run" or "runq"), built once per version of its sources."""
    sources = [SOURCE_DIR / name for name in PROGRAMS[program]] + [SOURCE_DIR / "llama2.h"]
    digest = hashlib.sha256(" ".join((COMPILER, *FLAGS)).encode())
    for source in sources:
        digest.update(source.read_bytes())
    binary = cache_root() / "llama2_c" / digest.hexdigest()[:16] / program
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        partial = binary.with_suffix(f".{os.getpid()}.tmp")  # renamed: concurrent builds are safe
        command = [COMPILER, *FLAGS, *map(str, sources[:-1]), "-lm", "-o", str(partial)]
        compiled = subprocess.run(command, capture_output=True, text=True)
        if compiled.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{compiled.stderr}")
        partial.replace(binary)
    return binary


@dataclass(frozen=True)
class CResult:
    tokens: list[int]  # from the prompt's BOS on, as llama2_reference.generate returns them
    text: str
    tok_per_s: float


def run_c(
    program: str,
    checkpoint: str | Path,
    tokenizer: str | Path,
    *,
    steps: int = 256,
    temperature: float = 0.0,
    topp: float = 0.9,
    seed: int = 1,
    prompt: str = "",
    threads: int | None = None,
) -> CResult:
    """Run `program` on a checkpoint, as `run CHECKPOINT -t -p -s -n -i -z`; threads sets
    OMP_NUM_THREADS (default: OpenMP's, every core)."""
    command = [str(build(program)), str(checkpoint), "-z", str(tokenizer), "-n", str(steps)]
    command += ["-t", str(temperature), "-p", str(topp), "-s", str(seed), "-v", "1"]
    if prompt:
        command += ["-i", prompt]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, capture_output=True, env=env)
    stderr = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{stderr}")
    tokens = re.search(r"^tokens:(.*)$", stderr, re.MULTILINE)
    speed = re.search(r"^achieved tok/s: ([0-9.]+)$", stderr, re.MULTILINE)
    return CResult(
        tokens=[int(t) for t in tokens.group(1).split()] if tokens else [],
        text=done.stdout.decode("utf-8", errors="replace").removesuffix("\n"),
        tok_per_s=float(speed.group(1)) if speed else 0.0,
    )
