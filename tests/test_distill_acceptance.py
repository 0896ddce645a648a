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


def _mm(teacher, k, seed, fd, ddim, anc):
    log = [{"iteration": 0, "seconds": 0.0, "cpu_seconds": 0.0, "fd": fd + 1}, {"iteration": 10, "seconds": 2.0,
                                                                               "cpu_seconds": 1.0, "fd": fd}]
    return {"config": {"teacher": teacher, "steps": k, "seed": seed, "eval_samples": 100}, "fd": fd, "mode_tv": 0.05,
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
        _write(tmp_path / f"mm/k8_learned_seed{seed}/result.json", _mm("learned", 8, seed, fd, ddim, 3.0))
        _write(tmp_path / f"mm/k8_oracle_seed{seed}/result.json", _mm("oracle", 8, seed, 1.0, 0.5, 1.5))
    _write(tmp_path / "baselines/learned_ddim50.json", {"fd": 0.9, "per_seed": [{"fd": 0.9, "mode_tv": 0.1,
                                                                                 "nll": -1.0}]})
    for seed in range(3):
        _write(tmp_path / f"emd/2d4_emd_seed{seed}/result.json", _emd("2d4", "emd", seed, 100, 4))
        _write(tmp_path / f"emd/2d4_vsd_seed{seed}/result.json", _emd("2d4", "vsd", seed, None if seed else 50, 4))
        _write(tmp_path / f"emd/8d8_emd_seed{seed}/result.json", _emd("8d8", "emd", seed, None, 3))
        _write(tmp_path / f"emd/8d8_vsd_seed{seed}/result.json", _emd("8d8", "vsd", seed, None, 2 + (seed == 0)))
    t = write_report(str(tmp_path))["targets"]
    assert t["mm_k8_learned_beats_teacher_ddim"] is False
    assert t["mm_k8_learned_beats_teacher_ancestral"] is True
    assert t["mm_k8_oracle_beats_teacher_ancestral"] is True
    assert t["mm_k8_learned_beats_teacher_ddim50 (paper claim)"] is False     # mean 1.37 > 0.9
    assert "mm_k8_oracle_beats_teacher_ddim" not in t                          # required for the learned teacher only
    assert t["emd_2d4_reaches_tv_0.05_in_fewer_iterations_than_vsd"] is True   # 100 vs (50, ∞, ∞)
    assert t["emd_8d8_covers_more_modes_than_vsd"] is True                     # 3 vs 2.33
    tables = open(tmp_path / "tables.md").read()
    assert "| learned | 8 | 1.37 ± 0.635 | 2 ± 0 | 3 ± 0 |" in tables and "2/3" in tables
    assert "| 50, ∞, ∞ | 5, ∞, ∞ |" in tables
    for plot in ("distill_mm_fd.png", "distill_emd_modes.png"):
        assert os.path.getsize(tmp_path / plot) > 0


def test_cli_subcommands(tmp_path, capsys):
    assert main(["distill", "emd", "--dataset", "2d4", "--method", "vsd", "--iterations", "2", "--quiet",
                 "--out", str(tmp_path / "emd")]) == 0
    assert json.load(open(tmp_path / "emd" / "result.json"))["iterations"] == 2
    assert "modes covered" in capsys.readouterr().out
    for argv, named in ((["distill", "mm", "--steps", "4", "--teacher", "exact"], "--teacher"),
                        (["distill", "mm", "--steps", "0"], "--steps"),
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
