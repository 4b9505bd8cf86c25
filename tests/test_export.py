"""`kdbench export`: trained models to ONNX (parity-checked, with their input contract), and the README's
edge-device commands run verbatim on a tiny trained benchmark."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdbench import interference
from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.export import Source, output_paths
from kdbench.reports.store import ResultsStore

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = ["--scenes", "SynthRoom", "--epochs", "1", "--batch-size", "4", "--load-size", "32", "--crop", "28",
            "--quiet"]


@pytest.fixture(scope="module")
def bench(tiny_data_root, tmp_path_factory, one_thread) -> Path:
    """A folder whose runs/ holds a tiny finished benchmark: a resnet34 teacher, baseline and sckd students.

    It stands in for the README's `kdbench run` (same command, tiny sizes)."""
    base = tmp_path_factory.mktemp("bench")
    argv = ["run", "--seeds", "1", "--methods", "baseline,sckd", "--data-root", str(tiny_data_root), "--runs-dir",
            str(base / "runs"), *TINY_RUN]
    assert main(argv) == 0
    return base


def _jobs(bench: Path) -> dict[str, dict]:
    with ResultsStore(bench / "runs") as store:
        return {("teacher" if j["kind"] == "teacher" else j["method"]): {**j, "metrics": store.metrics(j["id"])}
                for j in store.jobs()}


def readme_edge_commands() -> list[list[str]]:
    """The commands of the README's edge-device code block, comments removed."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Edge devices (Jetson Nano)", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.startswith("    kdbench ")]
    return [shlex.split(line.split(" #", 1)[0]) for line in lines]


def test_readme_edge_commands_run_verbatim(bench, monkeypatch, capsys):
    commands = readme_edge_commands()
    assert [c[:2] for c in commands] == [["kdbench", "export"], ["kdbench", "profile"], ["kdbench", "import"]]
    monkeypatch.chdir(bench)  # runs/ here is the default --runs-dir of every command
    # This test checks that the commands fit together; the busy-machine guard has tests of its own (test_profile)
    # and would refuse the timing whenever the test machine is shared.
    monkeypatch.setattr(interference, "MAX_SPREAD", float("inf"))
    monkeypatch.setattr(interference, "MAX_OTHERS", float("inf"))
    for argv in commands:
        assert main(argv[1:]) == 0, argv
    out = capsys.readouterr().out
    written = re.findall(r"^wrote (\S+\.onnx) ", out, flags=re.M)
    assert written == ["onnx/SynthRoom-resnet18-baseline-seed0.onnx", "onnx/SynthRoom-resnet18-sckd-seed0.onnx"]
    assert sorted(p.name for p in (bench / "onnx").iterdir()) == [
        "SynthRoom-resnet18-baseline-seed0.json", "SynthRoom-resnet18-baseline-seed0.onnx",
        "SynthRoom-resnet18-sckd-seed0.json", "SynthRoom-resnet18-sckd-seed0.onnx"]  # students only
    (row,) = json.loads((bench / "nano.json").read_text())["rows"]
    assert (row["arch"], row["backend"], row["batch"], row["crop"]) == ("resnet18", "onnxruntime", 1, 28)
    with ResultsStore(bench / "runs") as store:
        assert [(p["arch"], p["crop"], p["latency_median_ms"]) for p in store.profiles()] == [
            ("resnet18", 28, row["latency_median_ms"])]


def test_exported_model_reproduces_the_evaluated_predictions(bench, tiny_data_root, tmp_path, capsys):
    """Fed the test images prepared as the sidecar says, the ONNX model gives the predictions evaluation stored."""
    import onnxruntime as ort

    from kdbench.scenes.cache import load_split_cache

    job = _jobs(bench)["sckd"]
    out = tmp_path / "student.onnx"
    assert main(["export", job["id"][:6], "--runs-dir", str(bench / "runs"), "--out", str(out)]) == 0
    assert f"wrote {out} (job {job['id']};" in capsys.readouterr().out
    side = json.loads(out.with_suffix(".json").read_text())
    assert (side["job_id"], side["scene"], side["method"], side["role"], side["arch"], side["seed"]) == (
        job["id"], "SynthRoom", "sckd", "student", "resnet18", 0)
    assert side["metrics"]["median_t"] == job["metrics"]["median_t"]
    contract = side["input"]
    assert contract["shape"] == [1, 3, 28, 28] and contract["normalize"] == "imagenet"
    assert side["parity"]["max_abs_diff"] <= 1e-4

    cache = load_split_cache("SynthRoom", tiny_data_root, "test", 32)
    c = contract["shape"][-1]
    h, w = cache.images.shape[1:3]
    y, x = (h - c) // 2, (w - c) // 2
    images = (cache.images[:, y:y + c, x:x + c].astype(np.float32) / 255 - contract["mean"]) / contract["std"]
    images = images.transpose(0, 3, 1, 2).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pred = np.concatenate([np.concatenate(session.run(["xyz", "q"], {"image": im[None]}), 1) for im in images])
    stored = pd.read_csv(bench / "runs" / job["run_dir"] / "predictions.csv")
    cols = ["pred_x", "pred_y", "pred_z", "pred_qw", "pred_qx", "pred_qy", "pred_qz"]
    np.testing.assert_allclose(pred, stored[cols].to_numpy(), atol=1e-4, rtol=0)


def test_checkpoint_run_folder_and_job_id_give_the_same_model(bench, tmp_path, capsys):
    import onnx

    jobs = _jobs(bench)
    folder = bench / "runs" / jobs["baseline"]["run_dir"]
    for name, target in {"folder": str(folder), "checkpoint": str(folder / "checkpoint.pt")}.items():
        assert main(["export", target, "--runs-dir", str(bench / "runs"), "--out", f"{tmp_path / name}/"]) == 0
    written = {name: tmp_path / name / "SynthRoom-resnet18-baseline-seed0.onnx" for name in ("folder", "checkpoint")}
    assert onnx.load(str(written["folder"])).graph == onnx.load(str(written["checkpoint"])).graph
    # A teacher by its job id (the students' id route is tested above): named and labelled as a teacher.
    teacher = jobs["teacher"]
    assert main(["export", teacher["id"], "--runs-dir", str(bench / "runs"), "--out", f"{tmp_path / 'id'}/"]) == 0
    written["id"] = tmp_path / "id" / "SynthRoom-resnet34-teacher-seed0.onnx"
    meta = {p.key: p.value for p in onnx.load(str(written["id"])).metadata_props}
    assert (meta["kdbench.job_id"], meta["kdbench.role"], meta["kdbench.arch"]) == (teacher["id"], "teacher",
                                                                                   "resnet34")
    assert json.loads(meta["kdbench.input"])["crop"] == "centre 28x28"
    printed = capsys.readouterr().out
    for p in written.values():
        assert f"wrote {p} (" in printed and f"wrote {p.with_suffix('.json')} (" in printed


def test_bad_targets_are_one_line_errors(bench, tmp_path, capsys):
    runs = str(bench / "runs")
    cases = [(["export", "nosuchjob", "--runs-dir", runs], "not a checkpoint file, a run folder, or a job id"),
             (["export", "--runs-dir", runs], "pass either"),
             (["export", "x", "--all-students", "--runs-dir", runs], "pass either"),
             (["export", str(tmp_path), "--runs-dir", runs], "has no checkpoint.pt"),
             (["export", _jobs(bench)["sckd"]["id"], "--runs-dir", runs, "--out", str(tmp_path / "m.txt")],
              "ends in .onnx"),
             (["export", "abcd", "--runs-dir", str(tmp_path / "none")], "no results store")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_unfinished_job_is_not_exported(bench, tmp_path, capsys):
    runs = tmp_path / "runs"
    with ResultsStore(runs) as store:
        store.upsert_job({"id": "0123456789ab", "kind": "student", "scene": "SynthRoom", "method": "sckd",
                          "arch": "resnet18", "seed": 0, "config": "{}", "status": "running", "run_dir": "x"})
    assert main(["export", "0123", "--runs-dir", str(runs)]) == 2
    assert "is running, not done" in capsys.readouterr().err


def test_failed_parity_writes_nothing(bench, tmp_path, monkeypatch, capsys):
    import kdbench.profile

    def wrong(*args, **kwargs):
        raise KdbenchError("onnxruntime's outputs differ from torch's (simulated)")

    monkeypatch.setattr(kdbench.profile, "check_onnx_parity", wrong)
    out = tmp_path / "out" / "student.onnx"
    assert main(["export", _jobs(bench)["sckd"]["id"], "--runs-dir", str(bench / "runs"), "--out", str(out)]) == 2
    assert "simulated" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []  # neither the model, nor its sidecar, nor a temporary folder


def test_colliding_names_get_the_job_id(tmp_path):
    from conftest import tiny_config

    a, b, c = tiny_config(method="sckd"), tiny_config(method="sckd", lr=0.01), tiny_config(method="vanilla")
    d = tiny_config(method="sckd", method_params={"alpha": 0.0})
    rows = [(a, "sckd"), (b, "sckd"), (c, "vanilla"), (d, "sckd:alpha=0")]  # d: a variant's leaderboard row
    sources = [Source(tmp_path / "unused.pt", {"id": cfg.hash(), "config": json.dumps(cfg.to_dict()),
                                               "method": label}) for cfg, label in rows]
    names = [p.name for p in output_paths(sources, tmp_path)]
    assert names == [f"SynthRoom-resnet18-sckd-seed0-{a.hash()}.onnx", f"SynthRoom-resnet18-sckd-seed0-{b.hash()}.onnx",
                     "SynthRoom-resnet18-vanilla-seed0.onnx", "SynthRoom-resnet18-sckd_alpha=0-seed0.onnx"]


def test_mean_image_contract_names_the_mean_file():
    from conftest import tiny_config

    from kdbench.export import input_contract

    contract = input_contract(tiny_config(normalize="mean"), batch=2)
    assert contract["shape"] == [2, 3, 28, 28] and contract["normalize"] == "mean" and "mean" not in contract
    assert "train-32/split_mean.npy" in contract["formula"]
