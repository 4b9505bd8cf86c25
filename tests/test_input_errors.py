"""Every value is checked before work starts, and the dry run checks what the run checks (issue 19, 4-7, 16).

Through the CLI (`kdbench.cli.main`); each case fails before any scene is prepared or job trained.
"""

from __future__ import annotations

import time

import pytest
import torch
from conftest import one_line_error

from kdbench.cli import main

RUN = ["run", "--methods", "baseline", "--scenes", "SynthRoom", "--seeds", "1", "--epochs", "1", "--quiet",
       "--batch-size", "4", "--load-size", "32", "--crop", "28"]


def _run(tmp_path, data_root, *extra):
    return main([*RUN, "--data-root", str(data_root), "--runs-dir", str(tmp_path / "runs"), *extra])


def _nothing_written(tmp_path):
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


# ------------------------------------------------------------------------------------- 4: empty --methods
@pytest.mark.parametrize("methods", ["", ",", " , "])
def test_empty_methods_is_an_error_not_all(tmp_path, tiny_data_root, capsys, methods):
    rc = main(["run", "--methods", methods, "--dry-run", "--data-root", str(tiny_data_root),
               "--runs-dir", str(tmp_path / "runs")])
    assert "names no method" in one_line_error(capsys, rc)


def test_empty_methods_list_in_a_config_names_the_file_and_key(tmp_path, tiny_data_root, capsys):
    cfg = tmp_path / "bench.toml"
    cfg.write_text("methods = []\n")
    rc = main(["run", "--config", str(cfg), "--dry-run", "--data-root", str(tiny_data_root),
               "--runs-dir", str(tmp_path / "runs")])
    err = one_line_error(capsys, rc)
    assert f"{cfg}: methods: an empty list" in err


# --------------------------------------------------------------------------------- 5: misspelt --weights key
@pytest.mark.parametrize("dry", [True, False])
def test_misspelt_weights_key_names_key_plan_archs_and_nearest(tmp_path, tiny_data_root, capsys, dry):
    r18 = tmp_path / "r18.pth"
    torch.save({}, r18)
    rc = _run(tmp_path, tiny_data_root, "--weights", f"resnt18={r18}", *(["--dry-run"] if dry else []))
    err = one_line_error(capsys, rc)
    assert "'resnt18'" in err and "resnet18, resnet34" in err and "did you mean resnet18?" in err
    _nothing_written(tmp_path)


def test_misspelt_weights_key_in_train(tmp_path, tiny_data_root, capsys):
    rc = main(["train", "--scene", "SynthRoom", "--weights", "resnet43=x.pth", "--epochs", "1",
               "--data-root", str(tiny_data_root), "--runs-dir", str(tmp_path / "runs")])
    err = one_line_error(capsys, rc)
    assert "'resnet43'" in err and "resnet18" in err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------- 6: non-finite hyperparameters
@pytest.mark.parametrize("extra, expected", [
    (["--methods", "sckd:alpha=nan"], "'nan' is not a finite number"),
    (["--methods", "sckd", "--set", "sckd.sigma=nan"], "sckd.sigma: 'nan' is not a finite number"),
    (["--methods", "sckd", "--set", "sckd.sigma=inf"], "'inf' is not a finite number"),
    (["--methods", "vanilla:alpha=1e999"], "'1e999' is not a finite number"),
])
def test_non_finite_values_rejected_before_any_work(tmp_path, tiny_data_root, capsys, extra, expected):
    argv = [a for a in RUN if a not in ("--methods", "baseline")]
    rc = main([*argv, *extra, "--data-root", str(tiny_data_root), "--runs-dir", str(tmp_path / "runs")])
    assert expected in one_line_error(capsys, rc)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, expected", [
    (["--beta", "-1000"], "beta (--beta) must be a finite number >= 0, got -1000.0"),
    (["--beta", "nan"], "got nan"),
    (["--lr", "nan"], "lr must be a positive number, got nan"),
    (["--lr", "1e999"], "got inf"),
    (["--set", "baseline.nope=nan"], "no hyperparameter nope"),
    (["--checkpoint-every", "-5"], "--checkpoint-every -5"),
])
def test_train_rejects_bad_values_before_any_work(tmp_path, tiny_data_root, capsys, extra, expected):
    rc = main(["train", "--scene", "SynthRoom", "--epochs", "1", "--data-root", str(tiny_data_root),
               "--runs-dir", str(tmp_path / "runs"), "--quiet", *extra])
    assert expected in one_line_error(capsys, rc)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------- 7: --dry-run checks what run checks
DRY_CASES = [
    (["--jobs-per-gpu", "0"], "--jobs-per-gpu '0'"),
    (["--jobs-per-gpu", "many"], "--jobs-per-gpu 'many'"),
    (["--jobs-per-gpu", "1.5"], "--jobs-per-gpu '1.5'"),
    (["--checkpoint-every", "-5"], "--checkpoint-every -5"),
    (["--checkpoint-every", "nan"], "--checkpoint-every nan"),
    (["--load-size", "7", "--crop", "7"], "--load-size 7 is too small"),
    (["--weights", "/nonexistent/w.pth"], "/nonexistent/w.pth (for resnet18) does not exist"),
    (["--device", "meta"], "--device meta: torch knows this device type, but kdbench cannot train"),
]


@pytest.mark.parametrize("extra, expected", DRY_CASES)
def test_dry_run_rejects_what_the_run_rejects(tmp_path, tiny_data_root, capsys, extra, expected):
    rc = _run(tmp_path, tiny_data_root, "--dry-run", *extra)
    assert expected in one_line_error(capsys, rc)
    assert not (tmp_path / "runs").exists()  # the dry run writes nothing


@pytest.mark.parametrize("extra, expected", [c for c in DRY_CASES if c[0][0] in ("--checkpoint-every",
                                                                                   "--device")])
def test_run_rejects_them_before_any_job(tmp_path, tiny_data_root, capsys, extra, expected):
    rc = _run(tmp_path, tiny_data_root, *extra)  # was: every job recorded failed, exit 1
    assert expected in one_line_error(capsys, rc)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------- 16: plan bound
@pytest.mark.parametrize("seeds", ["100000000", "0,1,2"])
def test_huge_plan_fails_fast_naming_the_bound(tmp_path, tiny_data_root, capsys, seeds, monkeypatch):
    from kdbench.runners import plan

    if seeds == "0,1,2":  # the product of methods, scenes and seeds is bounded too
        monkeypatch.setattr(plan, "MAX_PLAN_JOBS", 5)
    t0 = time.perf_counter()
    rc = main(["run", "--seeds", seeds, "--dry-run", "--data-root", str(tiny_data_root),
               "--runs-dir", str(tmp_path / "runs")])
    err = one_line_error(capsys, rc)
    assert "MAX_PLAN_JOBS" in err and "several runs" in err
    assert time.perf_counter() - t0 < 10


def test_weights_map_keeps_imagenet_and_none_per_architecture(tmp_path, capsys):
    """`--weights ARCH=imagenet|none,...` (a family's student from ImageNet, a teacher from scratch) is not a path."""
    rc = main(["run", "--dry-run", "--methods", "vanilla", "--scenes", "SynthRoom", "--seeds", "1",
               "--runs-dir", str(tmp_path), "--weights", "resnet18=none,resnet34=none"])
    assert rc == 0, capsys.readouterr().err
