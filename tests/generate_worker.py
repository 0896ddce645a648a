"""Runs several ``gmm-triton generate`` commands in one torchrun launch (a launch costs seconds of imports).

Usage: python -m torch.distributed.run --nproc-per-node P tests/generate_worker.py JOBS.json
JOBS.json: a list of {"argv": [...], "env": {...}, "expect": exit status (default 0)}. The process group is set up
once, by generate's own ``distributed()`` (gloo on the CPU), and each command runs in it (tearing a group down and
setting it up again in one process can read the previous group's addresses from the rendezvous store); the launch
stops at the first command whose exit status is not the expected one.
"""
import json
import os
import sys

from gmm_triton.cli import main
from gmm_triton.lab.generate import distributed

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    with distributed("cpu"):
        for job in jobs:
            os.environ.update(job.get("env", {}))
            rc = main(job["argv"])
            if rc != job.get("expect", 0):
                sys.exit(rc or 99)
