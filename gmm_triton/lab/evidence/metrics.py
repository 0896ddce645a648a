"""Sample quality in the classifier's feature space (:mod:`.classifier`), against the 1000 held-out digits.

For generated features F_g [n, 128] (with predicted labels) and held-out features F_r [m, 128] (true labels):

    fid        ‖μ_g − μ_r‖² + tr(Σ_g + Σ_r − 2 (Σ_g^½ Σ_r Σ_g^½)^½)  (Gaussian fits, float64; ``..metrics``)
    precision  fraction of generated points inside the union of real k-NN balls: ‖f_g − f_r‖ ≤ r_k(f_r) for some r
    recall     fraction of real points inside the union of generated k-NN balls          (Kynkäänniemi et al. 2019,
               k = 3; r_k(f) is the distance from f to its k-th nearest neighbour within its own set)
    class_tv   total variation ½ Σ_c |p_g(c) − p_r(c)| between the histogram of the classifier's labels of the samples
               and the held-out set's class histogram (uniform: 100 per class)

All depend on n: FID of n exact samples is biased upwards by ≈ tr(Σ)/n-type terms, precision and recall shrink with
fewer reference points. Compare rows at equal n, and read them beside the floor (:func:`evaluate` on real images).
"""
from __future__ import annotations

import torch

from ..metrics import frechet_distance_from_moments, gaussian_moments
from .data import CLASSES

KNN = 3


def knn_radii(f: torch.Tensor, k: int = KNN) -> torch.Tensor:
    """Distance from each row of f to its k-th nearest other row (float64)."""
    d = torch.cdist(f, f)
    return d.kthvalue(k + 1, dim=1).values  # the 1st smallest is the point itself (distance 0)


def precision_recall(fg: torch.Tensor, fr: torch.Tensor, k: int = KNN) -> tuple[float, float]:
    """k-NN precision and recall of generated features fg against real features fr (module docstring)."""
    d = torch.cdist(fg, fr)  # [n, m]
    precision = (d <= knn_radii(fr, k)[None, :]).any(1).double().mean()
    recall = (d <= knn_radii(fg, k)[:, None]).any(0).double().mean()
    return float(precision), float(recall)


def class_tv(labels: torch.Tensor, reference_labels: torch.Tensor) -> float:
    """½ Σ_c |p(c) − p_ref(c)| of two label histograms over the 10 classes."""
    p = torch.bincount(labels, minlength=CLASSES).double() / len(labels)
    q = torch.bincount(reference_labels, minlength=CLASSES).double() / len(reference_labels)
    return float(0.5 * (p - q).abs().sum())


def evaluate(features: torch.Tensor, labels: torch.Tensor, reference_features: torch.Tensor,
             reference_labels: torch.Tensor) -> dict:
    """{"fid", "precision", "recall", "class_tv"} of samples' (features, predicted labels) against the reference's
    (features, true labels)."""
    if features.shape[0] <= KNN or reference_features.shape[0] <= KNN:
        raise ValueError(f"need more than k = {KNN} samples and reference points, got {features.shape[0]} and "
                         f"{reference_features.shape[0]}")
    precision, recall = precision_recall(features, reference_features)
    fid = frechet_distance_from_moments(*gaussian_moments(features), *gaussian_moments(reference_features))
    return dict(fid=fid, precision=precision, recall=recall, class_tv=class_tv(labels, reference_labels))
