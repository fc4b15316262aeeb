"""Tune the kernel library on this machine and write the results kdsl ships for it:
`python benchmarks/ship_tuning.py [--budget 20s] [--only MODULE ...] [--threads N,...]`.

Runs `kdsl autotune` on the library's modules (every kernel, its declared example shapes)
in an empty cache directory, then times each result's best config against the default
params again, the two taking turns (the tuner times configs one after another, and this
machine's memory speed drifts between runs: a 20% "gain" can be the drift); keeps those
at least MARGIN faster (a config within the noise of the default is not worth shipping:
"nearest tuned shape" would carry it to shapes nobody measured), with the other shapes
of their signatures as default-params rows (`ship`), and writes them to
kdsl/autotune/tuned/<cpu>.json, where calls on a machine with the same CPU model and
features find them when the user's own database has no row (kdsl/autotune/shipped.py).
Rerun after changing a library kernel: its content hash changes, and
`tests/autotune/test_shipped.py` says which shipped rows went stale. `--only` retunes the
named modules (e.g. `--only matvec`) and `--threads` the named thread counts (e.g.
`--threads 1,2`; default: the current count); the file keeps its rows of every other
kernel and count.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from kdsl.kernels import kernel_functions, module_names

from kdsl.autotune.database import Entry, TuningDB, read_export
from kdsl.autotune.keys import format_shape, target_key
from kdsl.autotune.registry import DB_NAME
from kdsl.autotune.shipped import SHIPPED_DIR
from kdsl.autotune.tuner import example_key, example_specs, example_values
from kdsl.cli.autotune import parse_threads
from kdsl.cli.common import UsageError
from kdsl.kernel import KernelFunction
from kdsl.specs import Spec, make_arguments
from kdsl.targets.cpu import runtime

MARGIN = 0.05  # the best config must take at most 95% of the default params' time
TURNS = 15  # timed runs of each config, alternating


def example_of(fn: KernelFunction, entry: Entry) -> list[object]:
    """The values of `fn`'s declared example that `entry` was tuned on."""
    key = (entry.kernel_id, entry.target, entry.signature)
    for example in fn.examples:
        values = example_values(fn, example)
        shape = tuple(v.shape for v in values if isinstance(v, Spec))
        if shape == entry.shape and example_key(fn, example) == key:
            return values
    raise LookupError(f"no example of {fn.name} has the tuned shape {entry.shape}")


def default_config(fn: KernelFunction, entry: Entry) -> dict[str, object]:
    """The default params of `entry`'s kernel and signature, each named (the first
    choice of every param): a shipped row must give them all, or the call refuses it
    as an incomplete config and warns."""
    specs, _ = example_specs(fn, example_of(fn, entry))
    return {name: choices[0] for name, choices in fn.search_space(fn.trace(specs)).items()}


def confirmed_speedup(fn: KernelFunction, entry: Entry) -> float:
    """The default params' median time over the entry's config's, taking turns, on
    random data of the entry's example."""
    values = example_of(fn, entry)
    made = make_arguments(dict(zip(fn.signature.names, values)), np.random.default_rng(0))
    specs, bound = fn._specs(list(made.values()), {})
    traced = fn.trace(specs)
    layout = fn.call_layout(specs, traced)
    default, best = (fn.build(traced, layout, config) for config in ({}, entry.config))
    times: tuple[list[float], list[float]] = ([], [])
    with runtime.num_threads_within(entry.threads or None):  # the count it was tuned on
        for _ in range(TURNS + 1):  # the first turn warms up
            for spent, spec in zip(times, (default, best)):
                start = time.perf_counter()
                spec.run(bound)
                spent.append(time.perf_counter() - start)
    return statistics.median(times[0][1:]) / statistics.median(times[1][1:])


def ship(tuned: list[Entry], kernels: dict[str, KernelFunction]) -> tuple[list[Entry], int]:
    """The rows to ship: every tuned shape and thread count of a kernel signature where
    some row's best config was confirmed faster, the others with the default params,
    each named: a call takes the nearest tuned row's config (by shape and count), so a
    signature's one shipped row would otherwise carry its config to every shape and
    count of that signature; and how many rows were confirmed faster."""
    confirmed: list[Entry] = []
    for e in tuned:
        faster = e.default_time_s is not None and e.time_s <= (1 - MARGIN) * e.default_time_s
        again = confirmed_speedup(kernels[e.kernel_name], e) if faster else 1.0
        if again >= 1 / (1 - MARGIN):
            confirmed.append(e)
        tuner = f"{e.default_time_s / e.time_s:.2f}×" if e.default_time_s else "-"
        print(
            f"{e.kernel_name} {format_shape(e.shape)} on {e.threads} threads: tuner {tuner}, "
            f"taking turns {again:.2f}× {e.config}{' (shipped)' if e in confirmed else ''}"
        )
    signatures = {(e.kernel_id, e.signature) for e in confirmed}
    rows = [
        e
        if e in confirmed
        else dataclasses.replace(e, config=default_config(kernels[e.kernel_name], e))
        for e in tuned
        if (e.kernel_id, e.signature) in signatures
    ]
    return rows, len(confirmed)


def shipped_path() -> Path:
    """This machine's file: the target key's CPU model and feature digest."""
    _, cpu, digest = target_key().split("/")
    return SHIPPED_DIR / f"{cpu}-{digest}.json"


def modules_to_tune(only: list[str] | None) -> list[str]:
    """The library's modules that `--only` names (short names such as "matvec"), or all."""
    every = module_names()
    if not only:
        return every
    named = [m for m in every if m.rsplit(".", 1)[1] in only or m in only]
    unknown = set(only) - {m.rsplit(".", 1)[1] for m in named} - set(named)
    if unknown:
        short = ", ".join(m.rsplit(".", 1)[1] for m in every)
        raise SystemExit(f"--only: no library module {', '.join(sorted(unknown))} ({short})")
    return named


def kept_rows(path: Path, retuned: set[str] | None, counts: list[int]) -> list[Entry]:
    """The rows of `path` (this machine's shipped file) that this run does not retune:
    those of kernels not `retuned` (None: all are) or of other thread counts, as long as
    they still belong to a library kernel as it is now (else they serve nothing)."""
    if not path.exists():
        return []
    live = {
        example_key(fn, example) for fn in kernel_functions().values() for example in fn.examples
    }
    return [
        e
        for e in read_export(str(path))
        if (e.kernel_id, e.target, e.signature) in live
        and ((retuned is not None and e.kernel_name not in retuned) or e.threads not in counts)
    ]


def thread_counts(text: str) -> list[int]:
    """'1,2' → [1, 2], as `kdsl autotune --threads` reads them (argparse's type: a bad
    count is a usage error)."""
    try:
        return [n for n in parse_threads(text, "cpu") if n is not None]
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="20s", help="per kernel and shape (default 20s)")
    parser.add_argument(
        "--only", nargs="+", metavar="MODULE", help="retune these library modules only"
    )
    parser.add_argument(
        "--threads",
        type=thread_counts,
        default=[runtime.get_num_threads()],
        metavar="N[,N...]",
        help="thread counts to tune for (default: the current count); the file keeps "
        "its rows of other counts",
    )
    args = parser.parse_args(argv)
    modules = modules_to_tune(args.only)
    counts: list[int] = args.threads
    kernels = kernel_functions()
    retuned = set(kernel_functions(modules)) if args.only else None
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "KDSL_CACHE_DIR": cache}
        threads = ",".join(map(str, counts))
        command = [sys.executable, "-m", "kdsl", "autotune", *modules, "--threads", threads]
        subprocess.run([*command, "--budget", args.budget, "--no-progress"], env=env, check=True)
        tuned = TuningDB(Path(cache) / DB_NAME).entries()
        shipped, gains = ship(tuned, kernels)
        path = shipped_path()
        shipped += kept_rows(path, retuned, counts)
        out = TuningDB(Path(cache) / "shipped.sqlite")
        for e in shipped:
            out.record(e)
        path.parent.mkdir(parents=True, exist_ok=True)
        out.export(path)
        out.close()
    print(f"wrote {len(shipped)} rows ({gains} with params of their own) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
