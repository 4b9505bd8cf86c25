"""One true line for every write that fails and every store that is not what it should be (issue 19,
points 12-14, 17-20), through the CLI."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import one_line_error, torch_threads

from kdbench.cli import main
from kdbench.errors import KdbenchError

RUN = ["run", "--methods", "baseline", "--scenes", "SynthRoom", "--seeds", "1", "--epochs", "1", "--quiet",
       "--batch-size", "4", "--load-size", "32", "--crop", "28"]


@pytest.fixture(scope="module")
def finished(tiny_data_root, tmp_path_factory):
    """A runs folder where one baseline job finished, and the data root it used (both private)."""
    base = tmp_path_factory.mktemp("finished")
    data = Path(shutil.copytree(tiny_data_root, base / "data"))
    with torch_threads(1):
        assert main([*RUN, "--data-root", str(data), "--runs-dir", str(base / "runs")]) == 0
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


# ------------------------------------------------------------------------------------ 8, 20: frames and labels
def _scene(tiny_data_root, tmp_path, name):
    root = tmp_path / "data"
    shutil.copytree(tiny_data_root / name, root / name, ignore=shutil.ignore_patterns(".kdbench-cache"))
    return root


def _prepare(root, name, *extra):
    return main(["scenes", "prepare", name, "--data-root", str(root), "--load-size", "24", "--quiet", *extra])


def _frames(capsys, root, name) -> str:
    """The dry run's line 'NAME: N train / M test frames'."""
    assert main(["run", "--methods", "baseline", "--scenes", name, "--seeds", "1", "--dry-run",
                 "--data-root", str(root), "--runs-dir", str(root.parent / "runs")]) == 0
    return next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(f"{name}: "))


def test_7scenes_image_without_pose_is_an_error_naming_it(tiny_data_root, tmp_path, capsys):
    root = _scene(tiny_data_root, tmp_path, "SynthRoom")
    pose = next((root / "SynthRoom" / "seq-01").glob("frame-*.pose.txt"))
    pose.unlink()
    err = one_line_error(capsys, _prepare(root, "SynthRoom"))
    assert pose.name.replace(".pose.txt", ".color.png") in err and "has no pose file" in err


def test_headerless_cambridge_file_keeps_a_first_gif_line(tiny_data_root, tmp_path, capsys):
    from PIL import Image

    root = _scene(tiny_data_root, tmp_path, "SynthStreet")
    label = root / "SynthStreet" / "dataset_train.txt"
    lines = label.read_text().splitlines(keepends=True)[3:]  # no header
    out = []
    for line in lines:  # every train image a GIF (one mode for the whole split), the first line too
        name, rest = line.split(" ", 1)
        gif = Path(name).with_suffix(".gif").as_posix()
        Image.open(root / "SynthStreet" / name).convert("P").save(root / "SynthStreet" / gif)
        out.append(f"{gif} {rest}")
    label.write_text("".join(out))
    assert _prepare(root, "SynthStreet") == 0
    assert f"{len(lines)} train" in _frames(capsys, root, "SynthStreet")


def test_cambridge_file_with_a_bom_and_no_header_reads_every_frame(tiny_data_root, tmp_path, capsys):
    root = _scene(tiny_data_root, tmp_path, "SynthStreet")
    label = root / "SynthStreet" / "dataset_train.txt"
    lines = label.read_text().splitlines(keepends=True)[3:]
    label.write_text("\ufeff" + "".join(lines), encoding="utf-8")
    assert _prepare(root, "SynthStreet") == 0, capsys.readouterr().err
    assert f"{len(lines)} train" in _frames(capsys, root, "SynthStreet")
    label.write_text("".join(lines[:2]) + "\ufeff" + "".join(lines[2:]), encoding="utf-8")  # one inside
    err = one_line_error(capsys, _prepare(root, "SynthStreet"))
    assert f"{label}:3" in err and "byte-order mark (BOM" in err


def test_non_finite_pose_names_the_value(tiny_data_root, tmp_path, capsys):
    root = _scene(tiny_data_root, tmp_path, "SynthStreet")
    label = root / "SynthStreet" / "dataset_train.txt"
    lines = label.read_text().splitlines(keepends=True)
    cols = lines[4].split()
    cols[2] = "nan"
    lines[4] = " ".join(cols) + "\n"
    label.write_text("".join(lines))
    err = one_line_error(capsys, _prepare(root, "SynthStreet"))
    assert f"{label}:5" in err and "Y = nan is not finite" in err
    root = _scene(tiny_data_root, tmp_path / "room", "SynthRoom")
    pose = next((root / "SynthRoom" / "seq-01").glob("frame-*.pose.txt"))
    rows = pose.read_text().splitlines()
    rows[1] = " ".join(["0", "1", "0", "inf"])
    pose.write_text("\n".join(rows) + "\n")
    err = one_line_error(capsys, _prepare(root, "SynthRoom"))
    assert str(pose) in err and "row 2, column 4 of the pose matrix is inf" in err


def test_huge_image_is_too_large_not_corrupt(tiny_data_root, tmp_path, capsys, monkeypatch):
    from PIL import Image

    root = _scene(tiny_data_root, tmp_path, "SynthRoom")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 48x36 is then above twice the limit, like 400 Mpx
    err = one_line_error(capsys, _prepare(root, "SynthRoom"))
    assert "is too large to decode" in err and "corrupt" not in err


# ----------------------------------------------------------------------------------- 17: disk full, cache build
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (skips where mounting is refused)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def _fill(folder: Path, leave: int) -> None:
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


def _no_temp_left(root: Path) -> None:
    cache = root / "SynthRoom" / ".kdbench-cache"
    assert not cache.exists() or not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_disk_full_before_a_cache_build_is_one_line(tiny_data_root, small_disk, capsys):
    root = _scene(tiny_data_root, small_disk, "SynthRoom")
    _fill(small_disk, 16 * 1024)  # the 24 px train cache needs 16 x 24 x 32 x 3 = 36 KiB
    err = one_line_error(capsys, _prepare(root, "SynthRoom"))
    assert "disk full while writing the SynthRoom train @24px cache" in err and "MiB free" in err
    _no_temp_left(root)


def test_disk_full_during_a_cache_build_is_not_sigbus(tiny_data_root, small_disk, capsys, monkeypatch):
    from kdbench.scenes import cache

    root = _scene(tiny_data_root, small_disk, "SynthRoom")
    _fill(small_disk, 16 * 1024)
    real = shutil.disk_usage
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: real(p)._replace(free=2**40))  # the check is fooled
    err = one_line_error(capsys, _prepare(root, "SynthRoom"))
    assert "disk full while writing" in err
    _no_temp_left(root)


# -------------------------------------------------------------------------------------- 19: plugin contract
PLUGIN = '''
import sys
import torch
from kdbench.methods import HParam, Method, register_method

{top}

@register_method("{name}")
class Broken(Method):
    description = "a plugin with a bug"
    needs_teacher = False
    hparams = {hparams}

    def student_taps(self):
        return {taps}

    def loss(self, student, teacher, gt, ctx):
        l_gt = ctx.pose_loss(student, gt)
        {body}
'''


def _plugin(tmp_path, body="return {'gt': l_gt}", top="", hparams="{}", taps="()"):
    name = f"broken{abs(hash((body, top, hparams, taps))) % 10**6}"
    path = tmp_path / f"{name}.py"
    path.write_text(PLUGIN.format(name=name, body=body, top=top, hparams=hparams, taps=taps))
    return name, path


@pytest.mark.parametrize("kwargs, expected", [
    (dict(body="return {'gt': l_gt, 'kd': 0.5}"), "loss term 'kd' is a float (0.5), not a tensor"),
    (dict(body="return {'gt': l_gt, 'kd': 'ten'}"), "loss term 'kd' is a str"),
    (dict(body="return {'gt': l_gt * torch.ones(4)}"), "loss term 'gt' has shape (4,), not a scalar"),
    (dict(body="return {'gt': l_gt.detach()}"), "the loss carries no gradient (terms gt are detached"),
    (dict(taps="('layer9',)"), "student_taps() names 'layer9', which PoseNet does not have; its taps are stem"),
])
def test_plugin_contract_errors_say_the_contract(tmp_path, tiny_data_root, capsys, monkeypatch, kwargs, expected,
                                                 one_thread):
    from kdbench.methods import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    name, path = _plugin(tmp_path, **kwargs)
    rc = main(["train", "--scene", "SynthRoom", "--method", name, "--plugin", str(path), "--epochs", "1",
               "--batch-size", "4", "--data-root", str(tiny_data_root), "--runs-dir", str(tmp_path / "runs"),
               "--quiet"])
    err = one_line_error(capsys, rc)
    assert expected in err and "KeyError" not in err


def test_plugin_contract_accepts_stage_tap_aliases():
    """stage1..stage4 (issue 20's family-neutral names) are taps a plugin may ask for, like layer1..layer4."""
    from types import SimpleNamespace

    from kdbench.methods.contract import check_taps

    ok = SimpleNamespace(name="p", student_taps=lambda: ("stage2", "embed"), teacher_taps=lambda: ("layer2",))
    check_taps(ok)
    bad = SimpleNamespace(name="p", student_taps=lambda: ("stage5",), teacher_taps=lambda: ())
    with pytest.raises(KdbenchError, match="'stage5', which PoseNet does not have; its taps are stem, stage1"):
        check_taps(bad)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(top="sys.exit(3)"), "called sys.exit(3) while being imported"),
    (dict(hparams="{'weight': HParam('ten', 'float', 'a weight')}"),
     "declares hyperparameter 'weight' with default 'ten', which is not a valid float"),
])
def test_plugin_import_errors_name_the_file(tmp_path, capsys, monkeypatch, kwargs, expected):
    from kdbench.methods import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    _, path = _plugin(tmp_path, **kwargs)
    err = one_line_error(capsys, main(["methods", "--plugin", str(path)]))
    assert expected in err and str(path) in err


# -------------------------------------------------------------------------------------------- 20: messages
def test_config_errors_name_the_file_and_key(tmp_path, tiny_data_root, capsys):
    cfg = tmp_path / "bench.toml"
    cfg.write_text('seeds = "-1"\nscenes = "SynthRoom"\n')
    rc = main(["run", "--config", str(cfg), "--dry-run", "--data-root", str(tiny_data_root),
               "--runs-dir", str(tmp_path / "runs")])
    assert f"(set by {cfg}: seeds)" in one_line_error(capsys, rc)
    rc = main(["run", "--config", str(cfg), "--seeds", "-2", "--dry-run", "--data-root", str(tiny_data_root),
               "--runs-dir", str(tmp_path / "runs")])
    assert "set by" not in one_line_error(capsys, rc)  # the command line's value, not the file's
    cfg.write_bytes(b"\xef\xbb\xbf" + b'scenes = "SynthRoom"\nmethods = "baseline"\nseeds = 1\n')  # a BOM
    assert main(["run", "--config", str(cfg), "--dry-run", "--data-root", str(tiny_data_root),
                 "--runs-dir", str(tmp_path / "runs")]) == 0


def test_export_all_students_exports_the_rest_and_names_the_skipped(finished, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    runs = Path(shutil.copytree(finished[0], tmp_path / "runs"))
    assert main([*RUN, "--seeds", "0,1", "--data-root", str(finished[1]), "--runs-dir", str(runs)]) == 0
    gone = next(runs.glob("SynthRoom/student-*-seed1-*/checkpoint.pt"))
    gone.unlink()
    capsys.readouterr()
    rc = main(["export", "--all-students", "--runs-dir", str(runs), "--out", str(tmp_path / "onnx")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "skipped baseline on SynthRoom (seed 1)" in captured.err and str(gone) in captured.err
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1
