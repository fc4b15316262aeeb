"""Worker processes of the autotuner: fresh interpreters running `main` below.

A worker is a fresh interpreter (not `multiprocessing`: its spawn method re-runs the
user's script, which breaks every script without a `__main__` guard) that answers
requests on a pipe: `(op, args)` → the reply of `op`. Compile workers run `build`;
the measuring process holds a `measure.Bench` and runs its methods. A worker writes
nothing to stdout but replies (prints go to stderr), and an exception in a request is
its reply, so only a real crash ends a worker; the parent then sees the pipe close.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

Request = tuple[str, tuple[Any, ...]]

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # this kdsl, installed or not
# Ctrl-C reaches the whole process group: the parent stops the tuning and closes the
# workers (EOF, or a kill), so a worker ignores it from its first line (a traceback of
# each, in the middle of importing kdsl, was only noise)
_BOOT = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from kdsl.autotune.worker import main; main(sys.argv[2:])"
)


class Failure:
    """A request's failure: raised in the worker, the worker died, or it timed out."""

    def __init__(self, status: str, detail: str) -> None:
        self.status, self.detail = status, detail

    def __repr__(self) -> str:
        return f"Failure({self.status}: {self.detail})"


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self) -> None:
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, _PACKAGE_ROOT, str(to_child), str(from_child)],
            pass_fds=(to_child, from_child),
            stdin=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self.requests = Connection(from_parent, readable=False)
        self.replies = Connection(to_parent, writable=False)

    def send(self, request: Request) -> None:
        self.requests.send(request)

    def receive(self, timeout: float | None = None) -> object:
        if not self.replies.poll(timeout):
            self.kill()
            return Failure("timeout", f"no answer in {timeout:.3g} s")
        try:
            return self.replies.recv()
        except (EOFError, OSError):
            code = self.process.wait()
            return Failure("crashed", f"the worker process died (exit code {code})")

    def ask(self, request: Request, timeout: float | None = None) -> object:
        try:
            self.send(request)
        except OSError:
            return Failure("crashed", "the worker process is gone")
        return self.receive(timeout)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def close(self) -> None:
        self.requests.close()  # the worker sees EOF and exits
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
        self.replies.close()


class WorkerPool:
    """Worker processes that run independent requests in parallel."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.workers: list[Worker] = []

    def run(self, requests: Sequence[Request]) -> list[object]:
        """Each request's reply (or `Failure`), keeping every worker busy; a worker that
        dies is replaced."""
        self.workers = [w for w in self.workers if w.alive]
        while len(self.workers) < min(self.size, len(requests)):
            self.workers.append(Worker())
        replies: list[object] = [None] * len(requests)
        pending = list(enumerate(requests))
        busy: dict[int, tuple[Worker, int]] = {}  # reply fd → (worker, request index)
        idle = list(self.workers)
        while pending or busy:
            while pending and idle:
                worker, (n, request) = idle.pop(), pending.pop(0)
                worker.send(request)
                busy[worker.replies.fileno()] = (worker, n)
            for conn in wait([w.replies for w, _ in busy.values()]):
                worker, n = busy.pop(conn.fileno())  # type: ignore[union-attr]
                replies[n] = worker.receive()
                if worker.alive:
                    idle.append(worker)
                else:
                    self.workers.remove(worker)
                    fresh = Worker()
                    self.workers.append(fresh)
                    idle.append(fresh)
        return replies

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.workers = []


# ------------------------------------------------------------------ the worker side


def build(*args: Any) -> object:
    from kdsl.targets.cpu import backend

    return backend.build_object(*args)


def serve(requests: Connection, replies: Connection) -> None:
    from kdsl.autotune.measure import Bench

    bench = Bench()
    handlers = {"build": build, "setup": bench.setup}
    handlers.update(reference_run=bench.reference_run, measure=bench.measure)
    while True:
        try:
            op, args = requests.recv()
        except EOFError:
            return
        try:
            reply: object = handlers[op](*args)
        except Exception as exc:  # the request's failure is its reply
            reply = Failure("error", f"{type(exc).__name__}: {exc}")
        replies.send(reply)


def main(argv: Sequence[str]) -> None:
    """The worker program: `main([READ_FD, WRITE_FD])`."""
    os.dup2(2, 1)  # stray prints go to stderr
    serve(Connection(int(argv[0]), writable=False), Connection(int(argv[1]), readable=False))
