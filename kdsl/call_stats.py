"""The counts behind `kernel.stats()`: calls, compilations, and which calls were cache hits.

A cache hit is a call that ran code already built and returned. The fast call path only
counts the call (a dict increment); a call that takes a slow path (the careful one, or a
tuned dispatcher meeting a new shape) runs inside `slow_path()`, which learns whether
*this thread* built code during it: a call that waited while another thread compiled the
same version is a hit, not a compiling call. A call that raised without compiling is
neither (`failed()`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CallStats:
    def __init__(self) -> None:
        # "calls" is read and bumped by the kernel's fast path directly
        self.counts = {"calls": 0, "compilations": 0, "objects_loaded": 0}
        self._compiling_calls = 0
        self._failed_calls = 0
        self._local = threading.local()  # this thread's slow-path depth and what it built

    def compiled(self, from_cache: bool) -> None:
        """One version built (its machine code loaded from the cache directory or not)."""
        self.counts["compilations"] += 1
        self.counts["objects_loaded"] += from_cache
        self._local.built = True

    @contextmanager
    def slow_path(self) -> Iterator[None]:
        """The part of a call that may compile; nested scopes count as the outermost."""
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth == 0:
            local.built = local.raised_after_building = False
        local.depth = depth + 1
        try:
            yield
        except BaseException:
            local.raised_after_building = depth == 0 and local.built
            raise
        finally:
            local.depth = depth
            if depth == 0 and local.built:
                self._compiling_calls += 1

    def failed(self) -> None:
        """The call raised: unless it compiled (counted as compiling), it was no hit."""
        if not getattr(self._local, "raised_after_building", False):
            self._failed_calls += 1
        self._local.raised_after_building = False

    def cache_hits(self) -> int:
        return self.counts["calls"] - self._compiling_calls - self._failed_calls
