"""Tuning and tuned rows carry their row label in the config too, where --rebuild-store reads it back."""

from __future__ import annotations

from kdbench.methods import get_method
from kdbench.runners.plan import make_plan
from kdbench.scenes import get_scene


def _plan(method: str):
    return make_plan([method], [get_scene("SynthRoom")], [0], "resnet34", "resnet18", "quick")


def test_tuned_row_label_is_recorded_in_the_config():
    from kdbench.runners.tuned import _tuned_job

    jobs = [_tuned_job(j, {"values": {"lr": 3e-3}, "trials": 2}, "baseline:tuned", get_method("baseline"))
            for j in _plan("baseline")]
    (student,) = [j for j in jobs if j.kind == "student"]
    assert student.method == student.cfg.method_label == "baseline:tuned"
    assert student.cfg.hash() == student.id  # a label: the id is the tuned values' job, as before


def test_tuning_trial_labels_are_recorded_in_the_configs():
    from kdbench.runners.tune import LR_KEY, Row, _trial_planner

    row = Row("vanilla", "vanilla", {}, {LR_KEY: (1e-4, 1e-2, "log")})
    planner = _trial_planner(row, {LR_KEY: 2e-3}, "vanilla@val#0")
    jobs = planner([get_scene("SynthRoom")], [0], "resnet34", "resnet18", "quick", {}, eval_split="val")
    assert {j.kind for j in jobs} == {"teacher", "student"}
    assert all(j.cfg.method_label == j.method and "@val" in j.method for j in jobs)


def test_tune_does_not_take_the_crossed_design_flags(capsys):
    import pytest

    from kdbench.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["tune", "--teacher-seeds", "2"])
    assert "--teacher-seeds" in capsys.readouterr().err
