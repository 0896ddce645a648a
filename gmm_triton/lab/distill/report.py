"""The acceptance run's tables, plots and target checks, from the ``result.json`` files under ``OUT``.

Spreads are sample standard deviations over the training seeds. A target comparison is *paired*: a student and
its teacher's baseline share the sampling seed (the same initial and step noise), and "beats" counts the seeds
whose student FD is below the baseline's; a target is met when it holds for every seed. For EMD, an
iteration count to mode TV ≤ 0.05 is the first evaluation at or below it (evaluations every 1/80 of the budget);
a run that never gets there counts as not reached (∞).
"""
from __future__ import annotations

import glob
import math
import os

from ..files import atomic_write, read_json, savefig
from .loop import pyplot, write_json


def _load(pattern):
    runs = []
    for path in sorted(glob.glob(pattern)):
        runs.append(read_json(path, "a distillation result"))
    return runs


def _ms(values, fmt="{:.3g}"):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    m = sum(values) / len(values)
    if len(values) < 2:
        return fmt.format(m)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    sd = 0.0 if sd < 1e-9 * max(1.0, abs(m)) else sd          # equal values up to float rounding
    return f"{fmt.format(m)} ± {fmt.format(sd)}"


def _per_seed(values, fmt="{}"):
    return ", ".join("∞" if v is None else fmt.format(v) for v in values)


def _mean(values):
    return sum(values) / len(values)


def mm_section(out: str):
    runs = _load(os.path.join(out, "mm", "*", "result.json"))
    groups = {}
    for r in runs:
        groups.setdefault((r["config"]["teacher"], r["config"]["steps"]), []).append(r)
    many = {t: _load(os.path.join(out, "baselines", f"{t}_ddim50.json")) for t in ("learned", "oracle")}
    lines = ["| teacher | k | student FD | teacher DDIM FD | teacher ancestral FD | student mode TV | student NLL "
             "| seeds beating DDIM | seeds beating ancestral | iterations | CPU s | wall s |",
             "|" + " --- |" * 12]
    targets, rows = {}, []
    for (teacher, k), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        rs.sort(key=lambda r: r["config"]["seed"])
        beat_ddim = sum(r["fd"] < r["teacher_ddim_fd"] for r in rs)
        beat_anc = sum(r["fd"] < r["teacher_ancestral_fd"] for r in rs)
        lines.append(f"| {teacher} | {k} | {_ms([r['fd'] for r in rs])} | {_ms([r['teacher_ddim_fd'] for r in rs])} | "
                     f"{_ms([r['teacher_ancestral_fd'] for r in rs])} | {_ms([r['mode_tv'] for r in rs])} | "
                     f"{_ms([r['nll'] for r in rs])} | {beat_ddim}/{len(rs)} | {beat_anc}/{len(rs)} | "
                     f"{rs[0]['iterations']} | {_ms([r['cpu_seconds'] for r in rs], '{:.0f}')} | "
                     f"{_ms([r['seconds'] for r in rs], '{:.0f}')} |")
        rows.append({"teacher": teacher, "steps": k, "seeds": [r["config"]["seed"] for r in rs],
                     "fd": [r["fd"] for r in rs], "teacher_ddim_fd": [r["teacher_ddim_fd"] for r in rs],
                     "teacher_ancestral_fd": [r["teacher_ancestral_fd"] for r in rs],
                     "iterations": rs[0]["iterations"], "cpu_seconds": [r["cpu_seconds"] for r in rs],
                     "seconds": [r["seconds"] for r in rs]})
        if teacher == "learned":
            targets[f"mm_k{k}_learned_beats_teacher_ddim"] = beat_ddim == len(rs)
        targets[f"mm_k{k}_{teacher}_beats_teacher_ancestral"] = beat_anc == len(rs)
        if many[teacher]:
            targets[f"mm_k{k}_{teacher}_beats_teacher_ddim50 (paper claim)"] = (
                _mean([r["fd"] for r in rs]) < many[teacher][0]["fd"])
    for teacher, m in many.items():
        if m:
            per_seed = m[0]["per_seed"]
            lines.append(f"| {teacher} | 50 (teacher DDIM) | — | {_ms([r['fd'] for r in per_seed])} | — | "
                         f"{_ms([r['mode_tv'] for r in per_seed])} | {_ms([r['nll'] for r in per_seed])} | | | | | |")
    return "\n".join(lines), targets, rows, runs


def emd_section(out: str):
    runs = _load(os.path.join(out, "emd", "*", "result.json"))
    groups = {}
    for r in runs:
        groups.setdefault((r["config"]["dataset"], r["config"]["method"]), []).append(r)
    lines = ["| testbed | method | mode TV | modes covered | precision | iterations to TV ≤ 0.05 (per seed) "
             "| CPU s to TV ≤ 0.05 (per seed) | recall per mode (mean) | iterations | CPU s | wall s |",
             "|" + " --- |" * 11]
    targets, rows = {}, []
    for (ds, method), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["config"]["seed"])
        recall = [round(_mean(v), 2) for v in zip(*[r["recall"] for r in rs])]
        to_tv = [r["iterations_to_tv"] for r in rs]
        lines.append(f"| {ds} | {method} | {_ms([r['mode_tv'] for r in rs])} | "
                     f"{_ms([r['modes_covered'] for r in rs], '{:.2g}')} | {_ms([r['precision'] for r in rs])} | "
                     f"{_per_seed(to_tv)} | "
                     f"{_per_seed([r['cpu_seconds_to_tv'] for r in rs], '{:.0f}')} | {recall} | "
                     f"{rs[0]['iterations']} | "
                     f"{_ms([r['cpu_seconds'] for r in rs], '{:.0f}')} | {_ms([r['seconds'] for r in rs], '{:.0f}')} |")
        rows.append({"dataset": ds, "method": method, "seeds": [r["config"]["seed"] for r in rs],
                     "mode_tv": [r["mode_tv"] for r in rs], "modes_covered": [r["modes_covered"] for r in rs],
                     "iterations_to_tv": to_tv, "cpu_seconds_to_tv": [r["cpu_seconds_to_tv"] for r in rs],
                     "recall": recall, "iterations": rs[0]["iterations"],
                     "cpu_seconds": [r["cpu_seconds"] for r in rs]})
    by = {(r["dataset"], r["method"]): r for r in rows}
    inf = float("inf")
    if ("2d4", "emd") in by and ("2d4", "vsd") in by:
        e = [inf if v is None else v for v in by[("2d4", "emd")]["iterations_to_tv"]]
        v = [inf if v is None else v for v in by[("2d4", "vsd")]["iterations_to_tv"]]
        targets["emd_2d4_reaches_tv_0.05_in_fewer_iterations_than_vsd"] = max(e) < inf and _mean(e) < _mean(v)
        ec = [inf if x is None else x for x in by[("2d4", "emd")]["cpu_seconds_to_tv"]]
        vc = [inf if x is None else x for x in by[("2d4", "vsd")]["cpu_seconds_to_tv"]]
        targets["emd_2d4_reaches_tv_0.05_in_less_cpu_time_than_vsd (paper: equal wall time)"] = (
            max(ec) < inf and _mean(ec) < _mean(vc))
    if ("8d8", "emd") in by and ("8d8", "vsd") in by:
        targets["emd_8d8_covers_more_modes_than_vsd"] = (
            _mean(by[("8d8", "emd")]["modes_covered"]) > _mean(by[("8d8", "vsd")]["modes_covered"]))
    return "\n".join(lines), targets, rows, runs


def plot_mm(runs, path):
    plt = pyplot()
    teachers = sorted({r["config"]["teacher"] for r in runs})
    fig, axes = plt.subplots(1, len(teachers), figsize=(5.2 * len(teachers), 3.8), squeeze=False)
    colors = {8: "tab:blue", 4: "tab:orange", 2: "tab:green", 1: "tab:red"}
    for ax, teacher in zip(axes[0], teachers):
        rs = [r for r in runs if r["config"]["teacher"] == teacher]
        for k in sorted({r["config"]["steps"] for r in rs}, reverse=True):
            c = colors.get(k, "k")
            group = [r for r in rs if r["config"]["steps"] == k]
            for i, r in enumerate(group):
                ax.plot([e["cpu_seconds"] for e in r["log"]], [e["fd"] for e in r["log"]], color=c, alpha=0.7,
                        label=f"student k={k}" if i == 0 else None)
            ax.axhline(_mean([r["teacher_ddim_fd"] for r in group]), color=c, linestyle="--", linewidth=1,
                       label=f"teacher DDIM k={k}")
            ax.axhline(_mean([r["teacher_ancestral_fd"] for r in group]), color=c, linestyle=":", linewidth=1,
                       label=f"teacher ancestral k={k}")
        ax.set_yscale("log")
        ax.set_xlabel("training CPU seconds (one thread)")
        ax.set_ylabel(f"FD to the data moments (n={rs[0]['config']['eval_samples']})")
        ax.set_title(f"moment matching, {teacher} teacher (one line per seed)", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    savefig(fig, path, dpi=80)
    plt.close(fig)


def plot_emd(runs, path):
    plt = pyplot()
    datasets = sorted({r["config"]["dataset"] for r in runs})
    fig, axes = plt.subplots(len(datasets), 3, figsize=(12, 3.2 * len(datasets)), squeeze=False)
    colors = {"emd": "tab:blue", "vsd": "tab:red"}
    for row, ds in zip(axes, datasets):
        for method in ("emd", "vsd"):
            group = [r for r in runs if r["config"]["dataset"] == ds and r["config"]["method"] == method]
            for i, r in enumerate(group):
                kw = dict(color=colors[method], alpha=0.7, label=method.upper() if i == 0 else None)
                its = [e["iteration"] for e in r["log"]]
                row[0].plot(its, [e["mode_tv"] for e in r["log"]], **kw)
                row[1].plot([e["cpu_seconds"] for e in r["log"]], [e["mode_tv"] for e in r["log"]], **kw)
                row[2].plot(its, [e["modes_covered"] for e in r["log"]], **kw)
        for ax, xl, yl in ((row[0], "iterations", "mode-weight TV"), (row[1], "training CPU seconds", "mode-weight TV"),
                           (row[2], "iterations", "modes covered (f_m ≥ π_m / 2)")):
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.set_title(ds, fontsize=9)
            ax.legend(fontsize=7)
        for ax in row[:2]:
            ax.set_yscale("log")
            ax.axhline(0.05, color="gray", linestyle=":")
    fig.tight_layout()
    savefig(fig, path, dpi=80)
    plt.close(fig)


def write_report(out: str) -> dict:
    """Tables (``OUT/tables.md``), ``OUT/summary.json`` with the target checks, and the two summary plots."""
    mm_table, mm_targets, mm_rows, mm_runs = mm_section(out)
    emd_table, emd_targets, emd_rows, emd_runs = emd_section(out)
    tables = "## Moment matching (digits, D = 256)\n\n" + mm_table + "\n\n## EMD vs VSD\n\n" + emd_table + "\n"
    targets = {**mm_targets, **emd_targets}
    tables += "\n## Targets\n\n" + "\n".join(f"- {k}: {'met' if v else 'NOT met'}" for k, v in targets.items()) + "\n"
    atomic_write(os.path.join(out, "tables.md"), lambda f: f.write(tables.encode()))
    if mm_runs:
        plot_mm(mm_runs, os.path.join(out, "distill_mm_fd.png"))
    if emd_runs:
        plot_emd(emd_runs, os.path.join(out, "distill_emd_modes.png"))
    summary = {"targets": targets, "mm": mm_rows, "emd": emd_rows, "tables": tables}
    write_json(summary, os.path.join(out, "summary.json"))
    return summary
