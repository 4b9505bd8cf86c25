"""`kdbench tune` through the CLI: equal budgets, validation only, fixed seeds, resume, tuned.toml in `run`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from conftest import one_line_error, torch_threads

from kdbench.cli import main

optuna = pytest.importorskip("optuna")

TINY_ARGS = ["--epochs", "1", "--batch-size", "4", "--load-size", "32", "--crop", "28", "--quiet",
             "--jobs-per-gpu", "1"]
TUNE_THREADS = 2  # the fixture's tune runs on 2 torch threads, as on the 2-core machine


def _tune_args(runs: Path, data: Path, methods: str, seed: int = 3, trials: int = 2) -> list[str]:
    return ["tune", "--methods", methods, "--scenes", "SynthRoom", "--trials", str(trials), "--seed", str(seed),
            "--runs-dir", str(runs), "--data-root", str(data), *TINY_ARGS]


def _studies(runs: Path) -> dict[str, optuna.Study]:
    url = f"sqlite:///{runs / 'tune' / 'tune.sqlite'}"
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=url)
            for s in optuna.get_all_study_summaries(url)}


def _jobs(runs: Path) -> pd.DataFrame:
    with sqlite3.connect(runs / "results.sqlite") as conn:
        jobs = pd.read_sql_query("SELECT id, kind, method, status, run_dir, updated, config FROM jobs", conn)
    return jobs.assign(config=jobs["config"].map(json.loads))


def _complete_params(study: optuna.Study) -> list[dict]:
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    return [t.params for t in sorted(done, key=lambda t: t.number)]


@pytest.fixture(scope="module")
def tuned(tiny_data_root, tmp_path_factory) -> Path:
    """A finished tune of baseline and vanilla, 2 trials each, on the tiny SynthRoom."""
    runs = tmp_path_factory.mktemp("tuned-runs")
    args = _tune_args(runs, tiny_data_root, "baseline,vanilla")
    i = args.index("--jobs-per-gpu")
    del args[i:i + 2]
    with torch_threads(TUNE_THREADS):  # no --jobs-per-gpu: the default, checked in the first test
        assert main(args) == 0
    return runs


def test_every_row_gets_the_same_trials_and_only_validation_frames_are_scored(tuned, tiny_data_root):
    studies = _studies(tuned)
    assert set(studies) == {"baseline|synthetic", "vanilla|synthetic"}
    for study in studies.values():
        assert len(study.get_trials()) == 2 and all(t.state.name == "COMPLETE" for t in study.get_trials())
    assert set(studies["baseline|synthetic"].best_params) == {"lr"}  # the baseline tunes its learning rate only
    assert set(studies["vanilla|synthetic"].best_params) == {"alpha", "lr"}
    jobs = _jobs(tuned)
    jobs = jobs[jobs["method"].str.contains("@val")]  # what the tune ran (a later test runs test jobs here)
    assert (jobs["status"] == "done").all() and len(jobs) == 1 + 2 + 2  # one teacher shared by every trial
    assert (jobs["config"].map(lambda c: c["eval_split"]) == "val").all()
    # a trial of one scene and seed is one job at a time: on CPU it gets every thread, not half of them
    assert (jobs["config"].map(lambda c: c["threads"]) == TUNE_THREADS).all()
    students = jobs[jobs["kind"] == "student"]
    lrs = students["config"].map(lambda c: c["lr"])
    assert lrs.nunique() == 4 and lrs.between(1e-4, 1e-2).all()  # the preset's 1e-3 / 10 .. x 10
    from kdbench.scenes import get_scene
    from kdbench.scenes.catalog import scene_dir
    from kdbench.scenes.readers import read_split

    spec = get_scene("SynthRoom")
    test_frames = {str(Path(f.image_path).relative_to(scene_dir(spec, tiny_data_root)))
                   for f in read_split(scene_dir(spec, tiny_data_root), spec, "test")}
    for run_dir in jobs["run_dir"]:
        images = set(pd.read_csv(tuned / run_dir / "predictions.csv")["image"])
        assert images and not images & test_frames, run_dir


def test_tuned_file_and_run_hparams_train_the_chosen_values_on_the_training_split(tuned, tiny_data_root, capsys,
                                                                                  tmp_path):
    from kdbench.runners.tuned import read_tuned

    rows = read_tuned(tuned / "tuned.toml")
    studies = _studies(tuned)
    for row in ("baseline", "vanilla"):
        entry = rows[row]["synthetic"]
        best = studies[f"{row}|synthetic"].best_trial
        assert entry["values"] == best.params and entry["val_error"] == best.value and entry["trials"] == 2
    capsys.readouterr()
    rc = main(["run", "--hparams", str(tuned / "tuned.toml"), "--methods", "baseline,vanilla", "--scenes",
               "SynthRoom", "--seeds", "1", "--runs-dir", str(tuned), "--data-root", str(tiny_data_root), *TINY_ARGS])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("(tuned on validation, 2 trials)") == 2, out
    jobs = _jobs(tuned)
    test_jobs = jobs[jobs["config"].map(lambda c: c["eval_split"]) == "test"]
    assert sorted(test_jobs["kind"]) == ["student", "student", "teacher"]
    for job in test_jobs[test_jobs["kind"] == "student"].itertuples():
        chosen = rows[job.method]["synthetic"]["values"]
        assert job.config["lr"] == chosen["lr"] and job.config["tuning"] == "tuned on validation, 2 trials"
        assert all(job.config["method_params"][k] == v for k, v in chosen.items() if k != "lr")
    val_teacher = jobs[(jobs["kind"] == "teacher") & (jobs["config"].map(lambda c: c["eval_split"]) == "val")]
    vanilla = test_jobs[test_jobs["method"] == "vanilla"].iloc[0]
    assert vanilla.config["teacher_hash"] != val_teacher["id"].iloc[0]  # learns from the full-split teacher
    assert main(["report", "--runs-dir", str(tuned), "--format", "html", "--out", str(tmp_path / "site")]) == 0
    page = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "Tuned hyperparameters" in page and f"alpha={rows['vanilla']['synthetic']['values']['alpha']:.4g}" in page


def test_same_seed_same_values_and_an_interrupted_tune_resumes_without_repeating(tuned, tiny_data_root,
                                                                                 tmp_path, monkeypatch, capsys):
    from kdbench.runners import tune as tune_mod

    real, calls = tune_mod.run_trial, []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill in the middle of trial 1: it stays "running" in the study
        return real(*args, **kwargs)

    monkeypatch.setattr(tune_mod, "run_trial", interrupt_second)
    runs = tmp_path / "runs"
    assert main(_tune_args(runs, tiny_data_root, "baseline")) == 130
    first = _jobs(runs)
    monkeypatch.setattr(tune_mod, "run_trial", real)
    capsys.readouterr()
    assert main(_tune_args(runs, tiny_data_root, "baseline")) == 0
    assert "1 trials run now" in capsys.readouterr().out  # trial 0 was not run again
    again = _jobs(runs).set_index("id")
    for job in first.itertuples():  # the finished trial's jobs were reused, not retrained
        assert again.loc[job.id, "updated"] == job.updated
    study = _studies(runs)["baseline|synthetic"]
    states = [t.state.name for t in study.get_trials()]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1  # the stale one, not counted
    # a fresh tune with the same seed chose the same values, the interrupted trial asked again included
    assert _complete_params(study) == _complete_params(_studies(tuned)["baseline|synthetic"])
    assert main(_tune_args(runs, tiny_data_root, "baseline", seed=4) + ["--study", "other"]) == 0
    other = optuna.load_study(study_name="baseline|synthetic", storage=f"sqlite:///{runs / 'tune' / 'other.sqlite'}")
    assert _complete_params(other) != _complete_params(study)  # another seed, other values


def test_rerun_of_a_finished_tune_trains_nothing(tuned, tiny_data_root, capsys):
    before = _jobs(tuned)
    capsys.readouterr()
    assert main(_tune_args(tuned, tiny_data_root, "baseline,vanilla")) == 0
    assert "0 trials run now" in capsys.readouterr().out
    after = _jobs(tuned)
    assert len(after) == len(before)


def test_a_study_of_another_space_split_or_budget_is_one_clear_line(tuned, tiny_data_root, monkeypatch, capsys):
    from dataclasses import replace

    from kdbench.methods import get_method
    from kdbench.runners import tune as tune_mod

    vanilla = get_method("vanilla")
    monkeypatch.setitem(vanilla.hparams, "alpha", replace(vanilla.hparams["alpha"], search=(0.2, 0.8, "linear")))
    err = one_line_error(capsys, main(_tune_args(tuned, tiny_data_root, "vanilla")))
    assert "another search space" in err and "--study NEW_NAME" in err
    monkeypatch.undo()
    monkeypatch.setattr(tune_mod, "split_identity", lambda: {"eval_split": "val", "val_gap": 9})
    err = one_line_error(capsys, main(_tune_args(tuned, tiny_data_root, "baseline")))
    assert "another split" in err and "--study NEW_NAME" in err
    monkeypatch.undo()
    err = one_line_error(capsys, main(_tune_args(tuned, tiny_data_root, "baseline", trials=1)))
    assert "--trials 1" in err and "has 2 finished trials" in err


def test_bad_tune_input_is_one_clear_line(tmp_path, capsys, monkeypatch):
    from kdbench.methods import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the plugins leave no trace
    for trials in ("0", "-2"):
        err = one_line_error(capsys, main(["tune", "--trials", trials, "--runs-dir", str(tmp_path)]))
        assert f"--trials {trials}" in err and ">= 1" in err
    for search, words in (("(5.0, 1.0, 'log')", "low >= high"), ("(0.0, 10.0, 'log')", "log range through 0"),
                          ("(1.0, 10.0, 'cubic')", "scale one of")):
        plugin = tmp_path / f"bad{len(words)}.py"
        plugin.write_text("from kdbench.methods import Method, register_method\n"
                          "from kdbench.methods.base import HParam\n\n"
                          f"@register_method('bad{len(words)}')\nclass Bad(Method):\n"
                          f"    hparams = {{'w': HParam(1.0, 'float', 'weight', search={search})}}\n")
        err = one_line_error(capsys, main(["methods", "--plugin", str(plugin)]))
        assert words in err and search.replace("'", "")[:8] in err.replace("'", ""), err
    plugin = tmp_path / "nospace.py"
    plugin.write_text("from kdbench.methods import Method, register_method\n"
                      "from kdbench.methods.base import HParam\n\n"
                      "@register_method('nospace')\nclass NoSpace(Method):\n"
                      "    needs_teacher = False\n"
                      "    hparams = {'w': HParam(1.0, 'float', 'weight')}\n")
    err = one_line_error(capsys, main(["tune", "--plugin", str(plugin), "--methods", "nospace",
                                       "--runs-dir", str(tmp_path)]))
    assert "'nospace' declares no search space" in err and "search=(low, high" in err and "nospace:w=" in err


def test_search_spaces_are_shown_and_defaults_of_tune(capsys):
    from kdbench.cli import build_parser, subparser

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "(tune: 1..10000 log)" in out and "(tune: 0.1..0.9 linear)" in out
    baseline = out.split("\n\n")[0]
    assert "learning rate only" in baseline
    args = subparser(build_parser(), "tune").parse_args([])
    assert (args.methods, args.scenes, args.trials, args.seeds) == ("baseline,sckd", "SynthRoom", 4, "1")


def test_report_plots_the_search(tuned, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from kdbench.reports.tuning import importances, load_trials, sensitivity

    trials = load_trials(tuned)
    for _, part in trials.groupby("row"):
        best = part.sort_values("trial")["best_so_far"].to_numpy()
        assert (best[1:] <= best[:-1]).all() and best[-1] == part["value"].min()
    sens = sensitivity(trials)
    assert set(sens["param"]) == {"alpha"} and len(sens) == 2  # vanilla's weight; lr and the baseline left out
    assert set(importances(tuned)["row"]) <= {"baseline", "vanilla"}
    capsys.readouterr()
    assert main(["report", "--runs-dir", str(tuned), "--plots", str(tmp_path / "plots")]) == 0
    n_val = int((_jobs(tuned)["config"].map(lambda c: c["eval_split"]) == "val").sum())
    assert f"{n_val} jobs scored on the validation split (`kdbench tune`, `train --eval-split val`) are not " \
        "shown" in capsys.readouterr().out  # the footnote counts them: none is on the test leaderboard
    assert main(["report", "--runs-dir", str(tuned), "--scenes", "SynthStreet"]) == 0
    assert "validation split" not in capsys.readouterr().out  # only those of the scenes shown
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"tune-curve-synthetic.png", "tune-sensitivity-synthetic.png"} <= names


def test_tune_of_several_student_archs_is_refused_before_any_study(tmp_path, capsys):
    err = one_line_error(capsys, main(["tune", "--student-arch", "resnet18,mobilenet_v3_small", "--runs-dir",
                                       str(tmp_path / "runs")]))
    assert "tune one student architecture at a time: --student-arch A" in err and "resnet18,mobilenet_v3_small" in err
    assert not (tmp_path / "runs" / "tune").exists()


def test_tuned_file_records_its_arch_and_run_hparams_refuses_another(tmp_path, capsys):
    from kdbench.runners.tune import TuneOptions
    from kdbench.runners.tuned import read_tuned_arch, write_tuned

    path = write_tuned({}, tmp_path / "empty.toml", "group", 2, "tune", opts=TuneOptions(seeds=[0],
                                                                                       student_arch="resnet34"))
    assert read_tuned_arch(path) == "resnet34"
    tuned = tmp_path / "tuned.toml"
    tuned.write_text('[meta]\nformat = "kdbench-tuned-1"\nstudent_arch = "resnet18"\n\n'
                     '[rows."baseline".synthetic]\nvalues = { lr = 0.002 }\nval_error = 0.5\ntrials = 2\ntrial = 1\n')
    base = ["run", "--dry-run", "--hparams", str(tuned), "--methods", "baseline", "--scenes", "SynthRoom",
            "--seeds", "1", "--runs-dir", str(tmp_path / "runs")]
    assert main([*base, "--student-arch", "resnet18"]) == 0
    capsys.readouterr()
    err = one_line_error(capsys, main([*base, "--student-arch", "resnet18,mobilenet_v3_small"]))
    assert "tuned for --student-arch resnet18, not mobilenet_v3_small" in err
