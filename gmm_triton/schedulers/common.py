"""What the DDIM and flow schedulers share: their kernel options and the mixture each builds at its first step."""
from __future__ import annotations

import math
import numbers

import torch

from ..coefficients import COL_FINAL, COL_VAR
from ..mixture import OFFSETS, PRIORS, VARIANCES, MixtureTensors, build_mixture, resolve_priors

KERNELS = ("gaussian", "gmm")
NOISE_SOURCES = ("philox", "torch")
GMM_DTYPES = ("float32", "bfloat16")
SEED_LIMIT = 2**64  # the Philox key is 64 bits


def one_of(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")


def check_number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")


def check_flag(name, value):
    if not isinstance(value, bool):  # a truthy string such as "no" must not switch a feature on
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check_kernel_options(*, kernel, noise_source, **mixture_options):
    """Validates the config keys both schedulers add to diffusers' at construction (each error names its key),
    so that a bad mixture setting fails there rather than at the first ``step``."""
    one_of("kernel", kernel, KERNELS)
    one_of("noise_source", noise_source, NOISE_SOURCES)
    check_mixture_options(**mixture_options)


def check_mixture_options(*, gmm_components, gmm_scale, gmm_offsets, gmm_variance, gmm_shared, gmm_priors, gmm_seed,
                          gmm_clip_variance, gmm_offset_final, gmm_dtype):
    """The mixture's options (the schedulers' config keys and the k-diffusion samplers' arguments), each error
    naming its key."""
    one_of("gmm_offsets", gmm_offsets, OFFSETS)
    one_of("gmm_variance", gmm_variance, VARIANCES)
    one_of("gmm_dtype", gmm_dtype, GMM_DTYPES)
    for name, value in (("gmm_shared", gmm_shared), ("gmm_clip_variance", gmm_clip_variance),
                        ("gmm_offset_final", gmm_offset_final)):
        check_flag(name, value)
    check_int("gmm_components", gmm_components)
    if gmm_components < 1:
        raise ValueError(f"gmm_components must be >= 1, got {gmm_components}")
    check_number("gmm_scale", gmm_scale)
    if not (math.isfinite(gmm_scale) and gmm_scale >= 0):
        raise ValueError(f"gmm_scale must be finite and >= 0, got {gmm_scale}")
    check_int("gmm_seed", gmm_seed)
    if not 0 <= gmm_seed < SEED_LIMIT:
        raise ValueError(f"gmm_seed must be in [0, 2**64), got {gmm_seed}")
    if isinstance(gmm_priors, str):
        one_of("gmm_priors", gmm_priors, PRIORS)
    else:
        try:
            values = [float(v) for v in gmm_priors]
        except (TypeError, ValueError):
            raise TypeError(f"gmm_priors must be one of {PRIORS} or a list of gmm_components probabilities, "
                            f"got {gmm_priors!r}") from None
        resolve_priors(values, gmm_components, gmm_seed)  # length K, finite, non-negative, sum 1


def step_generator(generator, batch: int, draws: bool):
    """A step's ``generator`` as diffusers' ``randn_tensor`` reads it, for a batch of ``batch`` samples: a list of
    one is that generator, for the whole batch; a longer list gives sample b ``generator[b]`` and leaves the rest
    unused (Marigold passes every ensemble member's generator to each chunk of its batch); a shorter one is refused
    (diffusers fails there with an IndexError). ``draws``: whether the step draws anything (η > 0, or the mixture's
    component); if not, the generator is unused, whatever it is, as in diffusers. What comes back, the noise source
    and the Philox seeds both read."""
    if not draws:
        return None
    if not isinstance(generator, (list, tuple)):
        return generator
    if len(generator) == 1:
        return generator[0]
    if len(generator) < batch:
        raise ValueError(f"generator: a list of {len(generator)} generators for a batch of {batch}; sample b draws "
                         "from generator[b] (as in diffusers), so the list needs at least one per sample")
    return list(generator[:batch])


class SampleOffsetMixin:
    """The global index of a batch's first sample, for sharded or batched sampling runs.

    With ``noise_source="philox"``, sample b of a step draws its noise at Philox counters from
    (sample_offset + b)·D and its mixture component at sample_offset + b: set it once per batch and a sample's
    whole trajectory depends on (seed of each step, its global index) only, not on the batch size or the process
    that draws it (``gmm-triton generate`` does this; seed each batch's generator identically so the steps draw
    the same seeds). It stays until changed; 0 by default. ``noise_source="torch"`` noise ignores it.
    """

    _sample_offset = None

    def set_sample_offset(self, offset) -> None:
        """offset: an int >= 0, or an int64 tensor of one element (a CUDA tensor is read by the kernel)."""
        if isinstance(offset, torch.Tensor):
            if offset.dtype.is_floating_point or offset.dtype == torch.bool or offset.numel() != 1:
                raise ValueError(f"sample_offset must be an integer tensor of one element, got {offset.dtype} "
                                 f"{tuple(offset.shape)}")
        elif isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or offset < 0:
            raise ValueError(f"sample_offset must be an int >= 0 or an integer tensor, got {offset!r}")
        self._sample_offset = offset

    @property
    def sample_offset(self):
        return self._sample_offset if self._sample_offset is not None else 0


class MixtureCache:
    """A scheduler's mixtures: built at the first step for a latent shape (D is known only then), cached per
    (D, device, dtype), checked once per η against the schedule's σ², emptied by ``set_timesteps``."""

    def __init__(self):
        self.mixtures: dict = {}
        self._checked: set = set()

    def clear(self):
        self.mixtures.clear()
        self._checked.clear()

    def get(self, config, sample: torch.Tensor, num_tables: int, eta: float, rows: torch.Tensor,
            steps: torch.Tensor) -> MixtureTensors:
        """rows: the host table rows of the schedule's steps (σ² = η² var); steps: their labels for errors."""
        D = math.prod(sample.shape[1:])
        key = (D, sample.device, sample.dtype)
        mix = self.mixtures.get(key)
        if mix is None:
            mix = self.mixtures[key] = mixture_of(config, D, num_tables, sample.device)
        if (key, eta) not in self._checked and not torch.compiler.is_compiling():
            check_mixture_variance(mix, config, eta, rows, steps)
            self._checked.add((key, eta))
        return mix


def mixture_of(options, D: int, num_tables: int, device) -> MixtureTensors:
    """The mixture that the ``gmm_*`` options (attributes of ``options``: a scheduler's config) describe."""
    return build_mixture(
        D, num_tables, components=options.gmm_components, scale=options.gmm_scale, offsets=options.gmm_offsets,
        variance=options.gmm_variance, shared=options.gmm_shared, priors=options.gmm_priors, seed=options.gmm_seed,
        device=device, clip_variance=options.gmm_clip_variance,
        dtype=torch.bfloat16 if options.gmm_dtype == "bfloat16" else torch.float32,
    )


def check_mixture_variance(mix: MixtureTensors, options, eta: float, rows: torch.Tensor, steps) -> None:
    """Raises where a component needs more variance than a step has (σ² = η² var of the host table ``rows``)."""
    applies = (rows[:, COL_FINAL] == 0) | bool(options.gmm_offset_final)
    mix.check_variance(eta**2 * rows[:, COL_VAR], applies, steps=steps)
