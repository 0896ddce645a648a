"""The evidence's feature extractor: a small CNN classifier trained on the same 4000 MNIST-5k training digits.

Inception features know nothing of 28×28 digits; a classifier trained on this very data does, and its penultimate
layer (128 ReLU units) is the space in which :mod:`.metrics` measures FID, precision and recall. Its argmax labels
give the class histogram. Architecture (≈ 0.43 M parameters)::

    conv3×3(1→32) ReLU  conv3×3(32→32) ReLU  maxpool2   (28 → 14)
    conv3×3(32→64) ReLU  maxpool2                       (14 → 7)
    linear(64·7·7 → 128) ReLU  = features               linear(128 → 10) = logits

Training: cross-entropy, Adam (lr 1e-3), batch 128, images shifted by up to ±2 pixels (zero fill) at random, one
thread, every draw from one seeded generator. Its accuracy on the 1000 held-out digits is recorded with it (and in
the evidence table). Images go in as the model space of :mod:`.data` ([−1, 1]); generated samples are first
rounded to 8-bit pixels as a saved image would be (:func:`.data.to_pixels`).
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from ..distill.loop import single_threaded, write_json
from .data import CLASSES, mnist5k

FEATURES = 128
DEFAULTS = dict(epochs=12, batch=128, lr=1e-3, shift=2)


class DigitCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * 7 * 7, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, CLASSES)

    def forward(self, x):
        return self.head(self.body(x))

    @torch.inference_mode()
    def features_and_labels(self, x: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features [N, 128] float64, predicted labels [N]) of images [N, 1, 28, 28] in [−1, 1]."""
        feats, labels = [], []
        for i in range(0, x.shape[0], batch):
            f = self.body(x[i:i + batch].float())
            feats.append(f.double())
            labels.append(self.head(f).argmax(1))
        return torch.cat(feats), torch.cat(labels)


def random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Each image translated by (dy, dx) ~ U{−m…m}², the uncovered border filled with the background (−1)."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    m = max_shift
    padded = torch.nn.functional.pad(x, (m, m, m, m), value=-1.0)
    dy, dx = torch.randint(0, 2 * m + 1, (2, n), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


@single_threaded
def train_classifier(out: str, *, seed: int = 0, progress: bool = True, **overrides) -> tuple[DigitCNN, dict]:
    """Trains (or loads, when ``out`` holds one made with the same settings) the classifier; returns it (eval mode)
    and its record (settings, held-out accuracy, seconds)."""
    import time

    from tqdm.auto import tqdm

    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown classifier settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    config = dict(seed=seed, **{**DEFAULTS, **overrides})
    weights, record_path = os.path.join(out, "classifier.pt"), os.path.join(out, "classifier.json")
    net = DigitCNN()
    if os.path.exists(weights) and os.path.exists(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if record["config"] == config:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            return net.eval().requires_grad_(False), record
    x, y = mnist5k("train")
    xh, yh = mnist5k("held_out")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = DigitCNN()
    opt = torch.optim.Adam(net.parameters(), lr=config["lr"])
    per_epoch = -(-len(x) // config["batch"])
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in tqdm(range(config["epochs"]), desc="train classifier", disable=not progress):
        order = torch.randperm(len(x), generator=g)
        for i in range(per_epoch):
            idx = order[i * config["batch"]:(i + 1) * config["batch"]]
            loss = nn.functional.cross_entropy(net(random_shift(x[idx], config["shift"], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval().requires_grad_(False)
    _, pred = net.features_and_labels(xh)
    record = dict(config=config, held_out_accuracy=float((pred == yh).double().mean()), held_out=len(yh),
                  seconds=round(time.perf_counter() - t0, 2), cpu_seconds=round(time.process_time() - c0, 2))
    os.makedirs(out, exist_ok=True)
    torch.save(net.state_dict(), weights)
    write_json(record, record_path)
    return net, record
