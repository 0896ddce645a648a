"""SAMPLER nodes over gmm_triton's k-diffusion-convention samplers (gmm_triton.samplers), for ComfyUI's
SamplerCustom / SamplerCustomAdvanced.

Each node returns ``comfy.samplers.KSAMPLER(sample_gmm_triton, extra_options)``: ComfyUI then calls
``sample_gmm_triton(model, noise, sigmas, extra_args=…, callback=…, disable=…, **extra_options)``, which picks the
sampler from the model's ``model_sampling`` (the object ComfyUI's own samplers read): rectified-flow models (``CONST``:
SD3, Flux, ...) get RFIM / RFIM-GMM, the others (ε, v, x̂₀ predictions in σ coordinates) DDIM / DDIM-GMM.

Noise: ``"philox"`` draws it inside the fused kernel from the sampler's noise seed (``extra_args["seed"]``);
``"comfy"`` uses ComfyUI's own noise sampler for that seed, so that the Gaussian kernel reproduces ComfyUI's
``euler_ancestral`` latents (and ``euler`` at η = 0).
"""
from __future__ import annotations

_MAX_SEED = 0xFFFFFFFFFFFFFFFF


def _mixture_inputs():
    """The mixture's options, named and defaulted as in gmm_triton's schedulers and samplers."""
    from gmm_triton.mixture import OFFSETS, PRIORS, VARIANCES  # the modes the library offers, never a copy

    return {
        "gmm_components": ("INT", {"default": 8, "min": 1, "max": 256,
                                   "tooltip": "K, the number of mixture components"}),
        "gmm_scale": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 100.0, "step": 0.01,
                                "tooltip": "s, the offsets' scale in the latent (0: the Gaussian kernel)"}),
        "gmm_offsets": (list(OFFSETS), {"default": "ortho"}),
        "gmm_variance": (list(VARIANCES), {"default": "vub"}),
        "gmm_shared": ("BOOLEAN", {"default": False, "tooltip": "one offset table for all steps"}),
        "gmm_priors": (list(PRIORS), {"default": "uniform"}),
        "gmm_seed": ("INT", {"default": 0, "min": 0, "max": _MAX_SEED, "tooltip": "seed of the offset tables"}),
        "gmm_clip_variance": ("BOOLEAN", {"default": True}),
        "gmm_offset_final": ("BOOLEAN", {"default": False}),
        "gmm_dtype": (["float32", "bfloat16"], {"default": "float32"}),
    }


def _is_flow(model) -> bool:
    """Whether the model is a rectified flow (x = (1 − σ) x₀ + σ ε): ComfyUI's CONST model sampling."""
    import comfy.model_sampling

    return isinstance(model.inner_model.inner_model.model_sampling, comfy.model_sampling.CONST)


def sample_gmm_triton(model, x, sigmas, extra_args=None, callback=None, disable=None, *, kernel="gmm", eta=1.0,
                      s_noise=1.0, noise="philox", family="auto", eta_convention="rfim", **mixture):
    """ComfyUI's sampler function: DDIM(-GMM) or RFIM(-GMM) by the model's sampling (``family="auto"``), or the one
    ``family`` names ("ddim" / "rfim", checked against the model). ``eta_convention="euler_ancestral_RF"`` reads η as
    ComfyUI's ``euler_ancestral_RF`` does (mapped to RFIM's per-step η by gmm_triton.samplers.rf_ancestral_eta)."""
    import gmm_triton.samplers as gs

    extra_args = {} if extra_args is None else extra_args
    flow = _is_flow(model)
    if family != "auto" and (family == "rfim") != flow:
        raise ValueError(f"this node samples {family.upper()}, but the model is "
                         f"{'a rectified flow (CONST)' if flow else 'not a rectified flow'}: use the "
                         f"{'RFIM' if flow else 'DDIM'} node, or family='auto'")
    noise_sampler = None
    if noise == "comfy":
        from comfy.k_diffusion.sampling import default_noise_sampler

        noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed"))
    elif noise != "philox":
        raise ValueError(f"noise must be 'philox' or 'comfy', got {noise!r}")
    if flow and eta_convention == "euler_ancestral_RF":
        eta = gs.rf_ancestral_eta(sigmas, eta)
    elif eta_convention != "rfim":
        raise ValueError(f"eta_convention must be 'rfim' or 'euler_ancestral_RF', got {eta_convention!r}")
    if kernel == "gmm":
        fn = gs.sample_rfim_gmm if flow else gs.sample_ddim_gmm
    elif kernel == "gaussian":
        fn, mixture = (gs.sample_rfim if flow else gs.sample_ddim), {}
    else:
        raise ValueError(f"kernel must be 'gmm' or 'gaussian', got {kernel!r}")
    return fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, eta=eta, s_noise=s_noise,
              noise_sampler=noise_sampler, **mixture)


class _SamplerNode:
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    CATEGORY = "sampling/custom_sampling/samplers"
    FAMILY = "auto"

    def get_sampler(self, **options):
        import comfy.samplers
        from gmm_triton.schedulers.common import check_mixture_options

        mixture = {k: v for k, v in options.items() if k.startswith("gmm_")}
        check_mixture_options(**mixture)  # a bad setting fails when the node runs, naming its input
        return (comfy.samplers.KSAMPLER(sample_gmm_triton, extra_options=dict(options, family=self.FAMILY)),)


class SamplerDDIMGMM(_SamplerNode):
    DESCRIPTION = ("DDIM (kernel 'gaussian': ComfyUI's euler_ancestral step, fused) or DDIM-GMM (kernel 'gmm': the "
                   "moment-matched Gaussian-mixture reverse kernel). On a rectified-flow model (SD3, Flux) it runs "
                   "RFIM / RFIM-GMM with σ_up = η σ'.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "kernel": (["gmm", "gaussian"], {"default": "gmm"}),
            "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01,
                              "tooltip": "noise weight: 0 is Euler (DDIM η = 0), 1 is euler_ancestral"}),
            "s_noise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}),
            "noise": (["philox", "comfy"], {"default": "philox",
                                            "tooltip": "philox: in-kernel noise from the noise seed; comfy: "
                                                       "ComfyUI's noise sampler (euler_ancestral's noise)"}),
            **_mixture_inputs(),
        }}


class SamplerRFIMGMM(_SamplerNode):
    DESCRIPTION = ("RFIM / RFIM-GMM for rectified-flow models (CONST model sampling: SD3, Flux, ...): "
                   "x' = (1 − σ') x̂₀ + √(σ'² − σ_up²) ε̂ + noise. eta_convention 'rfim': σ_up = η σ'; "
                   "'euler_ancestral_RF': η as ComfyUI's euler_ancestral_RF reads it (same latents).")
    FAMILY = "rfim"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "kernel": (["gmm", "gaussian"], {"default": "gmm"}),
            "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            "eta_convention": (["rfim", "euler_ancestral_RF"], {"default": "rfim"}),
            "s_noise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}),
            "noise": (["philox", "comfy"], {"default": "philox"}),
            **_mixture_inputs(),
        }}


KSAMPLER_ENTRY = "ddim_gmm"


def register_ksampler_entry() -> bool:
    """Adds ``"ddim_gmm"`` to the sampler list of ComfyUI's plain KSampler / KSamplerAdvanced nodes (and
    SamplerCustom's KSamplerSelect): DDIM-GMM, or RFIM-GMM on a rectified-flow model, with every option at its
    default (η = 1, Philox noise from the node's seed, the schedulers' mixture defaults); the SAMPLER nodes above
    expose the options. ComfyUI finds a list entry's function as ``comfy.k_diffusion.sampling.sample_<name>``, so the
    function is added there under that name; ComfyUI's own entries and functions are left as they are. Idempotent.
    Returns False outside ComfyUI (no ``comfy`` to import)."""
    try:
        import comfy.k_diffusion.sampling as kds
        import comfy.samplers
    except ImportError:
        return False
    setattr(kds, f"sample_{KSAMPLER_ENTRY}", sample_gmm_triton)
    # KSAMPLER_NAMES: what comfy.samplers.ksampler accepts; SAMPLER_NAMES (= KSampler.SAMPLERS): the nodes' lists
    for names in (comfy.samplers.KSAMPLER_NAMES, comfy.samplers.SAMPLER_NAMES):
        if KSAMPLER_ENTRY not in names:
            names.append(KSAMPLER_ENTRY)
    return True


NODE_CLASS_MAPPINGS = {"SamplerDDIMGMM": SamplerDDIMGMM, "SamplerRFIMGMM": SamplerRFIMGMM}
NODE_DISPLAY_NAME_MAPPINGS = {"SamplerDDIMGMM": "DDIM-GMM sampler (gmm-triton)",
                              "SamplerRFIMGMM": "RFIM-GMM sampler (gmm-triton)"}
