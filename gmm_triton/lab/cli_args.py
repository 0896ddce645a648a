"""Argument types and option groups shared by the command line's subcommands (``cli.py``, ``generate.py``):
each type turns a bad value into an argparse usage error that names the argument and what it must be."""
from __future__ import annotations

import argparse
import math

from ..contract import MIXTURE_VARIANCES  # torch-free: the command line's checks load no torch


def value(convert, ok, what):
    """An argparse type: ``convert(text)`` that must satisfy ``ok``, else a usage error saying ``what`` it must be."""
    def parse(text):
        try:
            v = convert(text)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v
    return parse


def values(convert, ok, what):
    """A comma-separated list of such values, ``what`` in the plural."""
    one = value(convert, ok, what)

    def parse(text):
        try:
            return tuple(one(v.strip()) for v in text.split(","))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"must be comma-separated {what}, got {text!r}") from None
    return parse


positive_int = value(int, lambda v: v >= 1, "a positive integer")
seed = value(int, lambda v: 0 <= v < 2**64, "an integer in [0, 2**64)")
nonneg_float = value(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
eta = value(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
seeds = values(int, lambda v: v >= 0, "integers >= 0")
steps_list = values(int, lambda v: v >= 1, "positive integers")
etas = values(float, lambda v: 0 <= v <= 1, "numbers in [0, 1]")
scales = values(float, lambda v: math.isfinite(v) and v >= 0, "finite numbers >= 0")
families = values(str, lambda v: v in ("ddim", "flow"), "names from ddim, flow")


def add_mixture_arguments(p: argparse.ArgumentParser) -> None:
    """The mixture's options (DDIM-GMM / RFIM-GMM samplers), with the schedulers' defaults (see their docstrings)."""
    p.add_argument("--gmm-scale", type=nonneg_float, default=0.3,
                   help="offset scale s (the schedulers' default: the largest measured not to hurt, README)")
    p.add_argument("--gmm-components", type=positive_int, default=8)
    p.add_argument("--gmm-offsets", default="ortho", choices=["ortho", "rand"])
    p.add_argument("--gmm-variance", default="vub", choices=list(MIXTURE_VARIANCES))
    p.add_argument("--gmm-shared", action="store_true")
    p.add_argument("--gmm-clip-variance", action=argparse.BooleanOptionalAction, default=True)
