"""The acceptance layer: the CLI subcommands, the report's paired target checks on hand-made results, and (marked
slow, not in `make test`) the acceptance run itself, `make distill`'s tables and targets."""
import json
import os

import pytest

from gmm_triton.cli import main
from gmm_triton.lab.distill.report import write_report


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def _mm(teacher, k, seed, fd, ddim, anc, variant="alternating"):
    log = [{"iteration": 0, "seconds": 0.0, "cpu_seconds": 0.0, "fd": fd + 1}, {"iteration": 10, "seconds": 2.0,
                                                                               "cpu_seconds": 1.0, "fd": fd}]
    return {"config": {"teacher": teacher, "variant": variant, "steps": k, "seed": seed, "eval_samples": 100},
            "fd": fd, "mode_tv": 0.05,
            "nll": -1.0, "teacher_ddim_fd": ddim, "teacher_ancestral_fd": anc, "iterations": 10, "cpu_seconds": 1.0,
            "seconds": 2.0, "log": log}


def _emd(ds, method, seed, to_tv, covered):
    log = [{"iteration": 0, "seconds": 0.0, "cpu_seconds": 0.0, "mode_tv": 0.4, "modes_covered": 1},
           {"iteration": 100, "seconds": 1.0, "cpu_seconds": 1.0, "mode_tv": 0.02, "modes_covered": covered}]
    return {"config": {"dataset": ds, "method": method, "seed": seed}, "mode_tv": 0.02, "modes_covered": covered,
            "precision": 0.9, "iterations_to_tv": to_tv, "cpu_seconds_to_tv": None if to_tv is None else to_tv / 10,
            "recall": [1.0, 0.5], "iterations": 100, "cpu_seconds": 1.0, "seconds": 1.0, "log": log}


def test_report_targets_are_paired_over_seeds(tmp_path):
    # k = 8, learned: seeds 0 and 1 beat DDIM, seed 2 does not (although the mean does): not met
    for seed, (fd, ddim) in enumerate([(1.0, 2.0), (1.0, 2.0), (2.1, 2.0)]):
        _write(tmp_path / f"mm/alternating_k8_learned_seed{seed}/result.json", _mm("learned", 8, seed, fd, ddim, 3.0))
        _write(tmp_path / f"mm/alternating_k8_oracle_seed{seed}/result.json", _mm("oracle", 8, seed, 1.0, 0.5, 1.5))
        # instant, learned teacher: k = 1 (FD 3, 0.8, 3) and k = 2 (FD 1.5 on every seed)
        _write(tmp_path / f"mm/instant_k1_learned_seed{seed}/result.json",
               _mm("learned", 1, seed, 0.8 if seed == 1 else 3.0, 2.5, 4.0, "instant"))
        _write(tmp_path / f"mm/instant_k2_learned_seed{seed}/result.json",
               _mm("learned", 2, seed, 1.5, 2.5, 1.4, "instant"))
    _write(tmp_path / "baselines/learned_ddim50.json", {
        "config": {"seeds": [0, 1, 2]}, "fd": 0.95,
        "per_seed": [{"fd": v, "mode_tv": 0.1, "nll": -1.0} for v in (0.9, 1.1, 0.85)]})
    for seed in range(3):
        _write(tmp_path / f"emd/2d4_emd_seed{seed}/result.json", _emd("2d4", "emd", seed, 100, 4))
        _write(tmp_path / f"emd/2d4_vsd_seed{seed}/result.json", _emd("2d4", "vsd", seed, None if seed else 50, 4))
        _write(tmp_path / f"emd/8d8_emd_seed{seed}/result.json", _emd("8d8", "emd", seed, None, 3))
        _write(tmp_path / f"emd/8d8_vsd_seed{seed}/result.json", _emd("8d8", "vsd", seed, None, 2 + (seed == 0)))
    summary = write_report(str(tmp_path))
    t, c = summary["targets"], summary["claims"]
    assert t["mm_alternating_k8_learned_beats_teacher_ddim"] is False
    assert t["mm_alternating_k8_learned_beats_teacher_ancestral"] is True
    assert t["mm_alternating_k8_oracle_beats_teacher_ancestral"] is True
    assert "mm_alternating_k8_oracle_beats_teacher_ddim" not in t             # required for the learned teacher only
    assert not any("instant" in k for k in t)                                 # the new rows are claims, not targets
    # claims: [seeds where it holds, seeds], paired per seed
    assert c["mm_alternating_k8_learned_beats_teacher_ddim"] == [2, 3]
    assert c["mm_alternating_k8_learned_beats_teacher_ddim50"] == [1, 3]      # 1.0, 1.0, 2.1 vs 0.9, 1.1, 0.85
    assert "mm_alternating_k8_oracle_beats_teacher_ddim50" not in c           # no 50-step oracle baseline here
    assert c["mm_instant_k2_learned_beats_its_one_step_student"] == [2, 3]    # 1.5 vs 3, 0.8, 3
    assert c["mm_instant_k2_learned_beats_teacher_ancestral"] == [0, 3]
    assert "mm_instant_k1_learned_beats_its_one_step_student" not in c
    assert t["emd_2d4_reaches_tv_0.05_in_fewer_iterations_than_vsd"] is True   # 100 vs (50, ∞, ∞)
    assert t["emd_8d8_covers_more_modes_than_vsd"] is True                     # 3 vs 2.33
    tables = open(tmp_path / "tables.md").read()
    assert "| learned | alternating | 8 | 1.37 ± 0.635 | 2 ± 0 | 3 ± 0 |" in tables and "2/3" in tables
    assert "| learned | 50-step teacher DDIM | 50 | — | 0.95 ± 0.132 |" in tables
    assert "| claim (seeds where it holds) | teacher | alternating k = 8, 2, 1 | instant k = 8, 2, 1 |" in tables
    assert "| beats the teacher's DDIM at the same k | learned | 2/3, —, — | —, 3/3, 1/3 |" in tables
    assert "| beats the same variant's 1-step student (multistep vs one-step) | learned | —, —, — | —, 2/3, — |" in tables
    assert tables.index("| learned | instant | 2 |") < tables.index("| learned | instant | 1 |")
    assert "| 50, ∞, ∞ | 5, ∞, ∞ |" in tables
    for plot in ("distill_mm_fd.png", "distill_emd_modes.png"):
        assert os.path.getsize(tmp_path / plot) > 0


def test_acceptance_budgets_are_two_cpu_minutes_of_each_variant():
    """The students' iteration budgets are 2 CPU minutes at each variant's calibrated rate (equal compute)."""
    from gmm_triton.lab.distill.cli import ACCEPTANCE
    from gmm_triton.lab.distill.loop import iterations_for
    from gmm_triton.lab.distill.mm import ITERATIONS_PER_SECOND, VARIANTS

    assert set(ACCEPTANCE["variants"]) == set(VARIANTS) == set(ACCEPTANCE["mm_iterations"])
    for v in VARIANTS:
        assert ACCEPTANCE["mm_iterations"][v] == iterations_for(2.0, ITERATIONS_PER_SECOND[v])


def test_cli_subcommands(tmp_path, capsys):
    assert main(["distill", "emd", "--dataset", "2d4", "--method", "vsd", "--iterations", "2", "--quiet",
                 "--out", str(tmp_path / "emd")]) == 0
    assert json.load(open(tmp_path / "emd" / "result.json"))["iterations"] == 2
    assert "modes covered" in capsys.readouterr().out
    for argv, named in ((["distill", "mm", "--steps", "4", "--teacher", "exact"], "--teacher"),
                        (["distill", "mm", "--steps", "0"], "--steps"),
                        (["distill", "mm", "--steps", "4", "--variant", "both"], "--variant"),
                        (["distill", "emd", "--dataset", "3d3"], "--dataset"),
                        (["distill", "emd", "--minutes", "-1"], "--minutes"),
                        (["distill", "all", "--workers", "0"], "--workers"),
                        (["train", "--seed", "-3"], "--seed")):
        with pytest.raises(SystemExit):
            main([*argv, "--out", str(tmp_path / "bad")])
        assert named in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "bad")


@pytest.mark.slow
def test_acceptance_targets():
    """`make distill`'s run (reused from GMM_TRITON_DISTILL_OUT, default gmm_triton_out/distill, when it is there):
    the issue's targets, each over 3 training seeds."""
    from gmm_triton.lab.distill.cli import run_all

    out = os.environ.get("GMM_TRITON_DISTILL_OUT", "gmm_triton_out/distill")
    run_all(out, workers=2)
    targets = write_report(out)["targets"]
    required = [k for k in targets if "paper" not in k]
    assert {k: targets[k] for k in required} == {k: True for k in required}
