"""`kdsl llama2 CHECKPOINT [options]`: the llama2 runner of kdsl.examples.llama2 (every
option is passed on; `kdsl llama2 --help` lists them)."""

from __future__ import annotations

import argparse


def add(commands: argparse._SubParsersAction) -> None:
    commands.add_parser(
        "llama2",
        help="decode with a llama2.c checkpoint on kdsl kernels (llama2.c's options)",
        add_help=False,  # --help is the runner's
    ).set_defaults(run=run, passes_options=True)


def run(ns: argparse.Namespace) -> int:
    from kdsl.examples.llama2 import main  # the example imports the kernel library

    return main(ns.options, prog="kdsl llama2")
