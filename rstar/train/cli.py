"""`rstar train ppm | value | sft | dpo`: each trainer module registers its own sub-command."""

from __future__ import annotations

import importlib

_TRAINERS = ("rstar.train.reward", "rstar.train.sft", "rstar.train.dpo")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a PPM / value head / policy from exported tree data",
                       description="Train from the files `rstar export` writes: a process preference model "
                                   "(ppm), a value head (value), the policy by SFT (sft) or Step-DPO (dpo).")
    tsub = p.add_subparsers(dest="train_command", metavar="WHAT")
    tsub.required = True
    for name in _TRAINERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(tsub)
