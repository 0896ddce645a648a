"""The ComfyUI node package (integrations/comfyui/) inside the real ComfyUI (the a125cd8 snapshot in shared/vendor/).

ComfyUI is unpacked into .cache/ and imported as ComfyUI runs it (CPU mode); our package is loaded by ComfyUI's own
custom-node loader from its custom_nodes/ folder; samples go through ``comfy.samplers.KSAMPLER.sample`` with a small
model wrapped in a real ``comfy.model_sampling`` object (EPS: SD1-style discrete schedule; CONST: a rectified flow),
against ComfyUI's own ``euler_ancestral`` / ``euler`` samplers (``comfy.samplers.ksampler``). Runs in
``make test-integrations`` (it needs requirements-integrations.txt).
"""
import asyncio
import os
import shutil
import sys
import types

import pytest
import torch

from integrations.vendor import REPO, import_torchvision, unpack

pytestmark = pytest.mark.integrations

SHAPE = (2, 4, 8, 8)


@pytest.fixture(scope="module")
def comfy():
    root = unpack("ComfyUI-a125cd8.tar.gz") / "ComfyUI"
    sys.path.insert(0, str(root))
    import_torchvision()
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # as `python main.py --cpu`: model_management then never asks for CUDA
    import comfy.model_base
    import comfy.model_sampling
    import comfy.samplers
    import nodes

    # our package, placed in custom_nodes/ as a user installs it, loaded by ComfyUI's own loader
    dest = root / "custom_nodes" / "comfyui-gmm-triton"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(REPO / "integrations" / "comfyui", dest)
    assert asyncio.run(nodes.load_custom_node(str(dest))) is True
    return types.SimpleNamespace(root=root, dest=dest, nodes=nodes, samplers=comfy.samplers,
                                 model_base=comfy.model_base, model_sampling=comfy.model_sampling)


class _Model:
    """What ComfyUI's CFGGuider hands a sampler as ``model_wrap``: callable (x, σ) → x̂₀, with the base model (and its
    model_sampling) as ``inner_model``. The network is a fixed smooth function of the scaled input and timestep; the
    conversions between x, σ and x̂₀ are the real model_sampling's."""

    def __init__(self, ms):
        self.inner_model = types.SimpleNamespace(model_sampling=ms)
        self.calls = []

    def __call__(self, x, sigma, model_options={}, seed=None):  # noqa: B006 (ComfyUI's signature)
        self.calls.append(seed)
        ms = self.inner_model.model_sampling
        xin = ms.calculate_input(sigma, x)
        t = ms.timestep(sigma).reshape(-1, 1, 1, 1).float()
        out = 0.6 * torch.tanh(xin) + 0.1 * torch.sin(xin * 3 + t / 500)
        return ms.calculate_denoised(sigma, out, x)


def _model(comfy, kind):
    mt = comfy.model_base.ModelType.EPS if kind == "eps" else comfy.model_base.ModelType.FLOW
    settings = {} if kind == "eps" else {"shift": 3.0, "multiplier": 1.0}
    return _Model(comfy.model_base.model_sampling(types.SimpleNamespace(sampling_settings=settings), mt))


def _run(comfy, sampler, kind, steps=8, seed=42, scheduler="karras"):
    """KSAMPLER.sample as comfy.samplers' CFGGuider calls it: returns (latents, model)."""
    model = _model(comfy, kind)
    ms = model.inner_model.model_sampling
    sigmas = comfy.samplers.calculate_sigmas(ms, scheduler if kind == "eps" else "simple", steps)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    latent = torch.zeros(SHAPE)
    out = sampler.sample(model, sigmas, {"model_options": {}, "seed": seed}, None, noise, latent_image=latent,
                         disable_pbar=True)
    return out, model


def _node(comfy, name, **options):
    cls = comfy.nodes.NODE_CLASS_MAPPINGS[name]
    inputs = cls.INPUT_TYPES()["required"]
    kw = {k: (v[1]["default"] if len(v) > 1 and "default" in v[1] else v[0][0]) for k, v in inputs.items()}
    kw.update(options)
    (sampler,) = getattr(cls(), cls.FUNCTION)(**kw)
    assert isinstance(sampler, comfy.samplers.KSAMPLER) and cls.RETURN_TYPES == ("SAMPLER",)
    return sampler


def _close(a, b):
    assert a.shape == b.shape and torch.isfinite(a).all()
    assert (a - b).abs().max() <= 2e-5 * (1 + b.abs().max()), (a - b).abs().max()


def test_loaded_by_comfyui_loader(comfy):
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    assert m["SamplerDDIMGMM"].RELATIVE_PYTHON_MODULE == "custom_nodes.comfyui-gmm-triton"
    assert comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS["SamplerRFIMGMM"] == "RFIM-GMM sampler (gmm-triton)"
    from comfy_config import config_parser  # ComfyUI's reader of a node package's pyproject.toml

    cfg = config_parser.extract_node_configuration(str(comfy.dest))
    assert cfg.project.name == "comfyui-gmm-triton" and cfg.tool_comfy.publisher_id == "gmm-triton"
    assert cfg.tool_comfy.display_name == "GMM-Triton samplers"


@pytest.mark.parametrize("kind", ["eps", "flow"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_gaussian_node_equals_comfy_euler_ancestral(comfy, kind, eta):
    """Same noise (ComfyUI's noise sampler for the seed): our Gaussian kernel gives ComfyUI's euler_ancestral latents
    (on the flow model ComfyUI's euler_ancestral runs euler_ancestral_RF; our RFIM node reads η the same way)."""
    name = "SamplerDDIMGMM" if kind == "eps" else "SamplerRFIMGMM"
    extra = {} if kind == "eps" else {"eta_convention": "euler_ancestral_RF"}
    ours, model = _run(comfy, _node(comfy, name, kernel="gaussian", noise="comfy", eta=eta, **extra), kind)
    ref, _ = _run(comfy, comfy.samplers.ksampler("euler_ancestral", {"eta": eta}), kind)
    _close(ours, ref)
    assert model.calls == [42] * 8  # the seed reached the model through extra_args, as for every ComfyUI sampler


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_gaussian_node_at_eta_zero_equals_comfy_euler(comfy, kind):
    name = "SamplerDDIMGMM" if kind == "eps" else "SamplerRFIMGMM"
    ours, _ = _run(comfy, _node(comfy, name, kernel="gaussian", eta=0.0), kind)
    ref, _ = _run(comfy, comfy.samplers.ksampler("euler"), kind)
    _close(ours, ref)


def test_rfim_eta_convention_is_a_different_sampler(comfy):
    """RFIM's η (σ_up = η σ') and euler_ancestral_RF's η name different samplers; the mapping makes them agree."""
    a, _ = _run(comfy, _node(comfy, "SamplerRFIMGMM", kernel="gaussian", noise="comfy", eta=0.5), "flow")
    b, _ = _run(comfy, comfy.samplers.ksampler("euler_ancestral", {"eta": 0.5}), "flow")
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_gmm_node_differs_stays_finite_and_reproduces(comfy, kind):
    name = "SamplerDDIMGMM" if kind == "eps" else "SamplerRFIMGMM"
    gauss, _ = _run(comfy, _node(comfy, name, kernel="gaussian"), kind)
    gmm = _node(comfy, name, kernel="gmm", gmm_scale=0.5)
    a, _ = _run(comfy, gmm, kind)
    b, _ = _run(comfy, gmm, kind)
    c, _ = _run(comfy, gmm, kind, seed=43)
    assert torch.isfinite(a).all() and torch.equal(a, b)  # the seed (extra_args) reproduces it, Philox in-kernel
    assert (a - gauss).abs().max() > 1e-3 and not torch.equal(a, c)
    assert (a - gauss).abs().mean() < 0.5 * gauss.abs().mean()  # the mixture perturbs the sample, not more


def test_family_mismatch_and_bad_options_are_named(comfy):
    with pytest.raises(ValueError, match="rectified flow"):
        _run(comfy, _node(comfy, "SamplerRFIMGMM", kernel="gaussian"), "eps")
    with pytest.raises(ValueError, match="gmm_components"):
        _node(comfy, "SamplerDDIMGMM", gmm_components=0)


def test_comfy_sampler_functions_are_used_unmodified(comfy):
    """The comparison targets are ComfyUI's own: our package adds one list entry and changes none of ComfyUI's."""
    import comfy.k_diffusion.sampling as kds

    assert kds.sample_euler_ancestral.__module__ == "comfy.k_diffusion.sampling"
    assert kds.sample_euler.__module__ == "comfy.k_diffusion.sampling"
    assert os.path.samefile(comfy.samplers.__file__, comfy.root / "comfy" / "samplers.py")
    assert comfy.samplers.KSAMPLER_NAMES[:3] == ["euler", "euler_cfg_pp", "euler_ancestral"]


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_ddim_gmm_is_in_the_plain_ksampler_list(comfy, kind):
    """The plain KSampler's list offers "ddim_gmm" (added once, however often the package loads), and ComfyUI's own
    lookup (KSampler's sampler_object → ksampler → comfy.k_diffusion.sampling.sample_ddim_gmm) samples DDIM-GMM, or
    RFIM-GMM on the flow model, with the SAMPLER node's defaults: the same latents, bit for bit."""
    dest_module = sys.modules[comfy.nodes.NODE_CLASS_MAPPINGS["SamplerDDIMGMM"].__module__]
    assert dest_module.register_ksampler_entry() is True  # a second load
    for names in (comfy.samplers.KSAMPLER_NAMES, comfy.samplers.KSampler.SAMPLERS):
        assert names.count("ddim_gmm") == 1
    assert "ddim_gmm" in comfy.nodes.KSampler.INPUT_TYPES()["required"]["sampler_name"][0]
    plain, model = _run(comfy, comfy.samplers.sampler_object("ddim_gmm"), kind)
    node, _ = _run(comfy, _node(comfy, "SamplerDDIMGMM"), kind)
    gauss, _ = _run(comfy, _node(comfy, "SamplerDDIMGMM", kernel="gaussian"), kind)
    assert torch.equal(plain, node) and torch.isfinite(plain).all()
    assert (plain - gauss).abs().max() > 1e-3  # the mixture (s = 0.3 by default), not the Gaussian kernel
    assert model.calls == [42] * 8
