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

    from rstar import commands, models
    from rstar.sandbox import cli as sandbox_cli

    commands.register(sub)
    models.register(sub)
    sandbox_cli.register(sub)
    return parser


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
