"""Several jobs at once: the process pool gives the results of one-at-a-time runs; options reach the store."""

import json

import pytest
import torch
from conftest import tiny_config

from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.reports.store import ResultsStore
from kdbench.runners.benchmark import run_benchmark
from kdbench.runners.concurrency import (
    MAX_JOBS_PER_GPU,
    auto_jobs_per_gpu,
    job_memory_bytes,
    job_slots,
    parse_jobs_per_gpu,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(epochs=1, batch_size=4, load_size=32, crop_size=28)


def _rows(runs_dir):
    with ResultsStore(runs_dir) as store:
        return {r["id"]: (r, store.metrics(r["id"])) for r in store.jobs()}


def test_pool_of_two_matches_one_at_a_time(tiny_data_root, tmp_path):
    kwargs = dict(methods="baseline,vanilla", scenes="SynthRoom", seeds=1, data_root=tiny_data_root, quiet=True,
                  **TINY)
    one = run_benchmark(runs_dir=tmp_path / "one", jobs_per_gpu=1, device="cpu", **kwargs)
    two = run_benchmark(runs_dir=tmp_path / "two", jobs_per_gpu=2, device="cpu", **kwargs)
    assert not one.failed and not two.failed and len(two.done) == 3
    a, b = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert a.keys() == b.keys()
    for job_id, (_row, metrics) in a.items():
        assert b[job_id][0]["status"] == "done"
        assert b[job_id][1] == pytest.approx(metrics, rel=0, abs=0)  # one thread per job: bitwise equal


def test_run_options_from_the_cli_are_recorded(tiny_data_root, tmp_path):
    args = ["run", "--seeds", "1", "--methods", "baseline", "--scenes", "SynthRoom", "--data-root", str(tiny_data_root),
            "--runs-dir", str(tmp_path), "--epochs", "1", "--batch-size", "4", "--load-size", "32", "--crop", "28",
            "--quiet", "--precision", "bf16", "--checkpoint-every", "0", "--jobs-per-gpu", "1", "--device", "cpu"]
    assert main(args) == 0
    (row, _), = _rows(tmp_path).values()
    config = row["config"] if isinstance(row["config"], dict) else json.loads(row["config"])
    assert config["precision"] == "bf16" and config["compile"] is False
    assert main(args[:-6] + ["--jobs-per-gpu", "0"]) == 2


def test_jobs_per_gpu_auto_from_memory():
    assert parse_jobs_per_gpu("auto") is None and parse_jobs_per_gpu("3") == 3
    with pytest.raises(KdbenchError, match="--jobs-per-gpu 'x'"):
        parse_jobs_per_gpu("x")
    small = tiny_config(precision="bf16")
    paper = tiny_config(batch_size=32, load_size=256, crop_size=224, precision="bf16", arch="resnet50")
    assert auto_jobs_per_gpu([small], 80 * 2**30) == MAX_JOBS_PER_GPU
    assert auto_jobs_per_gpu([paper], 8 * 2**30) == 1  # one big job fills a small GPU
    assert auto_jobs_per_gpu([small, paper], 16 * 2**30) < auto_jobs_per_gpu([small], 16 * 2**30)
    assert job_slots([small], 2, "cpu") == ["cpu", "cpu"]


def test_a_mobile_student_is_estimated_smaller_than_resnet18():
    """Families without a table row are estimated from their parameter count, not given ResNet152's figure."""
    cfg = dict(batch_size=32, load_size=256, crop_size=224, precision="fp32")
    assert job_memory_bytes(tiny_config(arch="mobilenet_v3_small", **cfg)) < \
        job_memory_bytes(tiny_config(arch="resnet18", **cfg))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_slots_cover_every_gpu():
    slots = job_slots([tiny_config()], 2, None)
    assert len(slots) == 2 * torch.cuda.device_count()
    assert set(slots) == {f"cuda:{i}" for i in range(torch.cuda.device_count())}


def test_a_worker_pool_that_breaks_is_a_one_line_error(tiny_data_root, tmp_path, capsys, monkeypatch):
    # e.g. workers that cannot start because a user's script calls kdbench without a __main__ guard
    from concurrent.futures.process import BrokenProcessPool

    class BrokenPool:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, *args, **kwargs):
            raise BrokenProcessPool("a child process terminated abruptly")

    monkeypatch.setattr("kdbench.runners.executors.ProcessPoolExecutor", BrokenPool)
    rc = main(["run", "--seeds", "1", "--methods", "baseline", "--scenes", "SynthRoom,SynthStreet", "--jobs-per-gpu",
               "2", "--epochs", "1", "--batch-size", "4", "--load-size", "32", "--crop", "28", "--quiet",
               "--runs-dir", str(tmp_path / "runs"), "--data-root", str(tiny_data_root)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("kdbench: error: a job worker process died") and '__name__ == "__main__"' in err[0]
