"""The learned denoiser (models.py) and its training (`gmm-triton train`): parametrisation, determinism, resume,
cache."""
import json
import os

import pytest
import torch

from gmm_triton.lab.distill.teacher import learned_model, train_teacher
from gmm_triton.lab.errors import UsageError
from gmm_triton.lab.models import DiffusionMLP, ResidualMLP, load_network, noise_coefficients

TINY = dict(width=32, depth=1, time_dim=16)


def test_noise_coefficients_match_the_schedules():
    t = torch.tensor([0, 1, 123, 500, 999])
    a, s = noise_coefficients("linear", t / 1000)
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t]   # diffusers' default
    torch.testing.assert_close(a.double(), ac.sqrt(), rtol=1e-6, atol=0)
    torch.testing.assert_close(s.double(), (1 - ac).sqrt(), rtol=1e-6, atol=0)
    u = torch.tensor([0.0, 0.25, 0.5, 1.0])
    a, s = noise_coefficients("cosine", u)
    torch.testing.assert_close(a, torch.tensor([1.0, 0.9238795, 0.7071068, 0.0]), atol=1e-7, rtol=0)
    torch.testing.assert_close(s, torch.tensor([0.0, 0.3826834, 0.7071068, 1.0]), atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="schedule"):
        noise_coefficients("quadratic", u)


def test_heads_are_skips_plus_residuals():
    """ε̂ = s x + a H_ε(h), x̂₀ = a x + s H_x(h): at initialisation (zero heads) the N(0, I)-data denoiser; with a
    head's residual set to a constant c, exactly the skip plus the coefficient times c."""
    torch.manual_seed(0)
    net = ResidualMLP(6, **TINY)
    x = torch.randn(5, 6)
    tau = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.999])
    a, s = (c[:, None] for c in noise_coefficients("linear", tau))
    out = net(x, tau)
    torch.testing.assert_close(out["epsilon"], s * x)
    torch.testing.assert_close(out["sample"], a * x)
    with torch.no_grad():
        net.heads["sample"].bias.fill_(0.5)
        net.heads["epsilon"].bias.fill_(-2.0)
    torch.testing.assert_close(net(x, tau, head="sample"), a * x + 0.5 * s)
    torch.testing.assert_close(net(x, tau, head="epsilon"), s * x - 2.0 * a)
    torch.testing.assert_close(net(x, 0.5, head="sample"), net(x, torch.full((5,), 0.5), head="sample"))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="width"):
        ResidualMLP(4, width=0)
    with pytest.raises(ValueError, match="schedule"):
        ResidualMLP(4, schedule="edm")
    with pytest.raises(ValueError, match="head"):
        ResidualMLP(4, **TINY)(torch.zeros(1, 4), 0.5, head="v_prediction")
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionMLP(ResidualMLP(4, **TINY), prediction_type="flow")
    with pytest.raises(UsageError, match="gmm-triton train"):
        load_network("/nonexistent/model.pt")
    with pytest.raises(ValueError, match="minutes"):
        train_teacher("/nonexistent", minutes=-1)


def test_diffusion_wrapper_takes_integer_timesteps():
    torch.manual_seed(1)
    net = ResidualMLP(16, **TINY)
    torch.nn.init.normal_(net.heads["epsilon"].weight)
    model = DiffusionMLP(net, prediction_type="epsilon")
    x = torch.randn(3, 1, 4, 4)
    t = torch.tensor([999, 10, 0])
    out = model(x, t).sample
    assert out.shape == x.shape
    torch.testing.assert_close(out.reshape(3, 16), net(x.reshape(3, 16), t / 1000, head="epsilon"))
    torch.testing.assert_close(model(x, 10).sample[1], out[1])


def test_training_reduces_the_loss_and_is_cached(tmp_path):
    path = train_teacher(str(tmp_path), iterations=120, ema_decay=0.9, progress=False, **TINY)
    log = json.load(open(tmp_path / "train.json"))["log"]
    assert log[0]["iteration"] == 0 and log[-1]["iteration"] == 120
    assert log[-1]["val_eps"] < 0.9 * log[0]["val_eps"] and log[-1]["val_x0"] < 0.9 * log[0]["val_x0"]
    stamp = os.path.getmtime(path)
    # a second call finds the finished model: no work, the file is untouched
    assert train_teacher(str(tmp_path), iterations=120, ema_decay=0.9, progress=False, **TINY) == path
    assert os.path.getmtime(path) == stamp
    model = learned_model(path)
    assert model.prediction_type == "sample" and not any(p.requires_grad for p in model.parameters())


def test_resume_gives_the_same_model(tmp_path):
    """A budget reached in two sittings (checkpoint, then resume) gives the bit-identical model of one sitting."""
    one = load_network(train_teacher(str(tmp_path / "one"), iterations=10, progress=False, **TINY), "raw")
    train_teacher(str(tmp_path / "two"), iterations=4, progress=False, **TINY)
    two = load_network(train_teacher(str(tmp_path / "two"), iterations=10, progress=False, **TINY), "raw")
    for p, q in zip(one.state_dict().values(), two.state_dict().values()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="different configuration"):
        train_teacher(str(tmp_path / "two"), iterations=12, progress=False, lr=3e-4, **TINY)


def test_demo_gains_rows_for_the_learned_model(tmp_path):
    import math

    from gmm_triton.lab.demo import run_demo

    path = train_teacher(str(tmp_path / "model"), iterations=2, progress=False, **TINY)
    out = run_demo(str(tmp_path / "demo"), device="cpu", n=64, quick=True, learned_model=path)
    learned = [r for r in out["rows"] if r["sampler"].endswith("(learned)")]
    assert [(r["sampler"], r["eta"]) for r in learned] == [
        ("DDIM (learned)", "0"), ("DDIM-GMM-ORTHO-VUB (learned)", "0"),
        ("DDIM (learned)", "1"), ("DDIM-GMM-ORTHO-VUB (learned)", "1")]
    assert all(math.isfinite(r["fd"]) for r in learned)
    assert "DDIM (learned)" in open(out["paths"]["table"]).read()
