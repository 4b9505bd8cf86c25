"""The benchmark runner: plan, reuse, failures, kill-and-resume, and the Ray executor."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.reports.store import ResultsStore
from kdbench.runners import run_benchmark
from kdbench.runners.executors import CPUS_PER_RAY_JOB
from kdbench.runners.plan import make_plan, parse_methods, parse_seeds
from kdbench.scenes import resolve_scenes

TINY = dict(epochs=1, batch_size=4, load_size=32, crop_size=28)
TINY_ARGS = ["--epochs", "1", "--batch-size", "4", "--load-size", "32", "--crop", "28", "--quiet"]


def test_plan_shares_one_teacher_per_scene_and_seed():
    jobs = make_plan(parse_methods("all"), resolve_scenes("SynthRoom,SynthStreet"), parse_seeds("0,1"),
                     method_params={"sckd": {"sigma": "50"}})
    teachers = [j for j in jobs if j.kind == "teacher"]
    students = [j for j in jobs if j.kind == "student"]
    assert len(teachers) == 4 and len(students) == 4 * len(parse_methods("all"))
    for t in teachers:
        mine = [s for s in students if s.cfg.scene == t.cfg.scene and s.cfg.seed == t.cfg.seed]
        kd = [s for s in mine if s.cfg.method != "baseline"]
        assert kd and all(s.teacher_id == t.id and s.cfg.teacher_hash == t.id for s in kd)
        assert jobs.index(t) < min(jobs.index(s) for s in kd)  # teacher first
        base = [s for s in mine if s.cfg.method == "baseline"]
        assert len(base) == 1 and base[0].teacher_id is None
    assert {j.id for j in jobs} == {j.id for j in make_plan(parse_methods("all"), resolve_scenes("synthetic"),
                                                            [0, 1], method_params={"sckd": {"sigma": 50}})}
    sckd = next(s for s in students if s.cfg.method == "sckd")
    assert sckd.cfg.method_params["sigma"] == 50.0
    assert teachers[0].cfg.epochs > sckd.cfg.epochs  # quick preset: teachers train longer


def test_plan_rejects_bad_input():
    with pytest.raises(KdbenchError, match="unknown method 'sckdd'.*Did you mean sckd"):
        parse_methods("baseline,sckdd")
    with pytest.raises(KdbenchError, match="no hyperparameter nope"):
        make_plan(["sckd"], resolve_scenes("SynthRoom"), [0], method_params={"sckd": {"nope": "1"}})
    with pytest.raises(KdbenchError, match="not a valid float"):
        make_plan(["sckd"], resolve_scenes("SynthRoom"), [0], method_params={"sckd": {"sigma": "big"}})
    with pytest.raises(KdbenchError, match="--seeds"):
        parse_seeds("two")
    for bad in ("0,-1", [0, -1], "0", 0, "-2"):
        with pytest.raises(KdbenchError, match="--seeds"):
            parse_seeds(bad)
    assert parse_seeds("2") == [0, 1] and parse_seeds("5,0,5") == [5, 0]


def test_second_identical_run_trains_nothing(tiny_data_root, tmp_path):
    runs = tmp_path / "runs"
    first = run_benchmark("baseline,vanilla", "SynthRoom", 1, runs_dir=runs, data_root=tiny_data_root, quiet=True,
                          **TINY)
    assert len(first.done) == 3 and not first.failed and not first.reused
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("checkpoint.pt")}
    second = run_benchmark("baseline,vanilla", "SynthRoom", 1, runs_dir=runs, data_root=tiny_data_root,
                           quiet=True, **TINY)
    assert second.done == [] and len(second.reused) == 3
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("checkpoint.pt")} == stamps
    # A new method reuses the finished teacher: only its own student trains.
    third = run_benchmark("vanilla,hint", "SynthRoom", 1, runs_dir=runs, data_root=tiny_data_root, quiet=True,
                          **TINY)
    assert len(third.done) == 1 and len(third.reused) == 2
    with ResultsStore(runs) as store:
        rows = store.jobs()
        assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
        assert all(store.metrics(r["id"])["median_t"] > 0 for r in rows)
        env = store.conn.execute("SELECT * FROM environments").fetchone()
        assert env["torch"] and env["device"] and env["hostname"] and env["kdbench_version"]


FAILING_PLUGIN = '''
from kdbench.methods import Method, register_method

@register_method("explodes")
class Explodes(Method):
    description = "a plugin with a bug"
    needs_teacher = False

    def loss(self, student, teacher, gt, ctx):
        raise ValueError("bug in plugin")
'''


def test_failing_job_does_not_stop_others(tiny_data_root, tmp_path, capsys):
    plugin = tmp_path / "explodes.py"
    plugin.write_text(FAILING_PLUGIN)
    runs = tmp_path / "runs"
    rc = main(["run", "--seeds", "1",
               "--methods", "explodes,baseline", "--scenes", "SynthRoom", "--plugin", str(plugin),
               "--runs-dir", str(runs), "--data-root", str(tiny_data_root), *TINY_ARGS])
    out = capsys.readouterr().out
    assert rc == 1
    assert "failed jobs:" in out and "ValueError: bug in plugin" in out
    with ResultsStore(runs) as store:
        status = {r["method"]: r["status"] for r in store.jobs()}
        failed = store.jobs("failed")
    assert status == {"explodes": "failed", "baseline": "done"}
    assert "explodes.py" in failed[0]["error"]
    rc = main(["runs", "--runs-dir", str(runs), "--status", "failed"])
    assert rc == 0 and "explodes" in capsys.readouterr().out


def test_missing_real_scene_stops_before_training(tmp_path, capsys):
    rc = main(["run", "--seeds", "1",
               "--scenes", "ShopFacade,Stairs", "--runs-dir", str(tmp_path / "runs"), "--data-root",
               str(tmp_path / "empty"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "kdbench scenes download ShopFacade" in err and "kdbench scenes download Stairs" in err
    assert "download size" in err
    assert not (tmp_path / "runs" / "results.sqlite").exists()


def _done_count(db):
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_killed_run_resumes_and_records_each_job_once(tiny_data_root, tmp_path):
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "kdbench.cli", "run", "--seeds", "1",
           "--methods", "baseline,vanilla,hint", "--scenes", "SynthRoom",
           "--runs-dir", str(runs), "--data-root", str(tiny_data_root), "--epochs", "3", "--batch-size", "4",
           "--load-size", "32", "--crop", "28", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 240
    while _done_count(runs / "results.sqlite") < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _done_count(runs / "results.sqlite")
    assert 1 <= done_before < 4
    assert main(cmd[3:]) == 0
    with ResultsStore(runs) as store:
        rows = store.jobs()
        assert len(rows) == 4 and len({r["id"] for r in rows}) == 4
        assert all(r["status"] == "done" and r["epochs_done"] == 3 for r in rows)
        n_metrics = store.conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
        assert n_metrics == 4 * len(store.metrics(rows[0]["id"]))


@pytest.mark.slow
def test_ray_executor_matches_local(tiny_data_root, tmp_path):
    pytest.importorskip("ray")
    kwargs = dict(methods="baseline,sckd", scenes="SynthRoom", seeds=1, data_root=tiny_data_root, quiet=True, **TINY)
    # CPU results are bitwise reproducible for a given thread count; Ray tasks use one thread each.
    threads = torch.get_num_threads()
    torch.set_num_threads(CPUS_PER_RAY_JOB)
    try:
        local = run_benchmark(runs_dir=tmp_path / "local", executor="local", **kwargs)
    finally:
        torch.set_num_threads(threads)
    ray_res = run_benchmark(runs_dir=tmp_path / "ray", executor="ray", **kwargs)
    assert not local.failed and not ray_res.failed
    with ResultsStore(tmp_path / "local") as a, ResultsStore(tmp_path / "ray") as b:
        rows_a = {r["id"]: r for r in a.jobs()}
        rows_b = {r["id"]: r for r in b.jobs()}
        assert rows_a.keys() == rows_b.keys() and len(rows_a) == 3
        for job_id in rows_a:
            assert rows_b[job_id]["status"] == "done"
            ma, mb = a.metrics(job_id), b.metrics(job_id)
            assert ma.keys() == mb.keys()
            for k in ma:
                assert mb[k] == pytest.approx(ma[k], rel=1e-5, abs=1e-6), (job_id, k)


def test_job_identity_covers_the_data_and_students_follow_their_teacher():
    from kdbench.runners.benchmark import with_data

    plan = make_plan(["baseline", "vanilla"], resolve_scenes("SynthRoom"), [0])
    a, b = with_data(plan, {"SynthRoom": "aaaa"}), with_data(plan, {"SynthRoom": "bbbb"})
    assert not {j.id for j in a} & {j.id for j in b} and not {j.id for j in a} & {j.id for j in plan}
    assert with_data(plan, {"SynthRoom": "aaaa"}) == a  # the same data is the same job
    teacher = next(j for j in a if j.kind == "teacher")
    kd = next(j for j in a if j.cfg.method == "vanilla")
    assert kd.teacher_id == teacher.id == kd.cfg.teacher_hash and all(j.cfg.data == "aaaa" for j in a)
