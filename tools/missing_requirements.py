"""Prints the requirements of a requirements file that the running python does not satisfy."""
import sys
from importlib.metadata import PackageNotFoundError, version

missing = []
for line in open(sys.argv[1]):
    req = line.split("#")[0].strip()
    if not req:
        continue
    name, _, pinned = req.partition("==")
    try:
        have = version(name)
        if pinned and have.split("+")[0] != pinned:
            missing.append(req)
    except PackageNotFoundError:
        missing.append(req)
print(" ".join(missing))
