"""The third-party snapshots the integration tests run against (shared/vendor/, beside the checkout): found, and
unpacked once into .cache/ (a marker file records a complete unpack)."""
from __future__ import annotations

import os
import pathlib
import tarfile

REPO = pathlib.Path(__file__).resolve().parents[1]


def vendor_dir() -> pathlib.Path:
    """$GMM_VENDOR_DIR, else shared/vendor beside the checkout (or beside the folder of a git worktree)."""
    if os.environ.get("GMM_VENDOR_DIR"):
        return pathlib.Path(os.environ["GMM_VENDOR_DIR"])
    for base in (REPO.parent, REPO.parent.parent):
        if (base / "shared" / "vendor").is_dir():
            return base / "shared" / "vendor"
    raise FileNotFoundError(f"no shared/vendor/ beside {REPO} (set GMM_VENDOR_DIR to the folder of the snapshots)")


def unpack(tarball: str) -> pathlib.Path:
    """.cache/<tarball stem>/, the archive's contents (unpacked on first use)."""
    src = vendor_dir() / tarball
    dest = REPO / ".cache" / tarball.removesuffix(".tar.gz")
    marker = dest / ".unpacked"
    if not marker.exists():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(src) as tar:
            tar.extractall(dest, filter="data")
        marker.write_text(src.name)
    return dest
