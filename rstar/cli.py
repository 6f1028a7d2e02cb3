"""The `rstar` command line.

Each concern registers its own sub-commands (``register(subparsers)``) so this
file only wires them together and turns expected failures into one clear line.
"""

from __future__ import annotations

import argparse
import sys


from rstar.errors import RstarError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rstar",
        description=(
            "Code-augmented MCTS for math with small language models. A model writes a "
            "solution as Python, step by step; each step runs in a Docker sandbox; "
            "failing steps are cut; tree search finds verified solutions."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    import importlib

    # Each concern registers its own sub-commands (`register(subparsers)`).
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a missing dependency of an existing module is a real error
                raise
            continue
        module.register(sub)
    return parser


_COMMAND_MODULES = (
    "rstar.commands",      # solve, run, eval
    "rstar.export",        # export
    "rstar.train.cli",     # train ppm | value | sft | dpo
    "rstar.evolve",        # evolve
    "rstar.view",          # view
    "rstar.models",        # model fetch | path | convert
    "rstar.sandbox.cli",   # sandbox build | check | run
)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RstarError as exc:
        print(f"rstar: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
