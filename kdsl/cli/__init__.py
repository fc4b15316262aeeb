"""The `kdsl` command line: `kdsl show | autotune | cache | demo | llama2 | bench | version`.

Exit codes: 0 success; 1 a kdsl error (its message is printed); 2 a usage error
(bad target, missing kernel, bad --args or --shape, unusable cache directory),
reported in one line without a traceback; 141 (128 + SIGPIPE, as for any tool), quietly,
when the reader of stdout went away (`kdsl show ... | head`); 130 (128 + SIGINT) on
Ctrl-C, with one line. Each subcommand module has
an `add` function that declares its options and the function that runs it; `main`
dispatches.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import warnings
from collections.abc import Sequence

import kdsl
from kdsl.cli import autotune, cache, demo, inspect, llama2
from kdsl.cli.common import UsageError, load_kernel
from kdsl.errors import KdslError

__all__ = ["load_kernel", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdsl", description="kdsl: a kernel DSL embedded in Python."
    )
    parser.add_argument("--version", action="version", version=f"kdsl {kdsl.__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module in (inspect, autotune, cache, demo, llama2):
        module.add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `kdsl` command line; returns the exit code."""
    parser = _parser()
    try:
        ns, extra = parser.parse_known_args(argv)
        if extra and not getattr(ns, "passes_options", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse's --help, --version and usage errors
        return int(exc.code or 0)
    ns.options = extra
    # a warning is the tool's, not a line of Python's: `kdsl: warning: …` (it was
    # `<frozen runpy>:88: RuntimeWarning: kdsl: …`, the frame nearest a user's)
    python_format, warnings.formatwarning = warnings.formatwarning, _tool_warning
    try:
        return _run(ns)
    finally:
        warnings.formatwarning = python_format


def _tool_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    text = str(message)
    return f"{text if text.startswith('kdsl:') else 'kdsl: warning: ' + text}\n"


def _run(ns: argparse.Namespace) -> int:
    try:
        code: int = ns.run(ns)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # another pipe broke (a worker's): not the reader of our output
        # Python's advice: point stdout at devnull, or the flush at exit fails again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except UsageError as err:
        print(f"kdsl: error: {err}", file=sys.stderr)
        return 2
    except KdslError as err:
        print(err, file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: what finished is kept (tuning results as they come)
        print("kdsl: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


def _stdout_closed() -> bool:
    """Whether stdout's reader has gone away (a pipe's write end then polls as an
    error); True where poll() is missing."""
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(sys.stdout.fileno(), select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


if __name__ == "__main__":
    sys.exit(main())
