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
import io
import os
import time

import torch

from ..provenance import commit
from .errors import UsageError
from .files import atomic_write, savefig, write_json
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
            f"{results['commit'] or 'unknown'}; the table took {results['wall_s']:.0f} s wall"
            # a results file written before the CPU time was recorded has none: say so rather than print "nan"
            f"{', %.0f CPU s' % results['cpu_s'] if 'cpu_s' in results else ' (CPU time not recorded)'} "
            f"(samples/s is wall time and includes the oracle model's "
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
    net = None
    if learned_model and os.path.exists(learned_model):  # loaded first (without unpickling code): fails fast
        from .models import load_network

        net = load_network(learned_model)
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
    if net is None and learned_model:
        print(f"(no learned model at {learned_model}: `gmm-triton train` adds its rows to this table)")
    elif net is not None:
        from .distill.teacher import learned_demo_rows

        rows += learned_demo_rows(net, data, reference, steps=steps, n=n, seeds=seeds, scale=scale, device=device)
    results = {"command": "gmm-triton demo", "commit": commit(), "torch": torch.__version__,
               "settings": {"device": device, "n": n, "seeds": list(seeds), "steps": steps, "scale": scale,
                            "quick": quick, "learned_model": net is not None},
               "exact_fd": exact_fd, "wall_s": time.perf_counter() - t_start,
               "cpu_s": time.process_time() - cpu_start, "rows": rows}
    table = render_results(results)
    print(table)
    curve = _quality_vs_steps(data, reference, step_grid, n, seeds[0], scale, device)
    paths = {"table": os.path.join(out_dir, "demo_table.md"), "csv": os.path.join(out_dir, "demo.csv"),
             "results": os.path.join(out_dir, "results.json"), "grid": os.path.join(out_dir, "samples_grid.png"),
             "steps": os.path.join(out_dir, "quality_vs_steps.png")}
    atomic_write(paths["table"], lambda f: f.write(table.encode()))
    _write_csv(paths["csv"], rows)
    write_json(results, paths["results"])  # the README's table is generated from a committed copy (make tables)
    _plot_grid(images, data, paths["grid"], device)
    _plot_steps(curve, exact_fd, paths["steps"])
    print("wrote", ", ".join(paths.values()))
    return {"rows": rows, "paths": paths, "exact_fd": exact_fd}


# an eval row is keyed by every setting that changes its numbers, all recorded in the CSV
EVAL_KEY = ("sampler", "steps", "eta", "scale", "n", "seeds", "model", "device", "commit")
EVAL_FIELDS = (*EVAL_KEY, *METRICS, "fd_std", "samples_per_s", "note")
EVAL_MODEL = "oracle:digits:16x16:std=0.1"  # the model every eval row samples (digits_mixture(16, std=0.1))


def run_eval(out_dir: str = "gmm_triton_out/eval", *, device: str = "auto", steps=(5, 10, 20, 50), etas=(0.0, 0.5, 1.0),
             scales=(0.1, 0.3, 1.0, 3.0), n: int = 2000, seeds=(0, 1), families=("ddim",)) -> str:
    """The full sweep steps × η × sampler × scale; one CSV row per configuration, resumed if the CSV exists.

    A row is reused only if it was made with the same sampler, steps, η, scale, n, seeds, model, device type and
    commit (``EVAL_KEY``, all columns of the CSV); the CSV is rewritten atomically after every row."""
    from tqdm.auto import tqdm

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "eval.csv")
    rows = _read_eval_csv(path)
    setting = {"n": str(n), "seeds": "+".join(map(str, seeds)), "model": EVAL_MODEL,
               "device": torch.device(device).type, "commit": commit() or ""}
    done = {tuple(r[k] for k in EVAL_KEY) for r in rows}
    data = digits_mixture(16, std=0.1, device=device)
    reference = data.sample(n, generator=_gen(device, 12345))
    samplers = (ddim_samplers() if "ddim" in families else []) + (flow_samplers() if "flow" in families else [])
    jobs = []
    for sampler in samplers:
        for st in steps:
            for eta in etas:
                for sc in (scales if sampler.is_mixture else (0.0,)):
                    key = {"sampler": sampler.name, "steps": str(st), "eta": f"{eta:g}", "scale": f"{sc:g}", **setting}
                    if tuple(key[k] for k in EVAL_KEY) not in done and not (sampler.family == "flow" and eta > 0.5):
                        jobs.append((sampler, st, eta, sc, key))
    for sampler, st, eta, sc, key in tqdm(jobs, desc=f"eval sweep ({len(done)} rows in the CSV)"):
        try:
            row, _ = metrics_row(data, sampler, st, eta, n, seeds, sc, device, reference)
            note = ""
        except ValueError as e:  # e.g. the exact variance at η = 0: recorded, not fatal
            row, note = {k: float("nan") for k in (*METRICS, "fd_std", "samples_per_s")}, str(e).split(";")[0]
        rows.append({**key, **row, "note": note})
        _write_eval_csv(path, rows)
    current = [r for r in rows if all(r[k] == v for k, v in setting.items()) and str(r["fd"]) not in ("", "nan")]
    if not current:  # e.g. only flow samplers at η > 0.5, which the sweep skips
        print(f"nothing to evaluate for these settings: {path} {'unchanged' if rows else 'not written'}")
        return path
    _plot_eval(current, os.path.join(out_dir, "eval_fd.png"))
    print("wrote", path, "and", os.path.join(out_dir, "eval_fd.png"))
    return path


def _read_eval_csv(path) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != EVAL_FIELDS:
            raise UsageError(f"{path} has the columns {reader.fieldnames}, not those of this version "
                             f"({', '.join(EVAL_FIELDS)}): its rows do not say how they were made; move it away or "
                             "use another --out")
        return list(reader)


def _write_eval_csv(path, rows) -> None:
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=EVAL_FIELDS)
    w.writeheader()
    w.writerows(rows)
    data = text.getvalue().encode()
    atomic_write(path, lambda f: f.write(data))


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
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=["sampler", "eta", "scale", *METRICS, "fd_std", "samples_per_s", "note"],
                       extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    data = text.getvalue().encode()
    atomic_write(path, lambda f: f.write(data))


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
    savefig(fig, path, dpi=110)
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
    savefig(fig, path, dpi=110)
    plt.close(fig)


def _plot_eval(rows, png_path):
    """FD against steps per η (best scale per point) for the eval rows of one setting."""
    plt = _plt()
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
    savefig(fig, png_path, dpi=110)
    plt.close(fig)
