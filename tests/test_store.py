"""The results store and atomic files: results are never downgraded or deleted, readers never write,
damage is a one-line error, files keep sensible modes, orphans of killed writers are cleaned."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from conftest import one_line_error as _one_line_error

from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.fileio import atomic_path, read_torch_file, torch_save_atomic, write_text_atomic
from kdbench.reports.leaderboard import load_results, not_shown, shown_jobs
from kdbench.reports.store import ResultsStore

METRICS = {"median_t": 0.5, "median_r": 5.0}


def _job(job_id, data="d1", **extra):
    return {"id": job_id, "kind": "student", "scene": "SynthRoom", "method": "vanilla", "arch": "resnet18",
            "teacher_arch": "resnet34", "seed": 0, "preset": "quick", "params": {"alpha": 0.5},
            "config": {"data": data}, "status": "pending", "run_dir": f"SynthRoom/{job_id}", **extra}



def test_a_failure_never_overwrites_a_finished_result(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.upsert_job(_job("a"))
        store.finish_job("a", METRICS, epochs_done=2)
        store.upsert_job(_job("a", status="pending"))
        store.upsert_job({"id": "a", "status": "running"})
        assert store.get_job("a")["status"] == "done"
        assert store.record_failure("a", "disk full while writing x") is True
        row = store.get_job("a")
        assert row["status"] == "done" and row["error"] is None and row["last_error"] == "disk full while writing x"
        assert store.metrics("a") == METRICS
        store.upsert_job(_job("b"))
        assert store.record_failure("b", "boom") is False
        assert store.get_job("b")["status"] == "failed"


def test_a_newer_result_supersedes_the_old_one_which_is_kept(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.upsert_job(_job("old", data="d1"))
        store.finish_job("old", {"median_t": 9.0, "median_r": 90.0})
        store.upsert_job(_job("other-seed", data="d1", seed=1))
        store.finish_job("other-seed", METRICS)
        store.upsert_job(_job("new", data="d2"))
        assert store.finish_job("new", METRICS) == ["old"]
        old = store.get_job("old")
        assert old["status"] == "superseded" and old["superseded_by"] == "new" and store.metrics("old")["median_t"] == 9
        assert store.get_job("other-seed")["status"] == "done"
    df = load_results(tmp_path)
    assert set(shown_jobs(df)["id"]) == {"new", "other-seed"}
    assert not_shown(df)["superseded"] == 1
    with ResultsStore(tmp_path) as store:  # the data went back: the old result is current again
        assert store.reinstate("old") == ["new"]
        assert store.get_job("old")["status"] == "done" and store.get_job("new")["status"] == "superseded"


def test_an_old_store_gains_the_new_columns(tmp_path):
    conn = sqlite3.connect(tmp_path / "results.sqlite")
    conn.executescript("CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, scene TEXT NOT NULL, "
                       "method TEXT NOT NULL, arch TEXT NOT NULL, teacher_arch TEXT, teacher_id TEXT, seed INTEGER "
                       "NOT NULL, preset TEXT, params TEXT, config TEXT NOT NULL, status TEXT NOT NULL, error TEXT, "
                       "run_dir TEXT, checkpoint TEXT, epochs_done INTEGER DEFAULT 0, train_seconds REAL, "
                       "eval_seconds REAL, env_id INTEGER, created REAL, updated REAL);"
                       "INSERT INTO jobs (id, kind, scene, method, arch, seed, config, status) VALUES "
                       "('a', 'teacher', 'SynthRoom', 'baseline', 'resnet34', 0, '{}', 'done');")
    conn.close()
    with ResultsStore(tmp_path) as store:
        assert store.record_failure("a", "later failure") is True
        assert store.get_job("a")["status"] == "done"


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_damaged_store_is_one_clear_error(tmp_path, capsys, damage):
    with ResultsStore(tmp_path) as store:
        for i in range(200):
            store.upsert_job(_job(f"job{i}"))
            store.finish_job(f"job{i}", METRICS)
    path = tmp_path / "results.sqlite"
    data = path.read_bytes()
    path.write_bytes(os.urandom(len(data)) if damage == "random" else data[: len(data) // 2])
    for argv in (["runs"], ["runs", "--status", "done"], ["report"], ["report", "--format", "json"]):
        err = _one_line_error(capsys, main([*argv, "--runs-dir", str(tmp_path)]))
        assert str(path) in err and "damaged" in err and "kdbench run --rebuild-store" in err
    with pytest.raises(KdbenchError, match="damaged"):
        ResultsStore(tmp_path)  # writers too
    assert path.read_bytes() != data  # and nothing repaired it behind the user's back


def test_readers_open_the_store_read_only(tmp_path, capsys):
    with ResultsStore(tmp_path) as store:
        store.upsert_job(_job("a"))
        store.finish_job("a", METRICS)
        store.conn.execute("PRAGMA journal_mode=DELETE")  # as an older kdbench or a copy might leave it
    path = tmp_path / "results.sqlite"
    before = path.read_bytes()
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    assert main(["report", "--runs-dir", str(tmp_path)]) == 0
    assert "vanilla" in capsys.readouterr().out
    assert path.read_bytes() == before  # no WAL switch, no CREATE, no schema row
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]


def _read_only_cli(folder, *argv):
    """Run the CLI where `folder` is read-only: chmod for a user, a read-only bind mount for root."""
    cmd = [sys.executable, "-m", "kdbench.cli", *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=env)
        finally:
            folder.chmod(0o755)
    view = folder.with_name(folder.name + "-ro")
    view.mkdir(exist_ok=True)
    script = f'mount --bind "{folder}" "{view}" && mount -o remount,bind,ro "{view}" && exec "$@"'
    cmd = [a.replace(str(folder), str(view)) for a in cmd]
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *cmd], capture_output=True, text=True, env=env)
    if "mount" in proc.stderr and proc.returncode != 0 and "kdbench" not in proc.stderr:
        pytest.skip(f"cannot make a read-only folder here: {proc.stderr.strip()}")
    return proc


def test_store_in_a_read_only_folder_can_be_listed_and_reported(tmp_path):
    runs = tmp_path / "runs"
    with ResultsStore(runs) as store:  # a WAL store, as `kdbench run` leaves it
        store.upsert_job(_job("a"))
        store.finish_job("a", METRICS)
    for argv in (["runs"], ["report"]):
        proc = _read_only_cli(runs, *argv, "--runs-dir", str(runs))
        assert proc.returncode == 0, proc.stderr
        assert "vanilla" in proc.stdout


def test_runs_dir_naming_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "notadir"
    f.write_text("x")
    for argv in (["runs"], ["report"], ["import", str(f)], ["run", "--seeds", "1", "--scenes", "SynthRoom"]):
        err = _one_line_error(capsys, main([*argv, "--runs-dir", str(f)]))
        assert str(f) in err


# atomic files --------------------------------------------------------------------------------------------
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path, umask_022, capsys):
    write_text_atomic(tmp_path / "new.txt", "a")
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o644
    torch_save_atomic({"x": torch.zeros(2)}, tmp_path / "ckpt.pt")
    assert (tmp_path / "ckpt.pt").stat().st_mode & 0o777 == 0o644
    (tmp_path / "kept.txt").write_text("old")
    (tmp_path / "kept.txt").chmod(0o640)
    write_text_atomic(tmp_path / "kept.txt", "new")
    assert (tmp_path / "kept.txt").stat().st_mode & 0o777 == 0o640
    os.umask(0o077)
    write_text_atomic(tmp_path / "private.txt", "a")
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
    os.umask(0o022)
    # `report --out` over an existing 0644 file keeps it readable by the others sharing the folder
    with ResultsStore(tmp_path / "runs") as store:
        store.upsert_job(_job("a"))
        store.finish_job("a", METRICS)
    out = tmp_path / "LEADERBOARD.md"
    out.write_text("old")
    out.chmod(0o644)
    assert main(["report", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o644 and "vanilla" in out.read_text()


HOLD_WRITE = """
import sys, time
from kdbench.fileio import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(600)
"""


def _writer(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_WRITE, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_orphans_of_killed_writers_are_cleaned_but_not_a_live_writers_file(tmp_path):
    killed = _writer(tmp_path / "checkpoint.pt")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    orphans = list(tmp_path.glob(".checkpoint.pt.*.tmp"))
    assert len(orphans) == 1  # what kill -9 leaves behind
    stale = tmp_path / ".metrics.json.abc123.tmp"  # an older kdbench's temp name, from long ago
    stale.write_text("{}")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    live = _writer(tmp_path / "predictions.csv")
    try:
        live_tmp = list(tmp_path.glob(".predictions.csv.*.tmp"))
        assert len(live_tmp) == 1
        write_text_atomic(tmp_path / "config.json", "{}")
        assert not orphans[0].exists() and not stale.exists()
        assert live_tmp[0].exists()  # a concurrent writer's file is left alone
    finally:
        live.kill()
        live.wait()


def test_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, "/dev/full"))
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"previous")
    with pytest.raises(KdbenchError) as err:
        torch_save_atomic({"x": torch.zeros(1000)}, target)
    msg = str(err.value)
    assert msg.startswith(f"disk full while writing {target}") and "\n" not in msg and "enforce fail" not in msg
    assert target.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [target]

    def enospc(*_):
        raise OSError(28, "No space left on device")

    with pytest.raises(KdbenchError, match="disk full while writing"):
        with atomic_path(tmp_path / "metrics.json") as tmp:
            enospc(tmp)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_torch_files_that_are_not_plain_weights_are_one_line_refusals(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, evil)
    with pytest.raises(KdbenchError) as err:
        read_torch_file(evil, "checkpoint")
    msg = str(err.value)
    assert "not a plain weights file" in msg and "did not load it" in msg
    assert "\n" not in msg and "weights_only=False" not in msg and "weights_only` set to `False" not in msg
    good = tmp_path / "ok.pt"
    torch.save({"model": {"w": torch.zeros(3)}}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:100])
    with pytest.raises(KdbenchError, match=r"could not read checkpoint .*cut\.pt: .*(damaged|truncated)") as err:
        read_torch_file(tmp_path / "cut.pt", "checkpoint")
    assert "\n" not in str(err.value)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ok.pt").write_bytes(good.read_bytes())
    with pytest.raises(KdbenchError, match=r"is a folder, not a file: pass .*sub/ok\.pt"):
        read_torch_file(tmp_path / "sub", "checkpoint")


# import ------------------------------------------------------------------------------------------------------
def _profile_row(**extra):
    return {"arch": "resnet18", "backend": "onnxruntime", "device": "Jetson Nano", "batch": 1, "crop": 224,
            "params": 11_700_000, "size_mb": 44.7, "gflops": 3.6, "latency_median_ms": 30.0,
            "latency_p90_ms": 31.0, "runs": 50, **extra}


def test_import_rejects_numbers_sqlite_cannot_hold(tmp_path, capsys):
    f = tmp_path / "rows.json"
    f.write_text(json.dumps([_profile_row(params=10**20)]))
    err = _one_line_error(capsys, main(["import", str(f), "--runs-dir", str(tmp_path / "runs")]))
    assert "row 0" in err and "'params'" in err and "too large" in err


def test_reimport_of_rows_without_created_adds_nothing(tmp_path, capsys):
    f = tmp_path / "rows.json"
    f.write_text(json.dumps([_profile_row(), _profile_row(backend="torch", latency_median_ms=60.0)]))
    runs = tmp_path / "runs"
    assert main(["import", str(f), "--runs-dir", str(runs)]) == 0
    assert main(["import", str(f), "--runs-dir", str(runs)]) == 0
    assert "imported 0 profile rows" in capsys.readouterr().out
    with ResultsStore(runs) as store:
        assert len(store.profiles()) == 2
