"""``gmm-triton evidence run | report`` (``make evidence``, ``make evidence-quick``)."""
from __future__ import annotations

import argparse

from ..cli_args import positive_int

RESULTS = "docs/evidence"


def add_arguments(e: argparse.ArgumentParser) -> None:
    """The options of ``gmm-triton evidence``."""
    esub = e.add_subparsers(dest="action", required=True)
    r = esub.add_parser("run", help="the whole run (resumable): train the UNets and the classifier, sample and score "
                                    "every cell, write RESULTS and the tables")
    r.add_argument("--out", default="gmm_triton_out/evidence", help="models, per-cell results, grids (not committed)")
    r.add_argument("--results", default=RESULTS, help="CSV, JSON, plot, grids, table.md (committed)")
    r.add_argument("--workers", type=positive_int, default=2, help="worker processes of one thread each")
    r.add_argument("--quick", action="store_true", help="a tiny UNet, 30 iterations, 32 samples, one seed (tests)")
    r.add_argument("--readme", default=None, help="also rewrite this README's evidence section")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_run)
    p = esub.add_parser("report", help="regenerate table.md, the plot and the README section from RESULTS' CSV")
    p.add_argument("--results", default=RESULTS)
    p.add_argument("--readme", default=None, help="the README whose evidence section is rewritten")
    p.set_defaults(func=_report)


def main(args: argparse.Namespace) -> int:
    return args.func(args)


def _run(args: argparse.Namespace) -> int:
    from .sweep import FULL, QUICK, run_evidence

    record = run_evidence(args.out, args.results, QUICK if args.quick else FULL, workers=args.workers,
                          progress=not args.quiet, readme=args.readme)
    print(f"evidence: {record['wall_seconds']:.0f} s wall, {record['cpu_seconds']:.0f} CPU s; results in "
          f"{args.results}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_all

    print(write_all(args.results, readme=args.readme))
    return 0
