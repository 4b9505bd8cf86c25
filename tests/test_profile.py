"""Profiling: params, sizes, FLOPs, ONNX export and parity, the torch-free --onnx path, import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.interference import MARK, Watch, judge
from kdbench.models import PoseNet
from kdbench.profile import (
    check_onnx_parity,
    count_gflops,
    count_params,
    export_onnx,
    params_mib,
    state_dict_mib,
)
from kdbench.reports.commands import import_profiles, read_profile_rows
from kdbench.reports.store import ResultsStore

REPO = Path(__file__).resolve().parents[1]
CROP = 64  # small inputs keep export and timing fast; the numbers' meaning does not change


@pytest.fixture(scope="module")
def resnet18() -> PoseNet:
    torch.manual_seed(0)
    return PoseNet("resnet18").eval()


@pytest.fixture(scope="module")
def onnx_file(resnet18, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "posenet-resnet18.onnx"
    return export_onnx(resnet18, path, batch=1, crop=CROP)


def test_params_and_sizes(resnet18):
    params = count_params(resnet18)
    assert params == sum(p.numel() for p in resnet18.parameters()) == 11_708_999
    assert params_mib(params) == params * 4 / 2**20  # MiB, as torchvision's tables count "MB"
    # The saved state_dict also holds BatchNorm buffers and pickle overhead: a bit larger, never smaller.
    assert params_mib(params) < state_dict_mib(resnet18) < params_mib(params) * 1.01


def test_flops_positive_and_ordered():
    small, big = PoseNet("resnet18").eval(), PoseNet("resnet34").eval()
    assert 0 < count_gflops(small, CROP) < count_gflops(big, CROP)
    # FlopCounterMode counts a multiply-add as 2 FLOPs: ResNet18 at 224 is 1.82 GMACs, so about 3.6 GFLOPs.
    assert count_gflops(small, 224) == pytest.approx(3.63, abs=0.05)


def test_onnx_parity_both_outputs(resnet18, onnx_file):
    import onnxruntime as ort

    assert check_onnx_parity(resnet18, onnx_file, crop=CROP) <= 1e-4
    x = torch.randn(1, 3, CROP, CROP, generator=torch.Generator().manual_seed(3))
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["xyz", "q"]
    xyz, q = session.run(None, {"image": x.numpy()})
    with torch.inference_mode():
        ref = resnet18(x)
    np.testing.assert_allclose(xyz, ref.xyz.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(q, ref.q.numpy(), atol=1e-4, rtol=0)


def test_parity_failure_is_an_error(resnet18, onnx_file):
    other = PoseNet("resnet18").eval()  # different random weights than the exported model
    with pytest.raises(KdbenchError, match="differ from torch"):
        check_onnx_parity(other, onnx_file, crop=CROP)


def test_profile_records_rows_shown_by_report(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "rows.json"
    # --force: this test is about recording; on a shared test machine the busy-machine guard would refuse.
    argv = ["profile", "--archs", "resnet18", "--crop", str(CROP), "--runs", "50", "--runs-dir", str(runs),
            "--out", str(out), "--export", str(tmp_path / "onnx"), "--force"]
    assert main(argv) == 0
    exported = tmp_path / "onnx" / f"posenet-resnet18-b1-c{CROP}.onnx"
    assert f"wrote {exported} (resnet18 with random weights" in capsys.readouterr().out
    with ResultsStore(runs) as store:
        rows = store.profiles()
    assert [(r["arch"], r["backend"], r["crop"], r["runs"]) for r in rows] == [
        ("resnet18", "torch", CROP, 50), ("resnet18", "onnxruntime", CROP, 50)]
    for r in rows:
        assert r["params"] == 11_708_999 and r["gflops"] > 0 and r["estimated"] == 0
        assert 0 < r["latency_median_ms"] <= r["latency_p90_ms"]
    assert len(json.loads(out.read_text())["rows"]) == 2
    capsys.readouterr()
    assert main(["report", "--runs-dir", str(runs)]) == 0
    report = capsys.readouterr().out
    efficiency = report.split("## Efficiency")[1]
    assert "| resnet18 |" in efficiency and "onnxruntime" in efficiency and "torch" in efficiency


def test_too_few_runs_is_an_error(capsys):
    assert main(["profile", "--archs", "resnet18", "--runs", "10", "--no-store"]) == 2
    assert "at least 50" in capsys.readouterr().err


def test_unknown_arch_is_an_error(capsys):
    assert main(["profile", "--archs", "resnet19", "--no-store"]) == 2
    assert "resnet19" in capsys.readouterr().err


# The --onnx path must work on a machine without torch: block the import in a fresh interpreter.
NO_TORCH = """
import sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError("torch is blocked in this test: " + name)

sys.meta_path.insert(0, Blocker())
from kdbench.cli import main
rc = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")], "torch was imported"
sys.exit(rc)
"""


def test_onnx_path_without_torch(onnx_file, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "edge.json"
    argv = ["profile", "--onnx", str(onnx_file), "--runs", "50", "--runs-dir", str(runs), "--out", str(out),
            "--force"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with ResultsStore(runs) as store:
        (row,) = store.profiles()
    assert (row["arch"], row["backend"], row["batch"], row["crop"]) == ("resnet18", "onnxruntime", 1, CROP)
    assert row["gflops"] is None  # FLOPs need torch: left empty, not invented
    assert row["params"] == pytest.approx(11_708_999, rel=0.01)  # BatchNorm may be folded into convs
    assert row["file_mb"] == pytest.approx(onnx_file.stat().st_size / 2**20)
    assert row["latency_median_ms"] > 0
    assert json.loads(out.read_text())["rows"][0]["backend"] == "onnxruntime"


def test_profile_modules_do_not_import_torch_at_module_level():
    code = ("import sys; import kdbench.cli, kdbench.profile_onnx, kdbench.reports.store, kdbench.fileio, "
            "kdbench.interference; "
            "print(any(m.split('.')[0] in ('torch', 'torchvision') for m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


# import ---------------------------------------------------------------------------------------------------
def _rows() -> list[dict]:
    return [{"arch": "resnet18", "backend": "onnxruntime", "device": "NVIDIA Jetson Nano Developer Kit (cpu)",
             "batch": 1, "crop": 224, "params": 11699407, "size_mb": 44.63, "file_mb": 44.74,
             "gflops": None, "latency_median_ms": 180.5, "latency_p90_ms": 190.2, "runs": 50,
             "estimated": 0, "note": "from posenet-resnet18.onnx", "source": "kdbench profile on nano",
             "created": 1700000000.0}]


def test_import_merges_rows(tmp_path, capsys):
    path = tmp_path / "edge.json"
    path.write_text(json.dumps({"format": "kdbench-profiles", "version": 1, "rows": _rows()}))
    runs = tmp_path / "runs"
    assert main(["import", str(path), "--runs-dir", str(runs)]) == 0
    assert import_profiles(path, runs) == (0, 1)  # the same file again adds nothing
    with ResultsStore(runs) as store:
        (row,) = store.profiles()
    assert row["device"].startswith("NVIDIA Jetson Nano") and row["latency_median_ms"] == 180.5
    capsys.readouterr()
    assert main(["report", "--runs-dir", str(runs)]) == 0
    assert "180.50" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON (line 1"),
    ('{"rows": []}', "is not a kdbench profile file"),
    ('"text"', "expected a list of profile rows"),
    ('[{"arch": "resnet18", "backend": "torch"}]', "row 0: field 'device' must be a non-empty string"),
    ('[{"arch": "r", "backend": "torch", "device": "d", "latency_median_ms": "fast"}]',
     "row 0: field 'latency_median_ms' must be a finite number"),
    ('[{"arch": "r", "backend": "torch", "device": "d", "batch": 1.5}]',
     "row 0: field 'batch' must be a whole"),
    ('[{"arch": "r", "backend": "torch", "device": "d", "latency": 3}]', "row 0: unknown field(s) latency"),
    ('[{"arch": "r", "backend": "trt", "device": "d", "estimated": 1}]', "needs a 'note'"),
])
def test_bad_import_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(KdbenchError, match="bad.json") as err:
        read_profile_rows(path)
    assert message in str(err.value)


def test_bad_import_via_cli_exits_2(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text('{"format": "kdbench-profiles", "rows": [')
    assert main(["import", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "broken.json" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "results.sqlite").exists()  # nothing written for a bad file


def test_jetson_estimates_are_labelled(tmp_path, capsys):
    from kdbench.profile import jetson_nano_estimates

    rows = jetson_nano_estimates(("resnet18", "resnet101"), crop=CROP)
    assert {r["backend"] for r in rows} == {"torch-fp16", "tensorrt-fp16"}  # no published resnet101 figure
    assert all(r["estimated"] == 1 and "not measured" in r["note"] for r in rows)
    trt = next(r for r in rows if r["backend"] == "tensorrt-fp16")
    assert 0 < trt["latency_median_ms"] < 11.4  # a smaller crop scales the 224 figure down by GFLOPs
    with ResultsStore(tmp_path / "runs") as store:
        store.add_profiles(rows)
    capsys.readouterr()
    assert main(["report", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "(estimated: published torch2trt tensorrt-fp16 figure" in out and "≈" in out


def test_cuda_without_gpu_is_an_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["profile", "--archs", "resnet18", "--device", "cuda", "--no-store"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


# busy machines ------------------------------------------------------------------------------------------------
def test_interference_verdicts():
    quiet = judge(16.9, 17.6, 0.02)  # the README's resnet18 torch row on an idle CPU
    assert not quiet.disturbed
    busy = judge(195.8, 939.9, None)  # the same model while other jobs ran (issue 12)
    assert busy.disturbed and "4.8x the median" in busy.text()
    steady = judge(30.0, 31.0, 0.6)  # a constant competing load slows every run alike: the spread misses it
    assert steady.disturbed and "other processes used 60% of the CPUs" in steady.text()


@pytest.fixture
def busy_machine():
    """One CPU-bound process per core for the duration of the test: a real competing load."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        yield
    finally:
        for proc in procs:  # only the processes this fixture started
            proc.kill()
            proc.wait()


def test_busy_machine_latency_is_refused_then_forced(onnx_file, tmp_path, busy_machine, capsys):
    runs, out = tmp_path / "runs", tmp_path / "edge.json"
    argv = ["profile", "--onnx", str(onnx_file), "--runs", "100", "--runs-dir", str(runs), "--out", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "the machine was busy while measuring" in captured.err and "--force" in captured.err
    # Which sign fires first depends on the machine (a long tail, or the other processes' CPU share).
    assert "x the median" in captured.err or "other processes used" in captured.err
    assert "disturbed measurement" in captured.out  # the numbers are still printed
    assert not out.exists() and not (runs / "results.sqlite").exists()  # nothing recorded anywhere
    assert main(argv + ["--force"]) == 0
    with ResultsStore(runs) as store:
        (row,) = store.profiles()
    assert row["note"].startswith(f"{MARK} (") and "kept with --force" in row["note"]
    assert json.loads(out.read_text())["rows"][0]["note"] == row["note"]


def test_watch_sees_other_processes(busy_machine):
    if not Path("/proc/stat").is_file():
        pytest.skip("no /proc/stat: the CPU-share sign is Linux-only (the spread sign still works)")
    with Watch() as watch:
        time.sleep(0.5)  # this process idles; the spinning processes use the CPUs
    assert watch.others_share() > 0.5
    assert watch.verdict(10.0, 10.5).disturbed


class _StutteringClock:
    """perf_counter for profile_onnx: every fifth timed call takes 20 ms instead of 2 ms (a lost time slice)."""

    time = staticmethod(time.time)  # timestamps of rows stay real

    def __init__(self):
        self.now, self.calls = 0.0, 0

    def perf_counter(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:  # the end of a timed call
            self.now += 0.020 if self.calls % 10 == 0 else 0.002
        return self.now


def test_long_tail_of_timings_is_refused(onnx_file, tmp_path, monkeypatch, capsys):
    import kdbench.profile_onnx

    monkeypatch.setattr(kdbench.profile_onnx, "time", _StutteringClock())
    argv = ["profile", "--onnx", str(onnx_file), "--runs", "50", "--runs-dir", str(tmp_path / "runs")]
    assert main(argv) == 2
    assert "p90 20.0 ms is 10.0x the median 2.0 ms (limit 1.5x)" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "results.sqlite").exists()
