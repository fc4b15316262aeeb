"""Compiled objects on disk, so that a new process calls a kernel without running LLVM.

An entry is the machine code of one scheduled kernel (an ELF object emitted by LLVM for
this CPU) with what the call path needs besides it (`backend.ObjectCode`), or the
thread pool's. Its key is content-addressed: what was compiled (the structural hash of
the final IR and the compile options), the host CPU (model and features), and a
fingerprint of the compiler itself (kdsl's version and the source of the code
generator), so a changed kdsl never loads objects made by another one.

Files live in `<cache root>/objects/<2 hex>/<key>.kobj` (a pickle written by this
module only), written to a temporary name and renamed, so a reader never sees half a
file. A file that can't be read is a miss; a cache directory that can't be written
turns the store off for the process with one warning: compiling still works.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import tempfile
import warnings
from pathlib import Path

import llvmlite

from kdsl.config import VERSION, cache_root
from kdsl.targets.cpu import jit

_FORMAT = 1
_COMPILER_DIRS = ("ir", "targets/cpu", "targets/cuda")  # what decides the code of a final IR


@functools.cache
def compiler_fingerprint() -> str:
    """kdsl's version, llvmlite's, and a hash of the code generator's sources."""
    package = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256(f"{_FORMAT}/{VERSION}/{llvmlite.__version__}".encode())
    for folder in _COMPILER_DIRS:
        for path in sorted((package / folder).rglob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def object_key(*what: object) -> str:
    """The store's key for the machine code of `what` (e.g. an IR hash and options)."""
    text = "/".join(map(str, (*what, jit.host_description(), compiler_fingerprint())))
    return hashlib.sha256(text.encode()).hexdigest()


class ObjectStore:
    """The on-disk cache of compiled objects under one directory."""

    def __init__(self, root: Path | None = None) -> None:
        self._root = root
        self.disabled = False

    @property
    def root(self) -> Path:
        return (self._root or cache_root()) / "objects"

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.kobj"

    def load(self, key: str) -> object | None:
        if self.disabled:
            return None
        try:
            with open(self._path(key), "rb") as f:
                found = pickle.load(f)
        except FileNotFoundError:
            return None
        except Exception:  # a damaged or foreign file is a miss; the next save replaces it
            return None
        return found

    def save(self, key: str, obj: object) -> None:
        if self.disabled:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except OSError as exc:
            self.disabled = True
            warnings.warn(
                f"kdsl can't write compiled objects to {self.root} ({exc}); kernels will be "
                "compiled again in each process. Set KDSL_CACHE_DIR to a writable directory.",
                RuntimeWarning,
                stacklevel=2,
            )

    def clear(self) -> int:
        """Delete every stored object; returns how many there were."""
        count = 0
        for path in self.root.glob("*/*.kobj"):
            path.unlink(missing_ok=True)
            count += 1
        return count

    def count(self) -> tuple[int, int]:
        """How many objects are stored, and their total size in bytes."""
        sizes = [p.stat().st_size for p in self.root.glob("*/*.kobj")]
        return len(sizes), sum(sizes)


STORE = ObjectStore()
