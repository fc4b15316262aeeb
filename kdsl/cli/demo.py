"""`kdsl demo`: the library kernels checked against NumPy and timed, in one table."""

from __future__ import annotations

import argparse


def add(commands: argparse._SubParsersAction) -> None:
    commands.add_parser(
        "demo", help="check and time the library kernels against NumPy"
    ).set_defaults(run=run)


def run(ns: argparse.Namespace) -> int:
    from kdsl.demo import main

    return main()
