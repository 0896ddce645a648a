"""The shared training loop: budgets, deferred Ctrl-C with a checkpoint, bit-identical resume, config guard."""
import os
import signal

import pytest
import torch

from gmm_triton.lab.distill.loop import EMA, iterations_for, run_loop


def _toy(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    return net, opt, EMA(net, 0.9), torch.Generator().manual_seed(seed)


def _run(path, iterations, interrupt_at=None):
    net, opt, ema, gen = _toy()

    def step(i):
        if i == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)          # arrives mid-iteration: the iteration must still finish
        x = torch.randn(16, 3, generator=gen)
        loss = (net(x).squeeze(1) - x.sum(1).sin()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(net)
        return {"loss": loss.item()}

    def evaluate():
        return {"w": float(ema.module[0].weight.sum())}

    state = run_loop(str(path), config={"lr": 1e-2}, objects={"net": net, "opt": opt, "ema": ema}, generator=gen,
                     iterations=iterations, step=step, evaluate=evaluate, eval_every=5, checkpoint_every=1000,
                     progress=False)
    return state, net, ema


def test_interrupt_checkpoints_and_resume_is_exact(tmp_path):
    straight, net1, ema1 = _run(tmp_path / "a.pt", 20)
    with pytest.raises(KeyboardInterrupt, match="iteration 8"):
        _run(tmp_path / "b.pt", 20, interrupt_at=7)
    saved = torch.load(tmp_path / "b.pt", weights_only=False)
    assert saved["iteration"] == 8                        # the interrupted iteration completed, then was saved
    resumed, net2, ema2 = _run(tmp_path / "b.pt", 20)
    assert resumed["iteration"] == 20
    for a, b in zip([*net1.parameters(), *ema1.module.parameters()], [*net2.parameters(), *ema2.module.parameters()]):
        assert torch.equal(a, b)
    assert [r["iteration"] for r in resumed["log"]] == [0, 5, 10, 15, 20]
    assert [r["w"] for r in resumed["log"]] == [r["w"] for r in straight["log"]]
    again, _, _ = _run(tmp_path / "b.pt", 20)              # finished: nothing to do
    assert again["iteration"] == 20 and again["log"] == resumed["log"]


def test_config_mismatch_is_refused(tmp_path):
    _run(tmp_path / "c.pt", 3)
    net, opt, ema, gen = _toy()
    with pytest.raises(ValueError, match="lr"):
        run_loop(str(tmp_path / "c.pt"), config={"lr": 1.0}, objects={"net": net}, generator=gen, iterations=5,
                 step=lambda i: {}, progress=False)


def test_budgets():
    assert iterations_for(2.0, 10.0) == 1200
    assert iterations_for(1e-6, 10.0) == 1
    for bad in (0, -1, float("nan"), None):
        with pytest.raises(ValueError, match="minutes"):
            iterations_for(bad, 10.0)
    with pytest.raises(ValueError, match="iterations"):
        run_loop("/nonexistent.pt", config={}, objects={}, generator=torch.Generator(), iterations=-1,
                 step=lambda i: {}, progress=False)
