"""Moment-matched Gaussian-mixture reverse kernels (DDIM-GMM; Gabbur, arXiv 2311.04938).

DDIM's reverse kernel N(μ_t, σ_t² I) is replaced by a mixture with the same first two moments (Eq. 7, 8):

    q(x_{t-1} | x_t, x̂₀) = Σ_k π_k N(μ_t + δ_k, σ_t² I − Δ_k),   Σ_k π_k δ_k = 0,
    Δ_k = C / (K₊ π_k),   C = Σ_l π_l δ_l δ_lᵀ                      (Eq. 11, the second form of Eq. 8)

so that Σ_k π_k (σ_t² I − Δ_k) + Σ_k π_k δ_k δ_kᵀ = σ_t² I; K₊ is the number of components with π_k > 0 (K when
all priors are positive: the paper's K π_k), since only those are ever drawn. The offsets δ_k are random full-size vectors
drawn once from a seed, shared by all samples (a [S, K, D] table, S = steps or 1 for the step-shared
``*`` variant); the component k is drawn per sample per step inside the fused op.

Offsets (paper §3.1), from O ∈ R^{D×K} with N(0, 1) entries (Philox stream 2 keyed by the seed, so the
same seed gives the same table on every device, bit for bit: it is built on the host):
    "rand"  (Eq. 9):  c_k = O_k − Σ_l π_l O_l,   δ_k = s c_k / ‖c_k‖              (‖δ_k‖ = s)
    "ortho" (Eq. 10): U = thin-QR(O) (Haar-distributed like the paper's SVD),  δ_k = s (U_k − Σ_l π_l U_l).
                      With uniform priors the δ_k are a randomly rotated regular simplex:
                      ‖δ_k‖ = s √(1 − 1/K), ⟨δ_k, δ_l⟩ = −s²/K, and C has K−1 eigenvalues s²/K.
Variances of component k in dimension d (each clipped at 0):
    "diag"  (Eq. 11, diagonal approximation):  σ_t² − diag(C)_d / (K₊ π_k)
    "vub"   (App. A.2, ORTHO-VUB): σ_t² − ub_k[d] on the first K flattened coordinates, σ_t² elsewhere, with
            Golub's eigenvalue upper bounds ub_k = s²/(K₊ π_k) · (π₍₁₎, π₍₁₎, π₍₂₎, …, π₍K−1₎), π sorted
            descending (s²/K for every coordinate with uniform priors). The bounds hold for ORTHO offsets;
            with RAND they are the same numbers, an approximation.
    "exact" (beyond the paper): z ~ N(0, σ_t² I − Δ_k) drawn exactly as σ z + Qᵀ((√(σ_t² − λ/(K₊ π_k)) − σ) ⊙ Q z),
            Q an orthonormal basis of span{δ} and λ the eigenvalues of C on it, so the mixture's covariance is
            exactly σ_t² I. Needs λ_max/(K₊ π_k) ≤ σ_t² at every step where the mixture applies.

With K = 1 or s = 0 every mode is DDIM: bit for bit for "diag" and "vub" on every backend, and for "exact" on the
CPU; on a GPU "exact" stores its noise (−σz, float32) between its two passes, one rounding from the Gaussian step's
fused multiply-add.

Where σ_t² is smaller than what a mode subtracts, "diag" clips (the paper's behaviour, A.5); "vub" raises
unless ``clip_variance=True`` (the paper's η = 0 ORTHO-VUB setting needs that); "exact" always raises.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

from .contract import MIX_BASIS, MIX_CDF, MIX_DELTA, MIX_EIG, MIX_TENSORS, MIX_VAR, MIX_WEIGHT, STREAM_TABLE
from .rng import philox_normal

OFFSETS = ("rand", "ortho")
# the schedulers' gmm_variance, spelled out for type checkers: contract.MIXTURE_VARIANCES in the same order
# (tests/test_contract.py); the modes themselves: build_mixture
VarianceMode = Literal["diag", "vub", "exact"]
VARIANCES = get_args(VarianceMode)
PRIORS = ("uniform", "random")


# the MixtureTensors field of each of the op's mixture tensors (contract.MIX_TENSORS)
_FIELDS = {"delta": "delta", "cdf": "cdf", "weight": "component_weight", "var": "var_table", "basis": "basis",
           "eig": "eigvals"}


@dataclass
class MixtureTensors:
    """The mixture as the fused op reads it. Build it with :func:`build_mixture`.

    delta [S, K, D]: offsets δ (fp32 or bf16); cdf [KP]: cumulative priors padded with 1.0 to a power of
    two; component_weight [KP]: 1/(K₊ π_k) (0 where π_k = 0 and in the padding); var_table: "diag" [S, D]
    = diag(C), "vub" [K, K] = ub_k; basis [S, KP, D] / eigvals [S, KP]: "exact" only.
    """

    delta: torch.Tensor
    cdf: torch.Tensor
    component_weight: torch.Tensor
    priors: torch.Tensor
    variance_mode: str
    scale: float
    var_table: torch.Tensor | None = None
    basis: torch.Tensor | None = None
    eigvals: torch.Tensor | None = None
    clip_variance: bool = False
    # per-step largest variance a component subtracts (max over k with π_k > 0), on the host
    max_offset_variance: torch.Tensor = field(default=None, repr=False)

    @property
    def k(self) -> int:
        return self.delta.shape[1]

    @property
    def kp(self) -> int:
        return self.cdf.numel()

    @property
    def num_tables(self) -> int:
        return self.delta.shape[0]

    @property
    def shared(self) -> bool:
        return self.delta.shape[0] == 1

    @property
    def dim(self) -> int:
        return self.delta.shape[2]

    @property
    def device(self) -> torch.device:
        return self.delta.device

    @property
    def nbytes(self) -> int:
        ts = (self.delta, self.cdf, self.component_weight, self.var_table, self.basis, self.eigvals)
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    def __repr__(self) -> str:
        return (f"MixtureTensors(K={self.k}, D={self.dim}, tables={self.num_tables}, scale={self.scale}, "
                f"variance={self.variance_mode!r}, dtype={self.delta.dtype}, device={self.device}, "
                f"memory={self.nbytes / 2**20:.2f} MiB)")

    def to(self, device) -> "MixtureTensors":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return MixtureTensors(mv(self.delta), mv(self.cdf), mv(self.component_weight), self.priors,
                              self.variance_mode, self.scale, mv(self.var_table), mv(self.basis),
                              mv(self.eigvals), self.clip_variance, self.max_offset_variance)

    # The op's schema takes tensors, not objects: these three are the mixture's only crossing of that border, as one
    # list in contract.MIX_TENSORS order (a new table is a new entry there and here, not a new op argument).
    def op_tensors(self) -> list:
        """The mixture's tensors as the op takes them: one list in contract.MIX_TENSORS order (unused ones None)."""
        return [getattr(self, _FIELDS[name]) for name in MIX_TENSORS]

    @classmethod
    def from_op_tensors(cls, tensors, variance_mode: str) -> "MixtureTensors":
        """The op side's view of :meth:`op_tensors` (priors and scale are not needed to sample)."""
        fields = {_FIELDS[name]: None if t is None else t.contiguous() for name, t in zip(MIX_TENSORS, tensors)}
        return cls(**fields, priors=None, variance_mode=variance_mode, scale=float("nan"))

    @staticmethod
    def check_op_tensors(tensors, variance_mode: str, D: int, device: torch.device) -> None:
        """Shapes, dtypes and devices of :meth:`op_tensors` (what the kernels index; no data is read)."""
        if len(tensors) != len(MIX_TENSORS):
            raise ValueError(f"the mixture must be the {len(MIX_TENSORS)} tensors {MIX_TENSORS} (None where unused), "
                             f"got {len(tensors)}")
        delta, cdf, weight, var, basis, eig = (tensors[i] for i in (MIX_DELTA, MIX_CDF, MIX_WEIGHT, MIX_VAR,
                                                                     MIX_BASIS, MIX_EIG))
        if delta is None:
            raise ValueError("a mixture needs its offsets")
        if delta.dim() != 3 or delta.shape[2] != D:
            raise ValueError(f"mixture offsets must be [S, K, D] with D={D} (the latent size), got "
                             f"{tuple(delta.shape)}")
        if any(t is not None and t.device != device for t in tensors):
            raise ValueError(f"mixture tensors must be on the sample's device {device}")
        if cdf is None or weight is None:
            raise ValueError("a mixture needs its cdf and component weights")
        S, K, _ = delta.shape
        kp = cdf.numel()
        if kp < K or kp & (kp - 1) or weight.numel() != kp:
            raise ValueError(f"mixture cdf and weights must hold K={K} values padded to a power of two, got "
                             f"{cdf.numel()} and {weight.numel()}")
        if delta.dtype not in (torch.float32, torch.bfloat16) or cdf.dtype != torch.float32 \
                or weight.dtype != torch.float32:
            raise TypeError("mixture offsets must be float32 or bfloat16, cdf and weights float32")
        if variance_mode in ("diag", "vub"):
            want = (S, D) if variance_mode == "diag" else (K, K)
            if var is None or tuple(var.shape) != want or var.dtype != torch.float32:
                raise ValueError(f"variance_mode {variance_mode!r} needs a float32 variance table of shape {want}")
        if variance_mode == "exact":
            if basis is None or eig is None or tuple(basis.shape) != (S, kp, D) or tuple(eig.shape) != (S, kp):
                raise ValueError(f"variance_mode 'exact' needs the basis [{S}, {kp}, {D}] and eigenvalues [{S}, {kp}]")
            if basis.dtype not in (torch.float32, torch.bfloat16) or eig.dtype != torch.float32:
                raise TypeError("mixture basis must be float32 or bfloat16, eigenvalues float32")

    def variance_bytes_per_step(self) -> int:
        """Bytes of the variance mode's own tables that one step reads (a benchmark floor's share): "diag" its
        diag(C) row, "vub" the K×K bounds, "exact" the step's basis and eigenvalues."""
        def step_slice(t):  # one step's [..] of an [S, ..] table
            return t[0].numel() * t.element_size()

        if self.variance_mode == "diag":
            return step_slice(self.var_table)
        if self.variance_mode == "vub":
            return self.var_table.numel() * self.var_table.element_size()
        if self.variance_mode == "exact":
            return step_slice(self.basis) + step_slice(self.eigvals)
        raise ValueError(f"unknown mixture variance mode {self.variance_mode!r}")

    def check_variance(self, sigma2: torch.Tensor, applies: torch.Tensor, steps=None) -> None:
        """Raises if a component needs more variance than σ_t² at a step where the mixture applies.

        sigma2[i], applies[i]: σ_t² and whether the offsets apply at schedule step i (host tensors);
        steps: optional labels (e.g. timesteps) for the message.
        """
        if self.variance_mode == "diag" or (self.variance_mode == "vub" and self.clip_variance):
            return
        need = self.max_offset_variance
        need = need.expand(len(sigma2)) if need.numel() == 1 else need
        bad = applies & (need > sigma2 * (1 + 1e-6) + 1e-12)
        if bad.any():
            i = int(bad.nonzero()[0])
            label = f"step {i}" + (f" (timestep {int(steps[i])})" if steps is not None else "")
            ratio = math.sqrt(float(sigma2[i]) / float(need[i])) if float(need[i]) > 0 else 0.0
            hint = ("raise eta, lower gmm_scale, use gmm_variance='diag', or set gmm_clip_variance=True to clip "
                    "at 0 as the paper does (App. A.5)" if self.variance_mode == "vub"
                    else "raise eta, lower gmm_scale, or use gmm_variance='diag'/'vub'")
            raise ValueError(
                f"gmm_scale={self.scale} is too large for the {self.variance_mode!r} mixture variance at {label}: "
                f"a component subtracts {float(need[i]):.4g} from the step's variance σ_t²={float(sigma2[i]):.4g} "
                f"(bound: gmm_scale <= {self.scale * ratio:.4g} at this step); {hint}."
            )


def resolve_priors(priors, K: int, seed: int) -> torch.Tensor:
    """π as float64 [K]: "uniform", "random" (Dirichlet(1,…,1), i.e. uniform on the simplex, from the seed) or values."""
    if isinstance(priors, str):
        if priors == "uniform":
            return torch.full((K,), 1.0 / K, dtype=torch.float64)
        if priors == "random":
            g = torch.Generator().manual_seed((int(seed) + 1) % 2**64)
            e = -torch.log1p(-torch.rand(K, generator=g, dtype=torch.float64))  # Exp(1) spacings
            return e / e.sum()
        raise ValueError(f"gmm_priors must be one of {PRIORS} or a sequence of K probabilities, got {priors!r}")
    p = torch.as_tensor(priors, dtype=torch.float64).reshape(-1)
    if p.numel() != K:
        raise ValueError(f"gmm_priors has {p.numel()} values but gmm_components K={K}")
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"gmm_priors must be finite and non-negative, got {p.tolist()}")
    if abs(float(p.sum()) - 1.0) > 1e-6:
        raise ValueError(f"gmm_priors must sum to 1, got sum {float(p.sum()):.8g}")
    return p


def build_mixture(
    dim: int,
    num_steps: int,
    *,
    components: int = 8,
    scale: float = 0.3,
    offsets: str = "ortho",
    variance: str = "vub",
    shared: bool = False,
    priors="uniform",
    seed: int = 0,
    device=None,
    dtype: torch.dtype = torch.float32,
    clip_variance: bool = True,
) -> MixtureTensors:
    """Builds the mixture parameters for latents of D = ``dim`` elements and a ``num_steps``-step schedule.

    Deterministic in ``seed``. Built on the host (the only large work is one batched thin QR or normalisation of
    [S, D, K] and a few [S, K, D] passes, ~0.1 s at S=50, K=8, D=65536 on two cores; never a D×D matrix), then
    copied to ``device``: every device gets the same bits, and building reads nothing back from a device.
    ``dtype`` is the storage of the offsets and basis (float32, or bfloat16 to halve their traffic).
    The defaults are the schedulers' (ORTHO-VUB, K = 8, s = 0.3, clipping as the paper does, so that η = 0
    works); the measurements behind s = 0.3 are in ``GMMDDIMScheduler``'s docstring (``gmm_scale``).
    """
    for name, v in (("dim", dim), ("num_steps", num_steps), ("components", components), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {v!r}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a number, got {scale!r}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    K, D = int(components), int(dim)
    if K < 1:
        raise ValueError(f"gmm_components must be >= 1, got {K}")
    if K > D:
        raise ValueError(f"gmm_components K={K} must not exceed the latent size D={D}")
    if offsets not in OFFSETS:
        raise ValueError(f"gmm_offsets must be one of {OFFSETS}, got {offsets!r}")
    if variance not in VARIANCES:
        raise ValueError(f"gmm_variance must be one of {VARIANCES}, got {variance!r}")
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"gmm_scale must be finite and >= 0, got {scale}")
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"mixture dtype must be float32 or bfloat16, got {dtype}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    S = 1 if shared else int(num_steps)
    if S < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    pri64 = resolve_priors(priors, K, seed)
    pri = pri64.float()

    O = philox_normal((S, K, D), seed=seed, stream=STREAM_TABLE)  # rows = the paper's columns O_k
    if offsets == "rand":
        c = O - torch.einsum("k,skd->sd", pri, O)[:, None, :]
        delta = scale * c / c.norm(dim=2, keepdim=True).clamp_min(1e-30)
    else:
        U = torch.linalg.qr(O.transpose(1, 2), mode="reduced").Q.transpose(1, 2)   # [S, K, D], orthonormal rows
        delta = scale * (U - torch.einsum("k,skd->sd", pri, U)[:, None, :])

    kp = 1 << (K - 1).bit_length()
    cdf64 = torch.cumsum(pri64, 0).clamp(max=1.0)
    last = int((pri64 > 0).nonzero().max())
    cdf64[last:] = 1.0          # no component after the last positive prior can be drawn
    cdf = torch.ones(kp, dtype=torch.float32)
    cdf[:K] = cdf64.float()
    # Δ_k = C / (K₊ π_k) over the K₊ components with π_k > 0, so that Σ_k π_k Δ_k = C (with K in place of K₊, zero
    # priors would leave (K₊/K) C uncompensated); the other components are never drawn
    kpos = int((pri64 > 0).sum())
    w = torch.zeros(kp, dtype=torch.float64)
    w[:K] = torch.where(pri64 > 0, 1.0 / (kpos * pri64.clamp_min(1e-300)), torch.zeros_like(pri64))
    wmax = float(w.max())

    var_table = basis = eig = None
    if variance == "diag":
        var_table = torch.einsum("k,skd->sd", pri, delta * delta)
        need = torch.zeros(S, dtype=torch.float64)  # diag clips; nothing to check
    elif variance == "vub":
        srt = torch.sort(pri64, descending=True).values
        shifted = torch.cat([srt[:1], srt[:-1]])                  # π(1), π(1), π(2), …, π(K-1)
        ub = (scale**2) * w[:K, None] * shifted[None, :]
        if K == 1:
            ub.zero_()  # one component: δ = 0 and Δ = 0 exactly; Golub's bound (s²) is loose there
        var_table = ub.float()
        need = torch.full((S,), float(ub.max()), dtype=torch.float64)
    elif variance == "exact":
        A = (delta.double() * pri64.sqrt()[None, :, None])             # C = Σ_k A_k A_kᵀ
        G = A @ A.transpose(1, 2)                                                  # [S, K, K] Gram
        lam, V = torch.linalg.eigh(G)
        keep = lam > lam.amax(dim=1, keepdim=True) * 1e-9
        inv = torch.where(keep, lam.clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))
        Q = (V * inv[:, None, :]).transpose(1, 2) @ A                              # rows q_j = Aᵀ v_j / √λ_j
        basis = torch.zeros(S, kp, D, dtype=dtype)
        basis[:, :K] = Q.to(dtype)
        eig = torch.zeros(S, kp, dtype=torch.float32)
        eig[:, :K] = torch.where(keep, lam, torch.zeros_like(lam)).float()
        need = lam.amax(dim=1) * wmax
    else:  # a mode in VarianceMode whose tables are not written here yet: an error, never another mode's tables
        raise NotImplementedError(f"build_mixture builds no tables for variance {variance!r}")

    return MixtureTensors(
        delta=delta.to(dtype).contiguous(), cdf=cdf, component_weight=w.float(), priors=pri64,
        variance_mode=variance, scale=float(scale), var_table=var_table, basis=basis, eigvals=eig,
        clip_variance=bool(clip_variance), max_offset_variance=need,
    ).to(device)
