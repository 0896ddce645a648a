"""Sample quality of DDIM vs DDIM-GMM (and RFIM vs RFIM-GMM) with an exact "model": no downloaded weights.

The model is the closed-form denoiser of a Gaussian-mixture data set (oracle.py), so its predictions are exact
and every difference between samplers is sampler error. The embedded default data set is scikit-learn's 8×8
digits, upsampled to 16×16, as the means of a 1797-component mixture (digit class = mode).

``run_demo`` (``gmm-triton demo``, ``make demo``): a metrics table at 10 steps for η = 0 and 1, an image grid and a
quality-vs-steps plot. ``run_eval`` (``gmm-triton eval``): the full sweep steps × η × sampler × scale to a CSV that
a rerun resumes, plus plots.
"""
from __future__ import annotations

import csv
import json
import os
import time

import torch

from .generate import _commit
from .metrics import frechet_distance
from .oracle import digits_mixture
from .sampling import METRICS, ddim_samplers, exact_scale_limit, flow_samplers, metrics_row, sample

_TABLE = (("sampler", "sampler"), ("eta", "η"), ("scale", "s"), ("fd", "FD↓"), ("fd_std", "±"),
          ("coverage", "cover↑"), ("tv", "TV↓"), ("precision", "prec↑"), ("sw2", "SW2↓"), ("nll", "NLL↓"),
          ("samples_per_s", "samples/s"))


def _fmt_table(rows, title=None):
    lines = ([title] if title else []) + ["| " + " | ".join(h for _, h in _TABLE) + " |",
                                          "| " + " | ".join("---" for _ in _TABLE) + " |"]
    for r in rows:
        cells = []
        for c, _ in _TABLE:
            v = r.get(c, "")
            cells.append(v if isinstance(v, str) else (f"{v:.0f}" if c == "samples_per_s" else f"{v:.4g}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_results(results: dict) -> str:
    """The demo's table in Markdown from its ``results.json`` (what ``make demo`` prints, and the README's table)."""
    st = results["settings"]
    rows = [r for r in results["rows"] if "note" not in r]
    text = (f"{st['steps']} sampling steps, n = {st['n']} samples per sampler and seed, seeds {st['seeds']} (± is "
            f"the spread of FD over seeds), the digits oracle (16×16, 1797 components, std 0.1), mixture samplers at "
            f"K = 8, s = {st['scale']:g}; device {st['device']}, torch {results['torch']}, commit "
            f"{results['commit'] or 'unknown'}; the table took {results['wall_s']:.0f} s wall, "
            f"{results.get('cpu_s', float('nan')):.0f} CPU s (samples/s is wall time and includes the oracle model's "
            f"time, so it drops on a busy machine). Exact data samples score FD {results['exact_fd']:.3g} at this n "
            f"(the floor).\n\n")
    text += _fmt_table(rows)
    skipped = [f"{r['sampler']} (η={r['eta']}): {r['note']}" for r in results["rows"] if "note" in r]
    if skipped:
        text += "\n\nNot run: " + "; ".join(skipped)
    return text + "\n"


def run_demo(out_dir: str = "gmm_triton_out/demo", *, device: str = "auto", n: int = 2000, steps: int = 10,
             scale: float = 0.3, seeds=(0, 1, 2), step_grid=(5, 10, 20, 50), quick: bool = False,
             learned_model: str | None = None) -> dict:
    """The README's demo: table, image grid and quality-vs-steps plot; returns the rows and file paths.
    ``learned_model``: a ``gmm-triton train`` model file whose rows join the table when it exists (the demo does
    not train one: `gmm-triton train` or `make distill` does, in ~5 CPU minutes)."""
    from tqdm.auto import tqdm

    t_start, cpu_start = time.perf_counter(), time.process_time()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if quick:
        n, seeds, step_grid = min(n, 300), tuple(seeds)[:1], (5, 10)
    os.makedirs(out_dir, exist_ok=True)
    data = digits_mixture(16, std=0.1, device=device)
    reference = data.sample(n, generator=_gen(device, 12345))
    exact_fd = frechet_distance(data.sample(n, generator=_gen(device, 54321)), data.mean(), data.covariance())
    jobs = [(s, eta) for eta in (0.0, 1.0) for s in ddim_samplers()] + [(s, 0.0) for s in flow_samplers()]
    rows, images = [], {}
    for sampler, eta in tqdm(jobs, desc=f"demo: {steps}-step samplers on {device}"):
        s_used = scale
        if sampler.options.get("gmm_variance") == "exact":
            limit = exact_scale_limit(sampler, steps, eta)
            if limit <= 0:
                rows.append({"sampler": sampler.name, "eta": f"{eta:g}", "scale": "—",
                             **{k: float("nan") for k in (*METRICS, "fd_std", "samples_per_s")}, "note": "needs η>0"})
                continue
            s_used = min(scale, 0.99 * limit)
        row, x = metrics_row(data, sampler, steps, eta, n, seeds, s_used, device, reference)
        rows.append({"sampler": sampler.name, "eta": f"{eta:g}", "scale": f"{s_used:.3g}" if sampler.is_mixture else "—",
                     **row})
        images[(sampler.name, eta)] = x[:10].cpu()
    if learned_model and not os.path.exists(learned_model):
        print(f"(no learned model at {learned_model}: `gmm-triton train` adds its rows to this table)")
    elif learned_model:
        from .distill.teacher import learned_demo_rows

        rows += learned_demo_rows(learned_model, data, reference, steps=steps, n=n, seeds=seeds, scale=scale,
                                  device=device)
    results = {"command": "gmm-triton demo", "commit": _commit(), "torch": torch.__version__,
               "settings": {"device": device, "n": n, "seeds": list(seeds), "steps": steps, "scale": scale,
                            "quick": quick, "learned_model": bool(learned_model and os.path.exists(learned_model))},
               "exact_fd": exact_fd, "wall_s": time.perf_counter() - t_start,
               "cpu_s": time.process_time() - cpu_start, "rows": rows}
    table = render_results(results)
    print(table)
    curve = _quality_vs_steps(data, reference, step_grid, n, seeds[0], scale, device)
    paths = {"table": os.path.join(out_dir, "demo_table.md"), "csv": os.path.join(out_dir, "demo.csv"),
             "results": os.path.join(out_dir, "results.json"), "grid": os.path.join(out_dir, "samples_grid.png"),
             "steps": os.path.join(out_dir, "quality_vs_steps.png")}
    with open(paths["table"], "w") as f:
        f.write(table)
    _write_csv(paths["csv"], rows)
    with open(paths["results"], "w") as f:  # the README's table is generated from a committed copy (make tables)
        json.dump(results, f, indent=1)
        f.write("\n")
    _plot_grid(images, data, paths["grid"], device)
    _plot_steps(curve, exact_fd, paths["steps"])
    print("wrote", ", ".join(paths.values()))
    return {"rows": rows, "paths": paths, "exact_fd": exact_fd}


def run_eval(out_dir: str = "gmm_triton_out/eval", *, device: str = "auto", steps=(5, 10, 20, 50), etas=(0.0, 0.5, 1.0),
             scales=(0.1, 0.3, 1.0, 3.0), n: int = 2000, seeds=(0, 1), families=("ddim",)) -> str:
    """The full sweep steps × η × sampler × scale; one CSV row per configuration, resumed if the CSV exists."""
    from tqdm.auto import tqdm

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "eval.csv")
    done = set()
    if os.path.exists(path):
        with open(path) as f:
            done = {(r["sampler"], r["steps"], r["eta"], r["scale"]) for r in csv.DictReader(f)}
    data = digits_mixture(16, std=0.1, device=device)
    reference = data.sample(n, generator=_gen(device, 12345))
    samplers = (ddim_samplers() if "ddim" in families else []) + (flow_samplers() if "flow" in families else [])
    jobs = []
    for sampler in samplers:
        for st in steps:
            for eta in etas:
                for sc in (scales if sampler.is_mixture else (0.0,)):
                    key = (sampler.name, str(st), f"{eta:g}", f"{sc:g}")
                    if key not in done and not (sampler.family == "flow" and eta > 0.5):
                        jobs.append((sampler, st, eta, sc, key))
    for sampler, st, eta, sc, key in tqdm(jobs, desc=f"eval sweep ({len(done)} rows done)"):
        try:
            row, _ = metrics_row(data, sampler, st, eta, n, seeds, sc, device, reference)
            note = ""
        except ValueError as e:  # e.g. the exact variance at η = 0: recorded, not fatal
            row, note = {k: float("nan") for k in (*METRICS, "fd_std", "samples_per_s")}, str(e).split(";")[0]
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["sampler", "steps", "eta", "scale", *METRICS, "fd_std", "samples_per_s", "note"])
            if new:
                w.writeheader()
            w.writerow({"sampler": key[0], "steps": key[1], "eta": key[2], "scale": key[3], **row, "note": note})
    _plot_eval(path, os.path.join(out_dir, "eval_fd.png"))
    print("wrote", path, "and", os.path.join(out_dir, "eval_fd.png"))
    return path


# --------------------------------------------------------------------------------------------------------
def _gen(device, seed):
    return torch.Generator("cpu" if torch.device(device).type == "cpu" else device).manual_seed(seed)


def _quality_vs_steps(data, reference, step_grid, n, seed, scale, device):
    from tqdm.auto import tqdm

    curves = {}
    pairs = [(s, eta) for eta in (0.0, 1.0) for s in ddim_samplers() if s.name in ("DDIM", "DDIM-GMM-ORTHO-VUB")]
    for sampler, eta in tqdm(pairs, desc="quality vs steps"):
        curves[f"{sampler.name} η={eta:g}"] = [
            frechet_distance(sample(data, sampler, steps=st, eta=eta, n=n, seed=seed, scale=scale, device=device),
                             data.mean(), data.covariance()) for st in step_grid]
    return step_grid, curves


def _write_csv(path, rows):
    keys = ["sampler", "eta", "scale", *METRICS, "fd_std", "samples_per_s", "note"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_grid(images, data, path, device):
    plt = _plt()
    names = list(images)
    real = data.sample(10, generator=_gen(device, 7)).cpu()
    rows = [("data (exact samples)", real)] + [(f"{n} η={e:g}", images[(n, e)]) for n, e in names]
    fig, axes = plt.subplots(len(rows), 10, figsize=(10 * 0.7, len(rows) * 0.75))
    for i, (label, xs) in enumerate(rows):
        for j in range(10):
            ax = axes[i, j]
            ax.imshow(xs[j, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle("Samples (same initial noise across samplers)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_steps(curve, exact_fd, path):
    plt = _plt()
    steps, curves = curve
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, fds in curves.items():
        ax.plot(steps, fds, marker="o", label=label, linestyle="--" if "DDIM η" in label else "-")
    ax.axhline(exact_fd, color="gray", linestyle=":", label="exact data samples")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(steps)
    ax.set_xticklabels([str(s) for s in steps])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("Fréchet distance to the data moments (↓)")
    ax.legend(fontsize=7)
    ax.set_title("Oracle digits: sample quality vs steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_eval(csv_path, png_path):
    plt = _plt()
    with open(csv_path) as f:
        rows = [r for r in csv.DictReader(f) if r["fd"] not in ("", "nan")]
    etas = sorted({r["eta"] for r in rows}, key=float)
    steps = sorted({int(r["steps"]) for r in rows})
    fig, axes = plt.subplots(1, len(etas), figsize=(4.6 * len(etas), 3.8), squeeze=False)
    for ax, eta in zip(axes[0], etas):
        best = {}
        for r in rows:
            if r["eta"] != eta:
                continue
            k = (r["sampler"], int(r["steps"]))
            best[k] = min(best.get(k, float("inf")), float(r["fd"]))  # best scale per sampler and steps
        for name in sorted({k[0] for k in best}):
            pts = sorted((st, fd) for (nm, st), fd in best.items() if nm == name)
            base = name in ("DDIM", "RFIM")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, linestyle="--" if base else "-",
                    linewidth=2.2 if base else 1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(steps)
        ax.set_xticklabels([str(st) for st in steps])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_title(f"η = {eta} (best scale per point)", fontsize=9)
        ax.set_xlabel("steps")
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel("FD to the data moments (↓)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
