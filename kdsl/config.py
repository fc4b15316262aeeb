"""Configuration from the environment, read once at import: no os.environ elsewhere.
Also `user_stacklevel`, so that kdsl's warnings name the user's line."""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import platformdirs


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


VERSION = "0.1.0"


@dataclass(frozen=True)
class Config:
    debug: bool
    """KDSL_DEBUG=1: verify IR after every pass, bounds checks on, internal frames shown."""
    dump: frozenset[str]
    """KDSL_DUMP=trace,bounds: print the IR after the named passes ('all' for every one)."""
    cache_dir: str | None
    """KDSL_CACHE_DIR: where compiled objects and tuning results live."""
    num_threads: int | None
    """KDSL_NUM_THREADS: default thread count of parallel loops."""


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


_KDSL_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# kdsl.kernels and kdsl.examples are kernels written with kdsl, as a user's are (an
# installed wheel holds them inside the package, an editable install beside it)
_USERS_DIRS = tuple(os.path.join(_KDSL_DIR, d) + os.sep for d in ("kernels", "examples"))


def kdsls_own(path: str) -> bool:
    """Whether the source file at `path` is kdsl's machinery rather than code that uses
    it: the frames a trace skips to find the user's line."""
    return path.startswith(_KDSL_DIR) and not path.startswith(_USERS_DIRS)


def user_stacklevel() -> int:
    """The stacklevel for a warnings.warn made where this is called, that names the
    user's line: the innermost frame outside kdsl (its library included) and Python's
    import machinery. That is the call of a kernel, or for the settings read here at
    import, the `import kdsl` line. (warnings steps over the import machinery's frames
    without counting them; so does this.)"""
    library = sys.modules.get("kdsl.kernels")  # (a checkout keeps it outside kdsl/)
    ours = (_KDSL_DIR, os.path.dirname(getattr(library, "__file__", None) or _KDSL_DIR) + os.sep)
    level, frame = 1, sys._getframe(1)  # the frame that warns: stacklevel 1
    while frame.f_back is not None and (
        _importing(frame) or frame.f_code.co_filename.startswith(ours)
    ):
        frame = frame.f_back
        level += not _importing(frame)
    return level


def _importing(frame: FrameType) -> bool:
    """A frame of Python's import machinery (as warnings tells them)."""
    path = frame.f_code.co_filename
    return "importlib" in path and "_bootstrap" in path


def _num_threads() -> int | None:
    """KDSL_NUM_THREADS as a positive int; None when unset, or (with a warning) invalid."""
    text = os.environ.get("KDSL_NUM_THREADS", "").strip()
    if not text:
        return None
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads > 0:
        return threads
    warnings.warn(
        f"KDSL_NUM_THREADS={text!r} is not a positive whole number of threads; ignoring it: "
        f"parallel loops use one thread per core available to this process "
        f"({available_cores()}). "
        "Set it to a count such as KDSL_NUM_THREADS=8, or unset it.",
        RuntimeWarning,
        stacklevel=user_stacklevel(),
    )
    return None


# what KDSL_DUMP may name: the traced IR, the lowering passes (kdsl/ir/passes), the
# scheduled IR as the CPU target compiles it
DUMPS = ("trace", "in_place", "bounds", "schedule", "all")


def _dump() -> frozenset[str]:
    names = frozenset(p.strip() for p in os.environ.get("KDSL_DUMP", "").split(",") if p.strip())
    unknown = sorted(names - set(DUMPS))
    if unknown:
        warnings.warn(
            f"KDSL_DUMP names {', '.join(unknown)}, which kdsl does not print; it prints "
            f"{', '.join(DUMPS)}",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )
    return names


def _read() -> Config:
    return Config(
        debug=_flag("KDSL_DEBUG"),
        dump=_dump(),
        cache_dir=os.environ.get("KDSL_CACHE_DIR") or None,
        num_threads=_num_threads(),
    )


CONFIG = _read()


def dumps(pass_name: str) -> bool:
    return "all" in CONFIG.dump or pass_name in CONFIG.dump


def cache_root() -> Path:
    """Where compiled objects and tuning results live: KDSL_CACHE_DIR, or the user cache
    directory of this platform (platformdirs: ~/.cache/kdsl on Linux)."""
    if CONFIG.cache_dir:
        return Path(CONFIG.cache_dir).expanduser()
    return Path(platformdirs.user_cache_dir("kdsl", appauthor=False))


def cuda_arch() -> str | None:
    """KDSL_CUDA_ARCH (e.g. sm_90), read when PTX is made rather than at import, so one
    process can build for several GPU architectures (tests do)."""
    return os.environ.get("KDSL_CUDA_ARCH", "").strip() or None
