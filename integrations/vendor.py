"""The third-party snapshots the integration tests run against (shared/vendor/, beside the checkout): found, and
unpacked once into .cache/ (a marker file records a complete unpack)."""
from __future__ import annotations

import os
import pathlib
import sys
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


def import_torchvision() -> None:
    """Imports torchvision from .cache/site-torchvision (requirements-torchvision.txt, `make test-integrations`).

    ComfyUI imports it, and so does transformers (lazily, e.g. when unittest's assertWarns sweeps sys.modules). The only
    torchvision for torch 2.13 this environment can install is a CUDA build, whose compiled ops cannot load against
    the CPU torch; its Python part then fails only on registering fake kernels for two ops it never defined
    (torchvision::nms, ::qnms). Defining their schemas lets the real package import; the code exercised by the
    integration tests uses no torchvision op. With a working build this changes nothing.
    """
    import torch

    site = REPO / ".cache" / "site-torchvision"
    if site.is_dir() and str(site) not in sys.path:
        sys.path.insert(0, str(site))
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import_torchvision.lib = lib  # the definitions live as long as the library object
    import torchvision  # noqa: F401,F811
