"""No host reads of device data: every scheduler's step loop and the op's CUDA branch run to the end on a fake CUDA
device (tests/fake_cuda.py), where any read of device data raises (issue 10, item 5).

What this proves without a GPU: the Python path of a sampling loop never synchronises with the device (no
``.item()``, no ``nonzero``, no device-to-host copy), so a pipeline can enqueue its steps ahead of the GPU and a
CUDA graph can capture them. What it does not prove: the kernels themselves (tests/test_compile_matrix.py compiles
them; tests/test_cuda.py runs them on a GPU).
"""
import pytest
import torch
from fake_cuda import DEVICE, FakeCuda, HostRead
from torch._subclasses.fake_tensor import DynamicOutputShapeException, FakeTensor

from gmm_triton import GMMDDIMScheduler, GMMFlowMatchScheduler, build_mixture, ddim_table, ops
from gmm_triton.kernels import step as kstep
from gmm_triton.mixture import VARIANCES

SHAPE = (2, 4, 8, 8)


def _ddim_loop(sched, per_sample=False, eta=1.0, steps=10):
    h = FakeCuda()
    with h:
        sched.set_timesteps(steps, device=DEVICE)
        x = h.cuda(torch.randn(SHAPE))
        for t in sched.timesteps:
            out = sched.step(torch.tanh(x), t.expand(SHAPE[0]) if per_sample else t, x, eta=eta)
            x = out.prev_sample
    return x, out.pred_original_sample


def _flow_loop(sched, steps=10):
    h = FakeCuda()
    with h:
        sched.set_timesteps(steps, device=DEVICE)
        sched.set_begin_index(0)  # what SD3 / Flux pipelines do; without it diffusers searches the timesteps (a sync)
        x = h.cuda(torch.randn(SHAPE))
        for t in sched.timesteps:
            x = sched.step(torch.tanh(x), t, x).prev_sample
    return x


def _on_fake_cuda(t):
    assert isinstance(t, FakeTensor) and t.device == DEVICE and t.shape == SHAPE


@pytest.mark.parametrize("read", [
    lambda t: bool((t > 0).any()), lambda t: t.sum().item(), lambda t: t.tolist(),
    lambda t: t.cpu(), lambda t: t.to("cpu"), lambda t: t.to(torch.device("cpu"), torch.float64),
    lambda t: torch.empty(3).copy_(t), lambda t: t.cpu().numpy(),
], ids=["bool", "item", "tolist", "cpu", "to-cpu", "to-cpu-dtype", "copy-into-host", "cpu-numpy"])
def test_the_harness_catches_a_host_read(read):
    h = FakeCuda()
    with h, pytest.raises(HostRead):
        read(h.cuda(torch.randn(3)))


def test_the_harness_catches_data_dependent_shapes_and_keeps_host_data_real():
    h = FakeCuda()
    with h, pytest.raises(DynamicOutputShapeException):
        torch.masked_select(h.cuda(torch.randn(3)), h.cuda(torch.randn(3)) > 0)  # a sync: the size is data
    with h:
        assert float(torch.tensor(2.5)) == 2.5  # host data stays real


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_gaussian_loop(eta):
    for t in _ddim_loop(GMMDDIMScheduler(), eta=eta):
        _on_fake_cuda(t)


@pytest.mark.parametrize("variance", VARIANCES)
def test_ddim_gmm_loop(variance):
    sched = GMMDDIMScheduler(kernel="gmm", gmm_variance=variance, gmm_scale=0.01, gmm_clip_variance=True)
    for t in _ddim_loop(sched):
        _on_fake_cuda(t)
    (mix,) = sched._mixture_cache.mixtures.values()
    assert mix.device == DEVICE and isinstance(mix.delta, FakeTensor)  # built on the host, copied, never read back


def test_ddim_per_sample_timesteps_loop():
    for t in _ddim_loop(GMMDDIMScheduler(kernel="gmm", gmm_scale=0.01), per_sample=True):
        _on_fake_cuda(t)


@pytest.mark.parametrize("kernel", ["gaussian", "gmm"])
def test_flow_loop_after_set_begin_index(kernel):
    sched = GMMFlowMatchScheduler(kernel=kernel, eta=1.0, gmm_variance="vub", gmm_scale=0.1, gmm_clip_variance=True)
    _on_fake_cuda(_flow_loop(sched))


class _Recorder:
    """Stands in for a Triton kernel: records launches instead of running them."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((grid, args, kwargs))


@pytest.mark.parametrize("seeds", ["device", "per_sample_device", "per_sample_host"])
@pytest.mark.parametrize("variance", [None, "diag", "exact"])
def test_the_ops_cuda_branch_reads_nothing_back(monkeypatch, variance, seeds):
    """The op's real CUDA branch (checks, layout, the launcher's argument preparation), not its fake kernel, with
    device timesteps, a device seed (or per-sample seeds: a device tensor, or host seeds copied host to device) and a
    device sample offset: the kernels are replaced by recorders."""
    from diffusers import DDIMScheduler

    step, proj = _Recorder(), _Recorder()
    monkeypatch.setattr(kstep, "_ddim_step_kernel", step)
    monkeypatch.setattr(kstep, "_project_kernel", proj)
    d = DDIMScheduler()
    d.set_timesteps(10)
    host_table = ddim_table(d.alphas_cumprod, 1.0, 1000, d.timesteps)
    mix = build_mixture(256, 10, components=4, scale=0.01, variance=variance, seed=1) if variance else None
    h = FakeCuda()
    with h:
        x, m = h.cuda(torch.randn(SHAPE)), h.cuda(torch.randn(SHAPE))
        rows = h.cuda(torch.tensor([901, 501]))
        seed = {"device": h.cuda(torch.tensor([7])), "per_sample_device": h.cuda(torch.tensor([7, 8])),
                "per_sample_host": torch.tensor([7, 8])}[seeds]
        off = h.cuda(torch.tensor([40]))
        mix_dev = mix.to(DEVICE) if mix is not None else None
        table = host_table.to(DEVICE)
        args = (x, m, table, rows, 0, seed, off, None, None,
                mix_dev.op_tensors() if mix_dev else [], "epsilon",
                variance or "none", 1.0, None, False, None, False, True)
        out, x0 = ops._ddim_step_impl(*args)
    _on_fake_cuda(out)
    _on_fake_cuda(x0)
    assert len(step.launches) == 1 and len(proj.launches) == (variance == "exact")
    _, _, kw = step.launches[0]
    spec = kw["S"]
    assert spec.T_FROM_PTR and spec.T_PER_SAMPLE and spec.SEED_FROM_PTR and spec.OFF_FROM_PTR
    assert spec.SEED_PER_SAMPLE == (seeds != "device")


def test_ddim_thresholding_loop():
    """Dynamic thresholding's per-sample quantile is a device computation read by the kernel."""
    sched = GMMDDIMScheduler(thresholding=True, clip_sample=False, prediction_type="sample")
    for t in _ddim_loop(sched):
        _on_fake_cuda(t)


@pytest.mark.parametrize("kernel", ["gaussian", "gmm"])
def test_ddim_torch_noise_loop(kernel):
    """noise_source="torch" (diffusers' randn_tensor noise) draws on the device and passes it to the op."""
    for t in _ddim_loop(GMMDDIMScheduler(kernel=kernel, noise_source="torch", gmm_scale=0.01)):
        _on_fake_cuda(t)


@pytest.mark.parametrize("noise_source", ["philox", "torch"])
@pytest.mark.parametrize("kernel", ["gaussian", "gmm"])
def test_generator_list_loops(kernel, noise_source):
    """One CPU generator per sample, as diffusers pipelines pass them: seeds and noise are drawn on the host and
    copied to the device, never read back."""
    for sched in (GMMDDIMScheduler(kernel=kernel, noise_source=noise_source, gmm_scale=0.01),
                  GMMFlowMatchScheduler(kernel=kernel, noise_source=noise_source, eta=1.0, gmm_scale=0.01)):
        gens = [torch.Generator().manual_seed(i) for i in range(SHAPE[0])]
        h = FakeCuda()
        with h:
            sched.set_timesteps(5, device=DEVICE)
            if isinstance(sched, GMMFlowMatchScheduler):
                sched.set_begin_index(0)
            x = h.cuda(torch.randn(SHAPE))
            for t in sched.timesteps:
                kw = {} if isinstance(sched, GMMFlowMatchScheduler) else {"eta": 1.0}
                x = sched.step(torch.tanh(x), t, x, generator=gens, **kw).prev_sample
        _on_fake_cuda(x)


@pytest.mark.parametrize("order,lam", [(0, 1.0), (2, 0.0)])
def test_gddim_cld_loop(order, lam):
    from gmm_triton import GDDIMCLDScheduler

    sched = GDDIMCLDScheduler(order=order, lam=lam)
    h = FakeCuda()
    with h:
        sched.set_timesteps(6, device=DEVICE)
        u = h.cuda(torch.randn(2, 2, 4, 4))
        for t in sched.timesteps:
            u = sched.step(torch.tanh(u), t, u).prev_sample
    assert isinstance(u, FakeTensor) and u.device == DEVICE


@pytest.mark.parametrize("order,lam", [(0, 1.0), (2, 0.0)])
def test_gddim_blur_loop(order, lam):
    from gmm_triton import GDDIMBlurScheduler

    sched = GDDIMBlurScheduler(order=order, lam=lam)
    h = FakeCuda()
    with h:
        sched.set_timesteps(6, device=DEVICE)
        x = h.cuda(torch.randn(2, 1, 8, 8))
        for t in sched.timesteps:
            x = sched.step(torch.tanh(x), t, x).prev_sample
    assert isinstance(x, FakeTensor) and x.device == DEVICE
