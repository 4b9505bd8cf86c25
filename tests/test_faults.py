"""Fault injection through the CLI: every fault ends in exit status 2 with a one-line message, or in
recovery, and never in a lost result.

Faults: a damaged results store, a damaged cache, a truncated teacher checkpoint, changed data, a failed
rerun of finished jobs (a full disk), two concurrent runs, kill -9 at a few moments, and the smaller
user errors of issue 13.
"""

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import one_line_error as _one_line_error

from kdbench.cli import main
from kdbench.fileio import torch_save_atomic
from kdbench.reports.leaderboard import load_results, not_shown, shown_jobs
from kdbench.reports.store import ResultsStore
from kdbench.runners.train import load_checkpoint

TINY_ARGS = ["--epochs", "1", "--batch-size", "4", "--load-size", "32", "--crop", "28", "--quiet"]
METHODS = "baseline,vanilla"  # one teacher, two students


def _run(runs, data, *extra, methods=METHODS):
    return main(["run", "--seeds", "1",
                 "--methods", methods, "--scenes", "SynthRoom", "--runs-dir", str(runs), "--data-root",
                 str(data), *TINY_ARGS, *extra])



def _rows(runs):
    with ResultsStore(runs, create=False) as store:
        return {r["id"]: {**r, "metrics": store.metrics(r["id"])} for r in store.jobs()}


def _summary(out):
    m = re.search(r"(\d+) jobs: (\d+) trained now, (?:(\d+) evaluated from a finished checkpoint, )?(\d+) reused"
                  r"(?: \((\d+) finished by another kdbench run\))?, (\d+) failed", out)
    assert m, out
    jobs, trained, evaluated, reused, elsewhere, failed = (int(g or 0) for g in m.groups())
    return {"jobs": jobs, "trained": trained, "evaluated": evaluated, "reused": reused, "elsewhere": elsewhere,
            "failed": failed}


@pytest.fixture(scope="module")
def finished(tiny_data_root, tmp_path_factory):
    """A runs folder where `kdbench run --methods baseline,vanilla` finished (teacher + 2 students)."""
    runs = tmp_path_factory.mktemp("finished") / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _run(runs, tiny_data_root) == 0
    finally:
        torch.set_num_threads(threads)
    return runs


@pytest.fixture
def runs(finished, tmp_path, one_thread):
    """A private copy of the finished runs folder."""
    return Path(shutil.copytree(finished, tmp_path / "runs"))


@pytest.fixture
def data(tiny_data_root, tmp_path):
    """A private copy of the tiny data root (for tests that change it)."""
    return Path(shutil.copytree(tiny_data_root, tmp_path / "data"))


def _teacher(runs):
    return next(r for r in _rows(runs).values() if r["kind"] == "teacher")


# the results store -------------------------------------------------------------------------------------------
def test_damaged_store_stops_the_run_and_rebuild_recovers_every_result(runs, tiny_data_root, capsys):
    before = _rows(runs)
    store = runs / "results.sqlite"
    damaged = os.urandom(store.stat().st_size)
    store.write_bytes(damaged)
    err = _one_line_error(capsys, _run(runs, tiny_data_root))
    assert str(store) in err and "--rebuild-store" in err
    for argv in (["runs"], ["report"]):
        _one_line_error(capsys, main([*argv, "--runs-dir", str(runs)]))
    assert _run(runs, tiny_data_root, "--rebuild-store") == 0
    out = capsys.readouterr().out
    assert "rebuilt the results store from 3 finished run folder(s)" in out
    assert _summary(out) == {"jobs": 3, "trained": 0, "evaluated": 0, "reused": 3, "elsewhere": 0, "failed": 0}
    # the damaged file is kept, not deleted
    assert damaged in [p.read_bytes() for p in runs.glob("results.sqlite.damaged-*")]
    after = _rows(runs)
    assert after.keys() == before.keys()
    assert all(after[i]["status"] == "done" and after[i]["metrics"] == before[i]["metrics"] for i in before)


def test_damaged_cache_is_rebuilt_or_one_clear_error(runs, data, capsys):
    assert _run(runs, data) == 0
    capsys.readouterr()
    cache = next((data / "SynthRoom").glob(".kdbench-cache/train-32"))
    images = cache / "images.npy"
    images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
    shutil.rmtree(next(runs.glob("SynthRoom/student-*baseline*")))  # something must train on the cache
    rc = _run(runs, data)
    captured = capsys.readouterr()
    if rc == 2:
        assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    else:
        assert rc == 0, captured.out + captured.err
        assert _summary(captured.out)["failed"] == 0
    assert all(r["status"] == "done" for r in _rows(runs).values())  # nothing recorded was lost


# teacher checkpoints ---------------------------------------------------------------------------------------------
def test_truncated_teacher_is_verified_retrained_and_reported(runs, tiny_data_root, capsys):
    teacher = _teacher(runs)
    ckpt = runs / teacher["run_dir"] / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3])
    # hint needs the teacher: its checkpoint is checked, found truncated, moved aside and retrained.
    assert _run(runs, tiny_data_root, methods="baseline,vanilla,hint") == 0
    out = capsys.readouterr().out
    assert "repaired: teacher" in out and "truncated" in out and "retraining it" in out
    assert _summary(out) == {"jobs": 4, "trained": 2, "evaluated": 0, "reused": 2, "elsewhere": 0, "failed": 0}
    assert load_checkpoint(ckpt)["hash"] == teacher["id"]
    assert (ckpt.parent / "checkpoint.pt.damaged").is_file()
    # And the next run trusts it again: size and checksum match what was recorded.
    assert _run(runs, tiny_data_root, methods="baseline,vanilla,hint") == 0
    assert _summary(capsys.readouterr().out)["reused"] == 4


def test_failed_rerun_never_overwrites_finished_results(runs, tiny_data_root, capsys, monkeypatch):
    before = _rows(runs)
    for ckpt in runs.rglob("checkpoint.pt"):
        ckpt.unlink()
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real_save(obj, "/dev/full"))
    assert _run(runs, tiny_data_root, methods="baseline,vanilla,hint") == 1
    out = capsys.readouterr().out
    assert "disk full while writing" in out and "its earlier finished result is kept" in out
    after = _rows(runs)
    for job_id, row in before.items():
        assert after[job_id]["status"] == "done" and after[job_id]["metrics"] == row["metrics"]
    teacher = _teacher(runs)
    assert "disk full" in teacher["last_error"]
    monkeypatch.undo()
    assert main(["report", "--runs-dir", str(runs)]) == 0
    report = capsys.readouterr().out
    assert "No finished runs" not in report and "vanilla" in report
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    assert "a rerun failed" in capsys.readouterr().out


# data ----------------------------------------------------------------------------------------------------------
def test_changed_data_retrains_and_supersedes_the_old_results(runs, data, capsys):
    assert _run(runs, data) == 0
    capsys.readouterr()
    old = {i: r for i, r in _rows(runs).items() if r["status"] == "done"}
    assert len(old) == 3
    assert main(["scenes", "synth", "SynthRoom", "--data-root", str(data), "--frames", "4", "--size", "48x36",
                 "--seed", "7", "--quiet"]) == 0
    assert _run(runs, data) == 0
    out = capsys.readouterr().out
    assert _summary(out)["trained"] == 3
    assert "3 earlier result(s)" in out and "superseded" in out
    rows = _rows(runs)
    assert all(rows[i]["status"] == "superseded" for i in old)  # kept, never deleted
    new = [r for i, r in rows.items() if r["status"] == "done"]
    assert len(new) == 3 and not set(r["id"] for r in new) & set(old)
    assert len({r["data"] for r in new}) == 1 and new[0]["data"] not in {r["data"] for r in old.values()}
    df = load_results(runs)
    assert set(shown_jobs(df)["id"]) == {r["id"] for r in new}  # the leaderboard shows the new numbers only
    assert not_shown(df)["superseded"] == 3
    assert main(["report", "--runs-dir", str(runs)]) == 0
    assert "3 earlier run(s)" in capsys.readouterr().out
    assert main(["runs", "--runs-dir", str(runs), "--status", "superseded"]) == 0
    listed = capsys.readouterr().out
    assert all(i in listed for i in old)


# concurrency and kills -------------------------------------------------------------------------------------------
def _cli(runs, data, *extra, methods="baseline,vanilla,hint", epochs="2"):
    cmd = [sys.executable, "-m", "kdbench.cli", "run", "--seeds", "1", "--methods", methods, "--scenes", "SynthRoom",
           "--runs-dir", str(runs), "--data-root", str(data), "--epochs", epochs, "--batch-size", "4",
           "--load-size", "32", "--crop", "28", "--quiet", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_concurrent_runs_train_each_job_once(tiny_data_root, tmp_path):
    runs = tmp_path / "runs"
    first = _cli(runs, tiny_data_root)
    deadline = time.time() + 300
    while not list(runs.glob("*/*/.lock")) and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = _cli(runs, tiny_data_root)
    out1, err1 = first.communicate(timeout=600)
    out2, err2 = second.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    s1, s2 = _summary(out1), _summary(out2)
    assert s1["trained"] + s2["trained"] == 4  # every job trained by exactly one of them
    assert s1["evaluated"] == s2["evaluated"] == 0
    assert s2["reused"] == 4 - s2["trained"] and s2["elsewhere"] >= 1
    rows = _rows(runs)
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows.values())


def _kill_when(proc, condition, timeout=300):
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before the moment to kill it"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _done(runs):
    if not (runs / "results.sqlite").is_file():  # connecting would create it
        return 0
    try:
        with sqlite3.connect(f"file:{runs / 'results.sqlite'}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'done'").fetchone()[0]
    except sqlite3.Error:
        return 0


MOMENTS = {
    "during the first epoch": lambda runs: bool(list(runs.glob("*/teacher-*/config.json"))),
    "while a checkpoint is written": lambda runs: bool(list(runs.glob("*/*/.checkpoint.pt.*.tmp"))),
    "after the teacher finished": lambda runs: _done(runs) >= 1,
}


@pytest.mark.parametrize("moment", MOMENTS)
def test_kill_9_then_rerun_completes_without_loss(tiny_data_root, tmp_path, capsys, moment):
    runs = tmp_path / "runs"
    proc = _cli(runs, tiny_data_root, epochs="3")
    _kill_when(proc, lambda: MOMENTS[moment](runs))
    done_before = {i for i, r in _rows(runs).items() if r["status"] == "done"} if (runs / "results.sqlite").is_file() \
        else set()
    rerun = ["run", "--seeds", "1",
             "--methods", "baseline,vanilla,hint", "--scenes", "SynthRoom", "--runs-dir", str(runs),
             "--data-root", str(tiny_data_root), "--epochs", "3", "--batch-size", "4", "--load-size", "32",
             "--crop", "28", "--quiet"]
    assert main(rerun) == 0
    s = _summary(capsys.readouterr().out)
    assert s["reused"] == len(done_before) and s["trained"] + s["evaluated"] == 4 - len(done_before)
    rows = _rows(runs)
    assert len(rows) == 4 and all(r["status"] == "done" and r["epochs_done"] == 3 for r in rows.values())
    assert not list(runs.rglob("*.tmp"))  # what the kill left half-written was cleaned up


# smaller faults: one line each -------------------------------------------------------------------------------------
def test_negative_seed_fails_before_any_work(tmp_path, capsys):
    err = _one_line_error(capsys, main(["run", "--seeds", "1",
                                        "--seeds", "0,-1", "--runs-dir", str(tmp_path / "runs"), "--quiet"]))
    assert "--seeds" in err and "-1" in err
    assert not (tmp_path / "runs").exists()


def test_negative_lr_is_one_line(tmp_path, capsys):
    err = _one_line_error(capsys, main(["train", "--scene", "SynthRoom", "--lr", "-1", "--out", str(tmp_path)]))
    assert "lr" in err and "-1" in err


def test_checkpoint_errors_are_one_line(runs, tiny_data_root, tmp_path, capsys):
    teacher = _teacher(runs)
    folder = runs / teacher["run_dir"]
    err = _one_line_error(capsys, main(["evaluate", str(folder), "--scene", "SynthRoom", "--data-root",
                                        str(tiny_data_root)]))
    assert "is a folder" in err and str(folder / "checkpoint.pt") in err
    ckpt = load_checkpoint(folder / "checkpoint.pt")
    incomplete = tmp_path / "incomplete.pt"
    torch_save_atomic({"model": ckpt["model"], "config": {"scene": "SynthRoom"}}, incomplete)
    for argv in (["evaluate", str(incomplete), "--scene", "SynthRoom"],
                 ["train", "--scene", "SynthRoom", "--method", "vanilla", "--teacher", str(incomplete)]):
        err = _one_line_error(capsys, main([*argv, "--data-root", str(tiny_data_root)]))
        assert str(incomplete) in err and "lacks" in err and "arch" in err


def test_run_summary_counts_re_evaluated_jobs_apart(runs, tiny_data_root, capsys):
    (runs / "results.sqlite").unlink()
    assert _run(runs, tiny_data_root) == 0
    s = _summary(capsys.readouterr().out)
    assert s == {"jobs": 3, "trained": 0, "evaluated": 3, "reused": 0, "elsewhere": 0, "failed": 0}


def test_job_folder_conflict_inside_run_names_the_folder(runs, tiny_data_root, capsys):
    rows = _rows(runs)
    teacher = _teacher(runs)
    student = next(r for r in rows.values() if r["method"] == "vanilla")
    shutil.copy(runs / teacher["run_dir"] / "checkpoint.pt", runs / student["run_dir"] / "checkpoint.pt")
    (runs / "results.sqlite").unlink()
    assert _run(runs, tiny_data_root) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith(student["id"]))
    assert "belongs to another configuration" in line and "delete the folder" in line
    assert "choose another --out folder or" not in line


PLUGIN = '''
import math
import torch
from kdbench.methods import Method, register_method

@register_method("{name}")
class Broken(Method):
    description = "a plugin with a bug"
    needs_teacher = False

    def loss(self, student, teacher, gt, ctx):
        {body}
'''


@pytest.mark.parametrize("body, expected", [
    ("return ctx.pose_loss(student, gt)", "must return a non-empty dict of named loss terms"),
    ("return {'gt': ctx.pose_loss(student, gt) * (math.nan if ctx.epoch == 0 else 1.0)}",
     "no checkpoint was saved before it"),
])
def test_plugin_faults_name_the_contract(tmp_path, tiny_data_root, capsys, body, expected, one_thread, monkeypatch):
    from kdbench.methods import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the plugin leaves no trace
    name = f"broken{len(body)}"
    plugin = tmp_path / "broken.py"
    plugin.write_text(PLUGIN.format(name=name, body=body))
    rc = main(["run", "--seeds", "1", "--methods", name, "--scenes", "SynthRoom", "--plugin", str(plugin), "--runs-dir",
               str(tmp_path / "runs"), "--data-root", str(tiny_data_root), *TINY_ARGS])
    out = capsys.readouterr().out
    assert rc == 1 and expected in out
    assert "train.py" not in out and "last good checkpoint" not in out
