"""Nothing lost, nothing mixed, nothing executed (issue 20), outside generate's own transaction
(tests/test_generate_integrity.py): crafted pickles on every load path, the commit stamp, one error line per
user-caused failure of every command (a real read-only mount and a real full tmpfs where the machine allows a
private mount namespace), eval's row keys, Ctrl-C of `distill all`, wall-clock budgets, and the library's small
refusals (clip range, gDDIM t_max and spacing, sample offsets that would wrap the Philox counter)."""
import ast
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import gmm_triton
from gmm_triton import provenance
from gmm_triton.cli import main

ROOT = pathlib.Path(gmm_triton.__file__).resolve().parent.parent
TINY = dict(width=32, depth=1, time_dim=16)


def _error_line(err, cmd):
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"gmm-triton {cmd}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from gmm_triton.lab.distill.teacher import train_teacher

    return train_teacher(str(tmp_path_factory.mktemp("model")), iterations=2, progress=False, **TINY)


# -- 1: crafted pickles ----------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates the marker file: what a crafted model.pt would do with os.system instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def crafted(tmp_path):
    """A function writing a crafted pickle to a path; the fixture checks that the payload is live (a plain
    torch.load runs it) and, after the test, that it never ran."""
    marker = tmp_path / "PWNED"

    def write(path):
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"config": {}, "network_config": {}, "model": {}, "ema": {}, "iterations": 1,
                    "objects": {}, "generator": _Payload(str(marker))}, path)
        return path

    probe = write(tmp_path / "probe.pt")
    torch.load(probe, weights_only=False)
    assert marker.exists()  # the payload runs under an unsafe load
    marker.unlink()
    yield write
    assert not marker.exists()


def _pipeline(path):
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 8),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    DDIMPipeline(unet=unet, scheduler=DDIMScheduler()).save_pretrained(path, safe_serialization=False)
    return path


@pytest.mark.parametrize("path", ["demo default", "demo --learned-model", "distill mm --model", "train model.pt",
                                  "train checkpoint.pt", "distill mm checkpoint.pt", "distill emd checkpoint.pt",
                                  "generate --pipeline"])
def test_a_crafted_pickle_never_runs(path, crafted, tiny_model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    if path == "demo default":  # `gmm-triton demo` in a folder holding gmm_triton_out/model/model.pt
        monkeypatch.chdir(tmp_path)
        crafted(tmp_path / "gmm_triton_out" / "model" / "model.pt")
        cmd, argv = "demo", ["demo", "--quick", "--device", "cpu", "--out", str(out)]
    elif path == "demo --learned-model":
        cmd, argv = "demo", ["demo", "--quick", "--device", "cpu", "--out", str(out), "--learned-model",
                             str(crafted(tmp_path / "m.pt"))]
    elif path == "distill mm --model":
        cmd, argv = "distill mm", ["distill", "mm", "--steps", "1", "--iterations", "1", "--quiet", "--model",
                                   str(crafted(tmp_path / "m.pt")), "--out", str(out)]
    elif path == "train model.pt":
        crafted(out / "model.pt")
        cmd, argv = "train", ["train", "--iterations", "1", "--quiet", "--out", str(out)]
    elif path == "train checkpoint.pt":
        crafted(out / "checkpoint.pt")
        cmd, argv = "train", ["train", "--iterations", "1", "--quiet", "--out", str(out)]
    elif path == "distill mm checkpoint.pt":
        crafted(out / "checkpoint.pt")
        cmd, argv = "distill mm", ["distill", "mm", "--steps", "1", "--iterations", "1", "--quiet", "--model",
                                   tiny_model, "--out", str(out)]
    elif path == "distill emd checkpoint.pt":
        crafted(out / "checkpoint.pt")
        cmd, argv = "distill emd", ["distill", "emd", "--iterations", "1", "--quiet", "--out", str(out)]
    else:
        # diffusers' log handler may hold an earlier test's closed capture stream: no "--- Logging error ---" dump
        monkeypatch.setattr(logging, "raiseExceptions", False)
        pipe = _pipeline(tmp_path / "pipe")
        crafted(pipe / "unet" / "diffusion_pytorch_model.bin")
        cmd, argv = "generate", ["generate", "--pipeline", str(pipe), "--samples", "2", "--out", str(out)]
    rc = main(argv)
    line = _error_line(capsys.readouterr().err, cmd)
    assert rc in (1, 2) and ("can load safely" in line or "cannot be loaded" in line), line


def test_model_and_checkpoint_files_hold_only_plain_values(tiny_model):
    """What `train` writes loads with weights_only=True (the load paths above use nothing else)."""
    for name in ("model.pt", "checkpoint.pt"):
        saved = torch.load(os.path.join(os.path.dirname(tiny_model), name), weights_only=True)
        assert saved["iterations" if name == "model.pt" else "iteration"] == 2


def test_no_unsafe_load_in_the_package():
    """Every torch.load under gmm_triton/ passes weights_only=True (lab/files.py's load_torch, and the evidence
    classifier's state dict)."""
    loads = []
    for path in (ROOT / "gmm_triton").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                loads.append((path.name, isinstance(kw.get("weights_only"), ast.Constant)
                              and kw["weights_only"].value is True))
    assert ("files.py", True) in loads and all(safe for _, safe in loads), loads


# -- 2: the commit stamp ---------------------------------------------------------------------------------------
def test_commit_of_this_checkout_is_read_from_its_files():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode:
        pytest.skip("not a git checkout")
    assert provenance.source_root() == str(ROOT) and provenance.commit() == head.stdout.strip()


@pytest.mark.parametrize("build_info", [True, False])
def test_an_install_inside_another_repository_never_reports_it(tmp_path, build_info):
    """The package installed in a virtual environment inside another repository, whose core.fsmonitor hook
    would leave a marker: the stamp is the build's (or None), never that repository's HEAD, and no hook runs."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    outer, marker = tmp_path / "outer", tmp_path / "HOOK_RAN"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    git = ["git", "-C", str(outer), "-c", "user.name=t", "-c", "user.email=t@t"]
    outer.mkdir()
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "outer"],
                 ["config", "core.fsmonitor", str(hook)]):
        subprocess.run([*git, *args], check=True)
    pkg = outer / "venv" / "lib" / "site-packages" / "gmm_triton"
    pkg.mkdir(parents=True)
    for name in ("__init__.py", "provenance.py"):
        shutil.copy(ROOT / "gmm_triton" / name, pkg / name)
    if build_info:
        (pkg / "_build_info.py").write_text('COMMIT = "' + "ab" * 20 + '"\n')
    code = "import gmm_triton.provenance as p; print(p.commit())"
    out = subprocess.run([sys.executable, "-c", code], cwd=pkg, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(pkg.parent)), check=True).stdout.strip()
    assert out == ("ab" * 20 if build_info else "None")
    assert not marker.exists()
    subprocess.run([*git, "status", "--porcelain"], check=True, capture_output=True)  # the hook is live
    assert marker.exists()


def test_every_stamp_comes_from_the_one_helper(tmp_path, tiny_model, capsys):
    """No module runs git; generate's manifest and shard records, bench's meta, the distillation results and the
    demo's meta carry provenance.commit()."""
    for path in (ROOT / "gmm_triton").rglob("*.py"):
        assert '"git"' not in path.read_text() and "'git'" not in path.read_text(), path
    sha = provenance.commit()
    assert main(["generate", "--samples", "4", "--steps", "1", "--image-size", "8", "--model-batch", "4",
                 "--batch-size", "4", "--shard-size", "4", "--out", str(tmp_path / "gen")]) == 0
    manifest = json.load(open(tmp_path / "gen" / "manifest.json"))
    assert manifest["commit"] == sha and manifest["shards"][0]["commit"] == sha
    from gmm_triton.tools.bench import environment

    assert environment(torch.device("cpu"), 1.0)["commit"] == (sha and sha[:7])
    assert main(["distill", "emd", "--iterations", "1", "--quiet", "--out", str(tmp_path / "emd")]) == 0
    assert json.load(open(tmp_path / "emd" / "result.json"))["commit"] == sha
    assert json.load(open(os.path.join(os.path.dirname(tiny_model), "train.json")))["commit"] == sha


# -- 9: one error line per failure, every command ---------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["train", "--iterations", "1", "--quiet"],
    ["distill", "emd", "--iterations", "1", "--quiet"],
    ["distill", "mm", "--steps", "1", "--iterations", "1", "--quiet"],
    ["demo", "--quick", "--device", "cpu"],
    ["demo", "--family", "cld", "--quick"],
    ["eval", "--steps", "2", "--samples", "8", "--device", "cpu"],
])
def test_a_path_that_cannot_be_written_is_one_error_line(argv, tmp_path, tiny_model, capsys, monkeypatch):
    """Injected EACCES (as root, permissions do not stop writes; test_commands_on_a_read_only_mount uses a real
    read-only mount where the machine allows one)."""
    ro = tmp_path / "ro"
    real = os.makedirs

    def makedirs(path, *a, **k):
        if str(path).startswith(str(ro)):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **k)
    monkeypatch.setattr(os, "makedirs", makedirs)
    if argv[:2] == ["distill", "mm"]:
        argv = [*argv, "--model", tiny_model]
    cmd = " ".join(argv[:2]) if argv[0] == "distill" else argv[0]
    assert main([*argv, "--out", str(ro / "x")]) == 1
    assert "Permission denied" in _error_line(capsys.readouterr().err, cmd)


def test_damaged_inputs_of_the_other_commands_are_one_error_line(tmp_path, tiny_model, capsys):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "model.pt").write_bytes(b"PK\x03\x04 truncated")
    assert main(["train", "--iterations", "1", "--quiet", "--out", str(tmp_path / "t")]) == 1
    assert "model.pt is not a model file" in _error_line(capsys.readouterr().err, "train")
    # a checkpoint of another configuration: a usage error naming it
    out = tmp_path / "e"
    assert main(["distill", "emd", "--iterations", "1", "--quiet", "--out", str(out)]) == 0
    os.remove(out / "result.json")
    assert main(["distill", "emd", "--iterations", "2", "--quiet", "--seed", "5", "--out", str(out)]) == 2
    assert "different configuration" in _error_line(capsys.readouterr().err, "distill emd")


# -- 10: eval's rows ---------------------------------------------------------------------------------------------
def test_eval_rows_are_keyed_by_every_setting(tmp_path, capsys):
    import csv

    from gmm_triton.lab.demo import run_eval

    key = ("sampler", "steps", "eta", "scale", "n", "seeds", "model", "device", "commit")

    kw = dict(device="cpu", steps=(2,), etas=(0.0,), scales=(0.3,), families=("flow",))
    path = run_eval(str(tmp_path), n=16, seeds=(0,), **kw)
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 2 and all(r["n"] == "16" and r["seeds"] == "0" and r["device"] == "cpu" for r in rows)
    assert {r["commit"] for r in rows} == {provenance.commit() or ""}
    assert rows[0]["model"].startswith("oracle:digits")
    run_eval(str(tmp_path), n=16, seeds=(0,), **kw)
    assert len(list(csv.DictReader(open(path)))) == 2  # the same settings: nothing recomputed
    run_eval(str(tmp_path), n=24, seeds=(0, 1), **kw)  # other n and seeds: computed, both kept
    rows = list(csv.DictReader(open(path)))
    assert [(r["n"], r["seeds"]) for r in rows] == [("16", "0")] * 2 + [("24", "0+1")] * 2
    assert len({tuple(r[k] for k in key) for r in rows}) == 4
    # a CSV that does not say how its rows were made (an older version's) is refused, not reused or rewritten
    old = tmp_path / "old"
    old.mkdir()
    (old / "eval.csv").write_text("sampler,steps,eta,scale,fd\nRFIM,2,0,0,1.0\n")
    assert main(["eval", "--out", str(old), "--steps", "2", "--samples", "8", "--device", "cpu"]) == 2
    assert "eval.csv has the columns" in _error_line(capsys.readouterr().err, "eval")
    assert (old / "eval.csv").read_text() == "sampler,steps,eta,scale,fd\nRFIM,2,0,0,1.0\n"


# -- 11: Ctrl-C of distill all -----------------------------------------------------------------------------------
def _files(root):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]


def test_a_worker_ctrl_c_that_lands_in_a_weakref_callback_still_stops_the_job():
    """CI failure (stop 23): the SIGINT of a ``distill all`` worker arrived while importlib ran a module lock's
    weakref callback; Python cannot propagate an exception from there, printed "Exception ignored … Traceback" and
    the job ran on. The worker now redelivers it: the KeyboardInterrupt surfaces in the job's own frames, silently."""
    code = textwrap.dedent("""
        import signal, time, weakref
        from gmm_triton.lab.distill import cli
        cli._worker_init()
        cli._RUNNING = True
        class A: pass
        a = A()
        r = weakref.ref(a, lambda _: (signal.raise_signal(signal.SIGINT), time.sleep(0.01)))
        try:
            del a  # the callback runs here and the SIGINT's handler raises inside it
            for _ in range(2000):
                time.sleep(0.001)
            print("ran on")
        except KeyboardInterrupt:
            print("stopped")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.strip() == "stopped" and "Traceback" not in proc.stderr, (proc.stdout, proc.stderr)


@pytest.mark.parametrize("to", ["group", "parent"])
def test_ctrl_c_stops_distill_all_and_keeps_what_finished(tmp_path, to):
    """SIGINT to the process group (Ctrl-C at a terminal) once a first run has finished, or to the parent only
    (kill -INT) once the runs are under way: the command stops with status 130 as soon as the running runs checkpoint, no queued run starts, what
    finished is kept and every file is whole. (Before, the pool ran every queued run first: all 11 results.)"""
    out = tmp_path / "d"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "gmm_triton.cli", "distill", "all", "--out", str(out),
                             "--workers", "2", "--seeds", "0", "--scale", "0.01"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        # group: once a first run has finished (its result must be kept); parent: as soon as the runs are under way
        def under_way():
            return any(p.endswith("result.json") for p in _files(out)) if to == "group" else (out / "emd").is_dir()

        while not under_way():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        first = [p for p in _files(out) if p.endswith("result.json")]
        kept = open(first[0]).read() if first else None
        if to == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)  # liveness only
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "gmm-triton distill all: interrupted" in err
    files = _files(out)
    assert not any(".tmp" in os.path.basename(p) for p in files), files
    for p in files:
        if p.endswith(".json"):
            json.load(open(p))
        elif p.endswith(".pt"):
            torch.load(p, weights_only=True)
    if kept is not None:
        assert open(first[0]).read() == kept
    results = [p for p in files if p.endswith("result.json") or "baselines" in p or p.endswith("model.pt")]
    assert len(results) < 11, results  # 1 teacher, 4 EMD/VSD, 4 students, 2 baselines: not all of them ran


# -- 12: wall-clock budgets ---------------------------------------------------------------------------------------
def test_minutes_is_a_wall_clock_budget_and_the_iterations_that_ran_reproduce(tmp_path):
    """`distill emd --minutes M` (here through distill_emd with a small set-up): the loop runs until M wall minutes
    are spent, the result records the budget and the iterations that ran, and that iteration budget reproduces the
    numbers; a rerun with the same budget returns the cached result."""
    from gmm_triton.lab.distill.emd import distill_emd

    kw = dict(method="vsd", init_iterations=5, batch=32, eval_samples=500, progress=False)
    a = distill_emd(str(tmp_path / "a"), minutes=0.01, **kw)
    assert a["config"]["budget"] == {"minutes": 0.01} and a["iterations"] >= 1
    assert a["loop_seconds"] >= 0.01 * 60 - 0.01  # the loop ran until the budget was spent (rounding to 0.01 s)
    b = distill_emd(str(tmp_path / "b"), iterations=a["iterations"], **kw)
    assert b["config"]["budget"] == {"iterations": a["iterations"]} and b["iterations"] == a["iterations"]
    for key in ("mode_tv", "fd", "recall", "modes_covered", "precision"):
        assert a[key] == b[key], key
    assert distill_emd(str(tmp_path / "a"), minutes=0.01, **kw) == json.load(open(tmp_path / "a" / "result.json"))


def test_run_loop_stops_at_the_first_iteration_past_the_budget(tmp_path):
    from gmm_triton.lab.distill.loop import run_loop

    net = torch.nn.Linear(2, 1)
    gen = torch.Generator().manual_seed(0)
    starts = []

    def step(i):
        starts.append(time.perf_counter())
        time.sleep(0.05)
        return {}

    t0 = time.perf_counter()
    state = run_loop(str(tmp_path / "c.pt"), config={}, objects={"net": net}, generator=gen, minutes=0.3 / 60,
                     step=step, progress=False)
    assert state["iteration"] == len(starts) >= 2 and state["loop_seconds"] >= 0.3
    assert starts[-1] - t0 < 0.3  # the last iteration began inside the budget
    again = run_loop(str(tmp_path / "c.pt"), config={}, objects={"net": net}, generator=gen, minutes=0.3 / 60,
                     step=step, progress=False)
    assert again["iteration"] == state["iteration"]  # spent: a rerun does nothing


# -- 13: the library's small refusals ----------------------------------------------------------------------------
def test_clip_sample_range_must_be_a_positive_number():
    from gmm_triton import GMMDDIMScheduler, ddim_step, ddim_table

    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="clip_sample_range"):
            GMMDDIMScheduler(clip_sample=True, clip_sample_range=bad)
        x = torch.randn(2, 4)
        with pytest.raises(ValueError, match="clip_sample_range"):
            ddim_step(x, x, 500, ddim_table(GMMDDIMScheduler().alphas_cumprod, 1.0, 1000, torch.tensor([500, 0])),
                      clip_sample_range=bad)


def test_gddim_schedulers_refuse_a_bad_t_max_or_spacing_at_construction():
    import math

    from gmm_triton import GDDIMBlurScheduler, GDDIMCLDScheduler
    from gmm_triton.gddim.cld import CLD

    limit = math.log(sys.float_info.max) * CLD().Gamma / (4 * CLD().beta)  # 44.36 for the defaults
    s = GDDIMCLDScheduler(t_max=0.99 * limit)
    s.set_timesteps(4)
    assert torch.isfinite(s._table.host).all()
    for kw, msg in ((dict(t_max=1.01 * limit), "t_max must be below"), (dict(t_max=50.0), "t_max must be below"),
                    (dict(t_max=float("inf")), "t_max must be finite"), (dict(timestep_spacing="log"), "spacing")):
        with pytest.raises(ValueError, match=msg):
            GDDIMCLDScheduler(**kw)
    for kw, msg in ((dict(t_max=float("inf")), "t_max must be finite"), (dict(timestep_spacing="log"), "spacing")):
        with pytest.raises(ValueError, match=msg):
            GDDIMBlurScheduler(**kw)


@pytest.mark.parametrize("backend", ["cpp", "triton", "reference"])
def test_sample_offsets_that_would_wrap_the_counter_are_refused(backend):
    """(sample_offset + B)·D <= 2⁶² is accepted and draws the float64 reference's Philox normals there; one more
    is refused (before, offsets 3 and 3 + 2⁵⁶ drew the same noise at D = 256)."""
    from gmm_triton import GMMDDIMScheduler, initial_noise, ops, reference
    from gmm_triton.contract import STREAM_LATENT

    B, D = 2, 256
    edge = 2**62 // D - B
    table = GMMDDIMScheduler().alphas_cumprod
    from gmm_triton import ddim_table

    table = ddim_table(table, 1.0, 1000, torch.tensor([500, 0]))
    x, m = torch.randn(B, D), torch.zeros(B, D)
    with ops.use_cpu_backend(backend):
        out, _ = ops.ddim_step(x, m, 500, table, eta=1.0, seed=4, sample_offset=edge)
        z = torch.from_numpy(reference.philox_normal(4, B * D, start=edge * D)).reshape(B, D)
        assert (out.double() - reference.fused_step(x, m, 500, table, eta=1.0, noise=z)[0]).abs().max() < 2e-6
        for off in (edge + 1, 3 + 2**56):
            with pytest.raises(ValueError, match=r"\(sample_offset \+ B\)·D <= 2\*\*62"):
                ops.ddim_step(x, m, 500, table, eta=1.0, seed=4, sample_offset=off)
        # per-sample seeds: every sample draws at sample_offset itself, so the bound is (sample_offset + 1)·D
        ops.ddim_step(x, m, 500, table, eta=1.0, seed=[4, 5], sample_offset=edge + B - 1)
        with pytest.raises(ValueError, match="2\\*\\*62"):
            ops.ddim_step(x, m, 500, table, eta=1.0, seed=[4, 5], sample_offset=edge + B)
    lat = initial_noise((B, D), 4, sample_offset=edge)
    ref = torch.from_numpy(reference.philox_normal(4, B * D, stream=STREAM_LATENT, start=edge * D)).reshape(B, D)
    assert (lat.double() - ref).abs().max() < 2e-6
    with pytest.raises(ValueError, match="2\\*\\*62"):
        initial_noise((B, D), 4, sample_offset=edge + 1)


# -- real mounts: a read-only path and a full disk (where a private mount namespace is allowed) -------------------
_NAMESPACE_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, os, subprocess, sys
    ro, full, model, shards = sys.argv[1:5]
    subprocess.run(["mount", "--bind", ro, ro], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", ro], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", full], check=True)
    from gmm_triton.cli import main
    commands = {
        "generate": ["generate", "--samples", "4", "--image-size", "8", "--model-batch", "4", "--batch-size", "4",
                     "--shard-size", "4", "--steps", "1", "--out", ro + "/g"],
        "train": ["train", "--iterations", "1", "--quiet", "--out", ro + "/t"],
        "distill mm": ["distill", "mm", "--steps", "1", "--iterations", "1", "--quiet", "--model", model,
                       "--out", ro + "/m"],
        "distill emd": ["distill", "emd", "--iterations", "1", "--quiet", "--out", ro + "/e"],
        "distill all": ["distill", "all", "--seeds", "0", "--scale", "0.001", "--out", ro + "/a"],
        "demo": ["demo", "--quick", "--device", "cpu", "--out", ro + "/d"],
        "eval": ["eval", "--steps", "2", "--samples", "8", "--device", "cpu", "--out", ro + "/v"],
    }
    # the full disk: the shards of a finished run copied onto the tmpfs, the rest of it filled, then the merge
    run = os.path.join(full, "run")
    subprocess.run(["cp", "-r", shards, run], check=True)
    try:
        with open(os.path.join(full, "filler"), "wb", buffering=0) as f:
            while True:
                f.write(b"\\0" * 4096)
    except OSError:  # ENOSPC: the tmpfs is full
        pass
    commands["generate (full disk)"] = ["generate", "--samples", "19", "--steps", "3", "--image-size", "8",
                                        "--model-batch", "4", "--shard-size", "8", "--batch-size", "4", "--seed", "7",
                                        "--out", run]
    results = {}
    for name, argv in commands.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
        results[name] = {"rc": rc, "err": err.getvalue(), "left": sorted(os.listdir(run))}
    print(json.dumps(results))
""")


def _namespace_available():
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _namespace_available(), reason="no private mount namespace (unshare -Urm) on this machine")
def test_commands_on_a_read_only_mount_and_a_full_disk(tmp_path, tiny_model):
    ro, full = tmp_path / "ro", tmp_path / "full"
    ro.mkdir()
    full.mkdir()
    shards = tmp_path / "shards"
    assert main(["generate", "--samples", "19", "--steps", "3", "--image-size", "8", "--model-batch", "4",
                 "--shard-size", "8", "--batch-size", "4", "--seed", "7", "--out", str(shards)]) == 0
    for name in ("samples.npy", "manifest.json"):
        os.remove(shards / name)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1")
    proc = subprocess.run(["unshare", "-Urm", sys.executable, "-c", _NAMESPACE_SCRIPT, str(ro), str(full),
                           tiny_model, str(shards)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, r in results.items():
        line = _error_line(r["err"], name.split(" (")[0])
        assert r["rc"] == 1, (name, r)
        if name == "generate (full disk)":
            assert "not enough space" in line and "bytes" in line, line
            assert not any(p.startswith("samples.npy") for p in r["left"]), r["left"]
        else:
            assert "Read-only file system" in line, (name, line)
