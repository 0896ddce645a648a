"""Which commit of gmm_triton is running: the stamp that generate's manifest, bench's ``meta.json``, the distillation
results and the demo and eval tables record.

Read from files only, never by running ``git``: a git command started in the package's folder finds whatever
repository encloses the install (a virtual environment inside another project) and reports *that* repository's
HEAD, running its hooks (``core.fsmonitor``) on the way. The sources, in order:

1. **A source checkout of this package** (the folder above ``gmm_triton/`` holds this project's ``pyproject.toml``
   and its own ``.git``: an editable install, or ``PYTHONPATH=.``): HEAD, read from the files under ``.git``
   (a linked worktree's ``gitdir:`` file, ``commondir``, loose and packed refs). Uncommitted changes are not
   detected (that would take git itself).
2. **``gmm_triton/_build_info.py``**, written by ``setup.py`` when the package was built from a checkout (a wheel
   or a regular install): the commit it was built from, read the same way at build time.
3. Otherwise None: the stamp is omitted rather than guessed.
"""
from __future__ import annotations

import os
import re

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_PROJECT_NAME = re.compile(r'^name\s*=\s*"gmm-triton"\s*$', re.MULTILINE)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _git_dir(root: str) -> str | None:
    """``root``'s own git folder: ``root/.git`` itself, or the folder its ``gitdir:`` file names (a worktree)."""
    dot_git = os.path.join(root, ".git")
    if os.path.isdir(dot_git):
        return dot_git
    text = _read(dot_git)
    if text and text.startswith("gitdir:"):
        path = text[len("gitdir:"):].strip()
        return os.path.normpath(os.path.join(root, path))
    return None


def head_commit(root: str) -> str | None:
    """The commit that HEAD of the repository at exactly ``root`` points to (no enclosing repository is looked
    for), read from its files; None if ``root`` has no ``.git`` or the ref cannot be resolved."""
    git_dir = _git_dir(root)
    if git_dir is None:
        return None
    head = _read(os.path.join(git_dir, "HEAD"))
    if head is None:
        return None
    if _SHA.match(head):
        return head  # a detached HEAD
    if not head.startswith("ref:"):
        return None
    ref = head[len("ref:"):].strip()
    common = _read(os.path.join(git_dir, "commondir"))
    dirs = [git_dir] + ([os.path.normpath(os.path.join(git_dir, common))] if common else [])
    for d in dirs:
        sha = _read(os.path.join(d, *ref.split("/")))
        if sha and _SHA.match(sha):
            return sha
    for d in dirs:
        packed = _read(os.path.join(d, "packed-refs")) or ""
        for line in packed.splitlines():
            parts = line.split(" ", 1)
            if len(parts) == 2 and parts[1] == ref and _SHA.match(parts[0]):
                return parts[0]
    return None


def source_root(package_dir: str = _PACKAGE) -> str | None:
    """The checkout this package runs from (see the module docstring), or None for an installed copy."""
    root = os.path.dirname(package_dir)
    pyproject = _read(os.path.join(root, "pyproject.toml"))
    if pyproject and _PROJECT_NAME.search(pyproject) and os.path.exists(os.path.join(root, ".git")):
        return root
    return None


def commit(package_dir: str = _PACKAGE) -> str | None:
    """The commit of the running gmm_triton (the module docstring says where it comes from), or None."""
    root = source_root(package_dir)
    if root is not None:
        return head_commit(root)
    text = _read(os.path.join(package_dir, "_build_info.py")) or ""
    m = re.search(r'^COMMIT\s*=\s*"([0-9a-f]{40}(?:[0-9a-f]{24})?)"\s*$', text, re.MULTILINE)
    return m.group(1) if m else None
