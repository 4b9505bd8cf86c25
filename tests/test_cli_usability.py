"""A new user's first hour, through the CLI: --weights, progress, evaluate's scene, config files, dry runs,
--device, train jobs in the store, torch-free startup, help texts, download sizes, plugin names."""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import urllib.error
from pathlib import Path

import pytest
from rich.console import Console

from kdbench.cli import build_parser, main, subparser
from kdbench.progress import JobProgress, make_progress
from kdbench.reports.store import ResultsStore
from kdbench.runners.benchconfig import apply_config_file, file_options

TINY_RUN = ["--epochs", "1", "--batch-size", "4", "--load-size", "32", "--crop", "28"]


def _stderr_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


@pytest.fixture
def data(tiny_data_root, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_data_root, root)
    return root


# ------------------------------------------------------------------------------------------- 3: --weights
def test_run_offline_imagenet_stops_before_training_with_one_line(data, tmp_path, monkeypatch, capsys):
    from torchvision import models as tvm

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvm.WeightsEnum, "get_state_dict", offline)
    runs = tmp_path / "runs"
    code = main(["run", "--seeds", "1", "--preset", "paper", "--scenes", "SynthRoom", "--methods", "baseline,vanilla",
                 "--data-root", str(data), "--runs-dir", str(runs), *TINY_RUN])
    err = capsys.readouterr().err
    assert code == 2
    errors = [ln for ln in _stderr_lines(err) if ln.startswith("kdbench: error:")]
    assert len(errors) == 1 and "--weights PATH" in errors[0] and "--weights none" in errors[0]
    assert "resnet" in errors[0]
    assert not list(runs.rglob("checkpoint.pt")) and not (runs / "results.sqlite").exists()


def test_run_weights_missing_file_and_wrong_arch_are_errors(data, tmp_path, capsys):
    import torch
    from torchvision import models as tvm

    runs = tmp_path / "runs"
    base = ["run", "--seeds", "1",
            "--scenes", "SynthRoom", "--methods", "vanilla", "--data-root", str(data), "--runs-dir",
            str(runs), *TINY_RUN, "--quiet"]
    assert main([*base, "--weights", str(tmp_path / "nope.pth")]) == 2
    assert "nope.pth" in capsys.readouterr().err
    r18 = tmp_path / "r18.pth"
    torch.save(tvm.resnet18(weights=None).state_dict(), r18)
    assert main([*base, "--weights", str(r18)]) == 2  # the teacher is a resnet34
    err = capsys.readouterr().err
    assert "does not match a torchvision resnet34" in err and len(_stderr_lines(err)) == 1
    assert not list(runs.rglob("checkpoint.pt"))
    # One file per architecture: both found, recorded as absolute paths in each job's config.
    r34 = tmp_path / "r34.pth"
    torch.save(tvm.resnet34(weights=None).state_dict(), r34)
    assert main([*base, "--weights", f"resnet18={r18},resnet34={r34}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"weights of resnet18: {r18.resolve()} (found)" in out
    assert f"weights of resnet34: {r34.resolve()} (found)" in out


def test_run_weights_none_trains_and_records_the_resolved_options(data, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["run", "--seeds", "1",
                 "--preset", "paper", "--weights", "none", "--scenes", "SynthRoom", "--methods", "baseline",
                 "--data-root", str(data), "--runs-dir", str(runs), *TINY_RUN, "--device", "cpu"]) == 0
    with ResultsStore(runs) as store:
        (row,) = store.jobs()
        assert row["status"] == "done" and json.loads(row["config"])["weights"] == "none"
    err = capsys.readouterr().err
    # 4: off a terminal, one log line per job start, epoch, evaluation and finish, with elapsed and time left
    assert re.search(r"kdbench \[0:\d\d:\d\d\] job 1/1 started: student resnet18 baseline on SynthRoom", err)
    assert re.search(r"job 1/1 epoch 1/1, loss [\d.]+; job time left 0:00:00, run time left", err)
    assert "job 1/1 evaluating on the test split" in err and "job 1/1 done:" in err
    # 9: the resolved options are in the runs folder and read back as the same run
    (written,) = (runs / "run-configs").glob("*.toml")
    args = apply_config_file(subparser(build_parser(), "run"), [], written)
    assert (args.preset, args.weights, args.methods, args.epochs, args.crop) == ("paper", "none", "baseline", 1, 28)
    assert main(["run", "--config", str(written), "--dry-run"]) == 0
    assert "0 jobs to run, 1 reused" in capsys.readouterr().out


def test_quiet_run_logs_nothing(data, tmp_path, capsys):
    assert main(["run", "--seeds", "1", "--scenes", "SynthRoom", "--methods", "baseline", "--data-root", str(data),
                 "--runs-dir", str(tmp_path / "runs"), *TINY_RUN, "--quiet"]) == 0
    assert "kdbench [" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- 4: progress bars
def _render(progress, width: int = 80) -> list[str]:
    con = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    con.print(progress.make_tasks_table(progress.tasks))
    return con.export_text().splitlines()


def test_bars_fit_80_columns_without_cutting_counts_or_times():
    con = Console(width=80, file=io.StringIO(), force_terminal=True, color_system=None)
    with JobProgress(20, 20 * 500 * 400, console=con) as progress:
        progress.start("student resnet18 attentive on SynthStreet (seed 12)", 500, 500 * 400,
                       short="resnet18 attentive SynthStreet s12 and a long tail")
        for epoch in range(1, 18):
            progress.epoch(epoch, 500, 0.123456)
        lines = _render(progress.progress)
    jobs, job = lines
    assert all(len(ln) <= 80 for ln in lines)
    assert re.search(r" 0/20 jobs +0:00:\d\d +\d+:\d\d:\d\d", jobs), jobs
    assert re.search(r" 17/500 +0:00:\d\d +\d+:\d\d:\d\d", job), job
    assert "…" not in jobs and "…" not in job[job.index("17/500"):]  # only the description may give way
    # Generic bars (caches, rendering) too: a long description gives way, the count and times do not.
    bar = make_progress(console=con)
    bar.add_task("caching RedKitchen train @256px and much more text here", total=7000, completed=1234, info="")
    (line,) = _render(bar)
    assert len(line) <= 80 and "1234/7000" in line and re.search(r"0:00:00 +(-:--:--|\d:\d\d:\d\d)", line)


# ------------------------------------------------------------------------------------------- 8, 9: train/evaluate
@pytest.fixture(scope="module")
def trained(tiny_data_root, tmp_path_factory, one_thread):
    """One tiny `kdbench train` run (quick preset, 1 epoch) recorded in a runs folder."""
    tmp = tmp_path_factory.mktemp("train")
    runs = tmp / "runs"
    code = main(["train", "--scene", "SynthRoom", "--epochs", "1", "--batch-size", "4", "--data-root",
                 str(tiny_data_root), "--runs-dir", str(runs), "--device", "cpu", "--quiet"])
    assert code == 0
    (ckpt,) = runs.rglob("checkpoint.pt")
    return runs, ckpt


def test_train_is_in_the_store_and_listed(trained, capsys):
    runs, ckpt = trained
    assert ckpt.is_relative_to(runs / "train" / "SynthRoom") and "-seed0-" in ckpt.parent.name
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "SynthRoom" in ln)
    assert "teacher" in line and "train" in line and "done" in line and " m / " in line


def test_evaluate_uses_the_checkpoints_scene_and_refuses_another(trained, tiny_data_root, capsys):
    _, ckpt = trained
    base = ["evaluate", str(ckpt), "--data-root", str(tiny_data_root), "--device", "cpu", "--quiet"]
    assert main(base) == 0
    assert "on SynthRoom (test split)" in " ".join(capsys.readouterr().out.split())
    assert main([*base, "--scene", "SynthStreet"]) == 2
    err = capsys.readouterr().err
    assert "trained on SynthRoom, not SynthStreet" in err and "--other-scene" in err
    assert main([*base, "--scene", "SynthStreet", "--other-scene", "--out", str(ckpt.parent / "x")]) == 0
    assert "on SynthStreet (test split, trained on SynthRoom)" in " ".join(capsys.readouterr().out.split())


def test_evaluate_shows_a_step_off_a_terminal(trained, tiny_data_root, capsys):
    _, ckpt = trained
    assert main(["evaluate", str(ckpt), "--data-root", str(tiny_data_root), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "kdbench: evaluating resnet18 baseline on SynthRoom (8 test images, cpu) ..." in err
    assert "done in 0:00:" in err


def test_device_that_does_not_exist_is_an_error(data, tmp_path, capsys):
    code = main(["run", "--seeds", "1",
                 "--device", "cuda:63", "--scenes", "SynthRoom", "--methods", "baseline", "--data-root",
                 str(data), "--runs-dir", str(tmp_path / "runs"), *TINY_RUN, "--quiet"])
    assert code == 2 and "--device cuda:63" in capsys.readouterr().err
    assert main(["run", "--seeds", "1", "--device", "tpu", "--scenes", "SynthRoom", "--dry-run"]) == 2
    assert "--device 'tpu'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- 9: config files
def _sample(action: argparse.Action):
    """A value for one option that differs from its default, and the TOML text that sets it."""
    if action.nargs == 0:
        return True, "true"
    if action.dest == "sets":
        return ["sckd.sigma=50", "hint.weight=2"], '["sckd.sigma=50", "hint.weight=2"]'
    if isinstance(action, argparse._AppendAction):
        return ["my_kd.py"], '["my_kd.py"]'
    if action.choices:
        value = [c for c in action.choices if c != action.default][-1]
        return value, json.dumps(value)
    if action.type is int:
        return 7, "7"
    if action.type is float:
        return 0.5, "0.5"
    return f"v-{action.dest}", json.dumps(f"v-{action.dest}")


def test_config_file_sets_every_run_option_and_flags_override(tmp_path, monkeypatch):
    parser = subparser(build_parser(), "run")
    actions = {a.dest: a for a in file_options(parser).values()}
    assert {"methods", "scenes", "seeds", "weights", "device", "executor", "sets", "plugin", "dry_run",
            "quiet", "epochs", "crop"} <= set(actions)
    expected, lines = {}, []
    for i, (dest, action) in enumerate(sorted(actions.items())):
        value, text = _sample(action)
        key = action.option_strings[-1].lstrip("-")
        key = key if i % 2 else key.replace("-", "_")  # both spellings are accepted
        expected[dest] = value
        lines.append(f"{key} = {text}")
    bench = tmp_path / "bench.toml"
    bench.write_text("\n".join(lines) + "\n")
    seen = {}
    monkeypatch.setattr("kdbench.runners.commands.cmd_run", lambda args: seen.update(vars(args)) or 0)
    assert main(["run", "--config", str(bench)]) == 0
    for dest, value in expected.items():
        assert seen[dest] == value, dest
    assert main(["run", "--config", str(bench), "--epochs", "3", "--set", "sckd.sigma=9"]) == 0
    assert seen["epochs"] == 3 and seen["sets"][-1] == "sckd.sigma=9" and seen["methods"] == "v-methods"


def test_config_file_lists_tables_and_errors(tmp_path, capsys, monkeypatch):
    seen = {}
    monkeypatch.setattr("kdbench.runners.commands.cmd_run", lambda args: seen.update(vars(args)) or 0)
    bench = tmp_path / "bench.toml"
    bench.write_text('methods = ["baseline", "sckd"]\nseeds = 3\n[set.sckd]\nsigma = 50\nsc_layers = [3, 4]\n')
    assert main(["run", "--config", str(bench)]) == 0
    assert seen["methods"] == "baseline,sckd" and seen["seeds"] == "3"
    assert seen["sets"] == ["sckd.sigma=50", "sckd.sc_layers=3,4"]
    for text, message in (("epochz = 3\n", "unknown key 'epochz'"), ("epochs = 'many'\n", "epochs: expected a whole"),
                          ("preset = 'fast'\n", "'fast' is not one of quick, paper"),
                          ("quiet = 1\n", "quiet: expected true or false"), ("methods = [\n", "not valid TOML")):
        bench.write_text(text)
        assert main(["run", "--config", str(bench)]) == 2
        (line,) = _stderr_lines(capsys.readouterr().err)
        assert str(bench) in line and message in line
    assert main(["run", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- 9: dry run
def test_dry_run_shows_plan_and_reuse_and_writes_nothing(data, tmp_path, capsys):
    runs = tmp_path / "runs"
    common = ["--scenes", "SynthRoom", "--data-root", str(data), "--runs-dir", str(runs), *TINY_RUN]
    assert main(["run", "--seeds", "1", "--methods", "baseline,vanilla", *common, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not runs.exists()
    assert "2 jobs to run, 0 reused" in out or "3 jobs to run, 0 reused" in out
    assert main(["run", "--seeds", "1", "--methods", "baseline", *common, "--quiet"]) == 0
    capsys.readouterr()
    store = runs / "results.sqlite"
    before = (store.stat().st_mtime_ns, sorted(p.name for p in runs.iterdir()))
    assert main(["run", "--seeds", "1", "--methods", "baseline,vanilla", *common, "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split("│")[2].strip() + " " + ln.split("│")[4].strip(): ln for ln in out.splitlines()
            if ln.startswith("│") and "resnet" in ln}
    assert "reused" in rows["student baseline"] and "to run" in rows["teacher baseline"]
    assert "to run" in rows["student vanilla"]
    # 16 train frames x 1 epoch + 8 test frames, for each of the 2 jobs to run
    assert "2 jobs to run, 1 reused; about 48 images to process" in out
    assert (store.stat().st_mtime_ns, sorted(p.name for p in runs.iterdir())) == before
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1


# ------------------------------------------------------------------------------------------- 9: startup
def test_light_commands_do_not_import_torch(tmp_path):
    empty, full = tmp_path / "empty", tmp_path / "full"
    empty.mkdir()
    with ResultsStore(full) as store:
        store.upsert_job({"id": "abc", "kind": "student", "scene": "SynthRoom", "method": "baseline",
                          "arch": "resnet18", "seed": 0, "config": {}, "status": "done"})
    script = textwrap.dedent(f"""
        import sys
        from kdbench.cli import main
        for argv in ({["--help"]!r}, {["--version"]!r}, {["run", "--help"]!r}, {["runs", "--runs-dir", str(empty)]!r},
                     {["runs", "--runs-dir", str(full)]!r}, {["report", "--runs-dir", str(full)]!r},
                     {["scenes", "list"]!r}, {["run", "--bogus"]!r}, {["train"]!r},
                     {["evaluate", str(tmp_path / "missing.pt")]!r},
                     {["train", "--scene", "SynthRoom", "--method", "vanilla", "--teacher", "missing.pt"]!r}):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
            print("RESULT", argv[0], code, "torch" in sys.modules, file=sys.stderr)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    results = [ln.split() for ln in proc.stderr.splitlines() if ln.startswith("RESULT")]
    assert len(results) == 11, proc.stderr
    assert all(torch == "False" for *_, torch in results), proc.stderr
    assert [code for _, _, code, _ in results] == ["0", "0", "0", "2", "0", "0", "0", "2", "2", "2", "2"]
    assert "missing.pt does not exist" in proc.stderr


# ------------------------------------------------------------------------------------------- 10: help texts
def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_option_has_help_and_defaults_are_shown(capsys):
    parser = build_parser()
    missing = [f"{p.prog} {a.option_strings or a.dest}" for p in _all_parsers(parser) for a in p._actions
               if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert missing == []
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("trunk of the teachers: a torchvision name (resnet18, mobilenet_v3_large, efficientnet_b0, ...: "
                  "`kdbench models` lists them) (default: resnet34)",
                  "(default: quick)", "(default: local)", "(default: synthetic)", "(default: auto)"):
        assert shown in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "RUNS_DIR/train/<scene>/<arch>-<method>-seed<seed>-<hash>" in "".join(capsys.readouterr().out.split())


def test_cli_arch_list_is_the_models():
    from kdbench import cli, models

    assert cli.ARCHS == models.ARCHS


# ------------------------------------------------------------------------------------------- 10: scenes, plugins
def test_scenes_list_download_size_is_recorded_by_the_first_download(tmp_path, capsys):
    from test_download import cambridge_zip

    root = tmp_path / "datasets"
    assert main(["scenes", "list", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    shop = next(ln for ln in out.splitlines() if "ShopFacade" in ln)
    assert "not known yet" in shop and "unknown" not in out
    assert "the first `kdbench scenes download` of a scene measures its archive" in " ".join(out.split())
    data = cambridge_zip(tmp_path / "ShopFacade.zip")
    assert main(["scenes", "download", "ShopFacade", "--url", str(tmp_path / "ShopFacade.zip"), "--data-root",
                 str(root), "--quiet"]) == 0
    assert main(["scenes", "list", "--data-root", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    shop = next(ln for ln in lines if "ShopFacade" in ln)
    assert f"{len(data) / 1024:.1f} KB (measured)" in shop and "yes" in shop
    assert "not known yet" in next(ln for ln in lines if "Stairs" in ln)  # only what was downloaded is known


def test_plugin_methods_show_their_file(tmp_path, monkeypatch, capsys):
    plugin = tmp_path / "my_kd_listing.py"
    plugin.write_text(textwrap.dedent("""
        from kdbench.methods import Method, register_method

        @register_method("my_kd_listing")
        class Mine(Method):
            description = "a test plugin"
    """))
    from kdbench.methods import registry

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the plugin leaves no trace
    assert main(["methods", "--plugin", str(plugin)]) == 0
    out = capsys.readouterr().out
    assert "my_kd_listing  (teacher, from my_kd_listing.py)" in out and "kdbench_plugin_" not in out
