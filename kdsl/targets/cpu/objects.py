"""Compiled objects on disk, so that a new process calls a kernel without running LLVM.

An entry is the machine code of one scheduled kernel (an ELF object emitted by LLVM for
this CPU) with what the call path needs besides it (`backend.ObjectCode`), or the
thread pool's. Its key is content-addressed: what was compiled (the structural hash of
the final IR and the compile options), the host CPU (model and features), and a
fingerprint of the compiler itself (kdsl's version and the source of the code
generator), so a changed kdsl never loads objects made by another one.

Files live in `<cache root>/objects/<2 hex>/<key>.kobj`: a magic line naming the format,
the SHA-256 of the payload, then the payload (a pickle written by this module only).
They are written to a temporary name and renamed, so a reader never sees half a file;
the digest catches what renaming can't (a damaged disk, a stray write, a copy cut
short), so damaged machine code is never loaded and called. A file without the magic
(an older format) is a miss; a file whose digest or pickle is wrong is a miss too,
removed with one warning per process, and the next save rebuilds it. A cache directory
that can't be written turns the store off for the process with one warning: compiling
still works.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import tempfile
import warnings
from pathlib import Path

import llvmlite

from kdsl.config import VERSION, cache_root, user_stacklevel
from kdsl.targets.cpu import jit

_FORMAT = 2  # 2: magic line and SHA-256 digest before the pickle
_MAGIC = f"kdsl-object {_FORMAT}\n".encode()
_DIGEST_SIZE = hashlib.sha256().digest_size
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
        self._warned_damaged = False

    @property
    def root(self) -> Path:
        return (self._root or cache_root()) / "objects"

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.kobj"

    def load(self, key: str) -> object | None:
        """The object stored under `key`, or None: not there, of an older format, or
        damaged (then removed, with one warning per process)."""
        if self.disabled:
            return None
        path = self._path(key)
        try:
            data = path.read_bytes()
        except OSError:  # not there (the usual miss), or unreadable: compile again
            return None
        if not data.startswith(_MAGIC):
            return None  # written by an older kdsl (no digest): the next save replaces it
        digest = data[len(_MAGIC) : len(_MAGIC) + _DIGEST_SIZE]
        payload = data[len(_MAGIC) + _DIGEST_SIZE :]
        if hashlib.sha256(payload).digest() != digest:
            self._damaged(path, "its checksum does not match its contents")
            return None
        try:
            return pickle.loads(payload)
        except Exception as exc:  # intact bytes of a class that changed: compile again
            self._damaged(path, f"it can't be unpickled: {type(exc).__name__}: {exc}")
            return None

    def _damaged(self, path: Path, why: str) -> None:
        """Remove a damaged file (the caller compiles again and saves a good one)."""
        with contextlib.suppress(OSError):
            path.unlink()
        if not self._warned_damaged:
            self._warned_damaged = True
            warnings.warn(
                f"kdsl: the compiled object '{path}' is damaged ({why}); removed it and "
                "compiled the kernel again. If this repeats, check the disk, or run "
                "`kdsl cache clear`.",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )

    def save(self, key: str, obj: object) -> None:
        if self.disabled:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, path)
        except OSError as exc:
            self.disabled = True
            warnings.warn(
                f"kdsl can't write compiled objects to {self.root} ({exc}); kernels will be "
                "compiled again in each process. Set KDSL_CACHE_DIR to a writable directory.",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
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
