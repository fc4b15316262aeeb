"""`kdsl cache list | show | clear | export FILE | import FILE`: the cache directory."""

from __future__ import annotations

import argparse
import difflib
import json
import time

from kdsl.autotune import registry, shipped
from kdsl.autotune.database import Entry
from kdsl.autotune.keys import format_shape, target_key
from kdsl.cli.common import UsageError, check_cache_dir
from kdsl.cli.table import format_seconds, format_table
from kdsl.config import cache_root
from kdsl.targets.cpu.objects import STORE


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "cache",
        help="list, show, clear, export or import tuning results and compiled objects",
        description=f"The cache directory ({cache_root()}; KDSL_CACHE_DIR overrides) holds "
        "the tuning database and the compiled objects.",
    )
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    actions.add_parser("list", help="one line per tuned kernel and shape").set_defaults(run=_list)
    show = actions.add_parser("show", help="every field of the tuning results, as JSON")
    show.add_argument("kernel", nargs="?", help="only this kernel (by name)")
    show.set_defaults(run=_show)
    clear = actions.add_parser("clear", help="delete tuning results and compiled objects")
    clear.add_argument("--kernel", help="only this kernel's tuning results (objects stay)")
    clear.set_defaults(run=_clear)
    export = actions.add_parser("export", help="write tuning results to a JSON file")
    export.add_argument("file", help="the JSON file to write, or - for the standard output")
    export.set_defaults(run=_export)
    import_ = actions.add_parser("import", help="merge tuning results from an exported file")
    import_.add_argument("file")
    import_.set_defaults(run=_import)


def _list(ns: argparse.Namespace) -> int:
    check_cache_dir(write=False)
    entries = registry.database().entries()
    objects, size = STORE.count()
    print(f"cache directory: {cache_root()}")
    print(f"compiled objects: {objects} ({size / 1e6:.1f} MB)")
    ships = len(shipped.entries(target_key()))
    print(
        f"shipped with kdsl for this CPU: {ships} tuning results ({shipped.SHIPPED_DIR}; "
        "a signature takes them where the database has none)"
    )
    if not entries:
        print("tuning results: none (run `kdsl autotune`)")
        return 0
    print(f"tuning results: {len(entries)}\n")
    rows = [
        [
            e.kernel_name,
            format_shape(e.shape),
            e.threads or "any",
            " ".join(f"{k}={v}" for k, v in e.config.items()) or "-",
            format_seconds(e.time_s),
            f"{e.default_time_s / e.time_s:.2f}×" if e.default_time_s else "-",
            e.target,
            e.source,
            time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created)),
        ]
        for e in entries
    ]
    headers = [
        "kernel",
        "shape",
        "threads",
        "params",
        "time",
        "speedup",
        "target",
        "source",
        "tuned",
    ]
    print(format_table(headers, rows))
    return 0


def _show(ns: argparse.Namespace) -> int:
    check_cache_dir(write=False)
    entries = registry.database().entries(ns.kernel)
    if ns.kernel is not None and not entries:
        raise _unknown_kernel(ns.kernel)
    print(json.dumps([_as_json(e) for e in entries], indent=2))
    return 0


def _as_json(e: Entry) -> dict[str, object]:
    return {
        "kernel": e.kernel_name,
        "kernel_id": e.kernel_id,
        "target": e.target,
        "signature": e.signature,
        "shape": [list(s) for s in e.shape],
        "threads": e.threads,
        "config": e.config,
        "time_s": e.time_s,
        "default_time_s": e.default_time_s,
        "kdsl_version": e.kdsl_version,
        "source": e.source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(e.created)),
    }


def _unknown_kernel(name: str) -> UsageError:
    """No tuning results for a kernel of this name: which kernels have some."""
    names = sorted({e.kernel_name for e in registry.database().entries()})
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    there = f"kernels with results: {', '.join(names)}" if names else "the cache has none"
    return UsageError(f"no tuning results for a kernel named '{name}'{hint}; {there}")


def _clear(ns: argparse.Namespace) -> int:
    check_cache_dir()
    removed = registry.database().clear(ns.kernel)
    registry.forget()
    if ns.kernel is not None:  # (an empty name too: `--kernel "$NAME"` of an unset NAME)
        if not removed:
            raise _unknown_kernel(ns.kernel)
        print(f"removed {removed} tuning result(s) of '{ns.kernel}'")
        return 0
    objects = STORE.clear()
    print(f"removed {removed} tuning result(s) and {objects} compiled object(s)")
    return 0


def _export(ns: argparse.Namespace) -> int:
    check_cache_dir(write=False)
    count = registry.database().export(ns.file)
    if ns.file != "-":  # (the standard output is the export itself)
        print(f"wrote {count} tuning result(s) to {ns.file}")
    return 0


def _import(ns: argparse.Namespace) -> int:
    check_cache_dir()
    count = registry.database().import_(ns.file)
    registry.forget()
    print(f"imported {count} tuning result(s) from {ns.file}")
    return 0
