"""One true line for every write that fails and every store that is not what it should be (issue 19,
points 12-14, 17-20), through the CLI."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import one_line_error

from kdbench.cli import main

RUN = ["run", "--methods", "baseline", "--scenes", "SynthRoom", "--seeds", "1", "--epochs", "1", "--quiet",
       "--batch-size", "4", "--load-size", "32", "--crop", "28"]


@pytest.fixture(scope="module")
def finished(tiny_data_root, tmp_path_factory):
    """A runs folder where one baseline job finished, and the data root it used (both private)."""
    base = tmp_path_factory.mktemp("finished")
    data = Path(shutil.copytree(tiny_data_root, base / "data"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*RUN, "--data-root", str(data), "--runs-dir", str(base / "runs")]) == 0
    finally:
        torch.set_num_threads(n)
    return base / "runs", data


@pytest.fixture
def runs(finished, tmp_path):
    return Path(shutil.copytree(finished[0], tmp_path / "runs"))


@pytest.fixture
def read_only(tmp_path):
    """Make a folder read-only for root too: a read-only bind mount of it (skips where mounts are refused)."""
    mounted = []

    def make(folder: Path) -> Path:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            for p in folder.rglob("*"):
                p.chmod(0o555 if p.is_dir() else 0o444)
            return folder
        for cmd in (["mount", "--bind", str(folder), str(folder)],
                    ["mount", "-o", "remount,bind,ro", str(folder)]):
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                if mounted:
                    subprocess.run(["umount", str(folder)], capture_output=True)
                pytest.skip("cannot make a read-only folder here (no bind mounts)")
            if cmd[1] == "--bind":
                mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], capture_output=True)
    for p in [tmp_path, *tmp_path.rglob("*")]:
        if os.geteuid() != 0 and p.is_dir():
            p.chmod(0o755)


# --------------------------------------------------------------------------------- 12: html keeps the mode
def test_html_report_keeps_the_mode_of_an_existing_page(runs, tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("old")
    os.chmod(site / "index.html", 0o660)
    assert main(["report", "--runs-dir", str(runs), "--format", "html", "--out", str(site)]) == 0
    assert (site / "index.html").read_text() != "old"
    assert (site / "index.html").stat().st_mode & 0o777 == 0o660


# ------------------------------------------------------------------------------ 13: read-only runs folders
def test_run_with_every_job_done_works_in_a_read_only_runs_folder(finished, runs, read_only, capsys):
    read_only(runs)
    rc = main([*RUN, "--data-root", str(finished[1]), "--runs-dir", str(runs)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "1 reused" in captured.out and "Traceback" not in captured.err
    assert "the options of this run were not recorded" in captured.err  # a warning, not the end of the run


def test_report_out_into_a_read_only_folder_is_one_line(runs, tmp_path, read_only, capsys):
    out = tmp_path / "out"
    out.mkdir()
    read_only(out)
    rc = main(["report", "--runs-dir", str(runs), "--out", str(out / "board.md")])
    err = one_line_error(capsys, rc)
    assert f"cannot write {out / 'board.md'}" in err and ("read-only" in err or "permission" in err)


def test_any_write_error_is_one_line_naming_the_file(tmp_path):
    import errno

    from kdbench.errors import KdbenchError
    from kdbench.fileio import translated_writes

    for code, words in ((errno.EROFS, "read-only"), (errno.EACCES, "permission denied"),
                        (errno.ENOSPC, "disk full while writing"), (errno.ELOOP, "loops")):
        with pytest.raises(KdbenchError, match=words) as info:
            with translated_writes(tmp_path / "f.txt"):
                raise OSError(code, os.strerror(code), str(tmp_path / "f.txt"))
        assert str(tmp_path / "f.txt") in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------- 14: --plots
def test_plots_into_a_file_or_a_symlink_loop_is_one_line(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    afile = tmp_path / "plots.txt"
    afile.write_text("x")
    rc = main(["report", "--runs-dir", str(runs), "--plots", str(afile)])
    assert f"--plots {afile} is a file, not a folder" in one_line_error(capsys, rc)
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    rc = main(["report", "--runs-dir", str(runs), "--plots", str(loop / "figs")])
    assert "loops" in one_line_error(capsys, rc)


# ------------------------------------------------------------------------------------------- 18: the store
def test_store_locked_by_another_writer_says_so(runs, capsys, monkeypatch):
    from kdbench.reports.store import ResultsStore

    monkeypatch.setattr(ResultsStore, "TIMEOUT_S", 0.2)
    holder = sqlite3.connect(runs / "results.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        rc = main(["import", str(_profile_file(runs.parent)), "--runs-dir", str(runs)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    err = one_line_error(capsys, rc)
    assert "is locked by another process" in err and "writable" not in err


def _profile_file(folder: Path) -> Path:
    import json

    path = folder / "profile.json"
    path.write_text(json.dumps([{"arch": "resnet18", "backend": "torch", "device": "cpu", "latency_median_ms": 1.0}]))
    return path


def test_store_that_is_a_folder_is_one_line(tmp_path, tiny_data_root, capsys):
    (tmp_path / "runs" / "results.sqlite").mkdir(parents=True)
    rc = main([*RUN, "--data-root", str(tiny_data_root), "--runs-dir", str(tmp_path / "runs")])
    assert "results.sqlite is a folder, not a file" in one_line_error(capsys, rc)
    rc = main(["runs", "--runs-dir", str(tmp_path / "runs")])
    assert "is a folder, not a file" in one_line_error(capsys, rc)


def test_renamed_store_column_is_one_line(runs, capsys):
    with sqlite3.connect(runs / "results.sqlite") as conn:
        conn.execute("ALTER TABLE jobs RENAME COLUMN status TO state")
    for argv in (["report", "--runs-dir", str(runs)], ["runs", "--runs-dir", str(runs)],
                 ["import", str(_profile_file(runs.parent)), "--runs-dir", str(runs)]):
        err = one_line_error(capsys, main(argv))
        assert "jobs.status" in err and "--rebuild-store" in err


def test_rejecting_trigger_is_one_line(runs, capsys):
    with sqlite3.connect(runs / "results.sqlite") as conn:
        conn.execute("CREATE TRIGGER no_profiles BEFORE INSERT ON profiles BEGIN SELECT RAISE(ABORT, 'frozen'); END")
    err = one_line_error(capsys, main(["import", str(_profile_file(runs.parent)), "--runs-dir", str(runs)]))
    assert "refused a write (frozen)" in err and "trigger" in err


def test_device_meta_is_one_true_line(tmp_path, tiny_data_root, capsys):
    rc = main(["train", "--scene", "SynthRoom", "--device", "meta", "--data-root", str(tiny_data_root),
               "--runs-dir", str(tmp_path / "runs")])
    assert "--device meta: torch knows this device type, but kdbench cannot train" in one_line_error(capsys, rc)
