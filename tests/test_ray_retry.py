"""Ray: a job whose worker is killed mid-training is run again (from its checkpoint) and the retry recorded.

Runs on a local two-node Ray cluster (ray.cluster_utils.Cluster); skipped without ray.
"""

import os
import signal
import sys
import threading
import time

import pytest

from kdbench.cli import main
from kdbench.reports.store import ResultsStore
from kdbench.runners.executors import ATTEMPTS_FILE

ray = pytest.importorskip("ray")


@pytest.fixture
def cluster(monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))  # the nodes' workers import this kdbench
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def _kill_first_attempt(runs, killed: list[int]) -> None:
    """SIGKILL the worker of the job's first attempt once it saved a checkpoint."""
    deadline = time.time() + 120
    while time.time() < deadline:
        for attempts in runs.glob(f"*/*/{ATTEMPTS_FILE}"):
            lines = attempts.read_text().splitlines()
            if lines and (attempts.parent / "checkpoint.pt").is_file():
                pid = int(lines[0].split()[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.01)


@pytest.mark.slow
def test_a_killed_ray_worker_is_retried_from_its_checkpoint(cluster, tiny_data_root, tmp_path, capsys):
    runs = tmp_path / "runs"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_first_attempt, args=(runs, killed), daemon=True)
    killer.start()
    rc = main(["run", "--executor", "ray", "--methods", "baseline", "--seeds", "1", "--scenes", "SynthRoom",
               "--runs-dir", str(runs), "--data-root", str(tiny_data_root), "--epochs", "3", "--batch-size", "4",
               "--load-size", "32", "--crop", "28", "--checkpoint-every", "0.2", "--quiet"])
    killer.join(timeout=5)
    out = capsys.readouterr()
    assert killed, "the job ended before its worker could be killed"
    assert rc == 0, out.out + out.err
    with ResultsStore(runs, create=False) as store:
        (row,) = store.jobs()
    assert row["status"] == "done" and row["epochs_done"] == 3 and row["retries"] == 1
    (attempts,) = runs.glob(f"*/*/{ATTEMPTS_FILE}")
    pids = [int(line.split()[1]) for line in attempts.read_text().splitlines()]
    assert len(pids) == 2 and pids[0] == killed[0] != pids[1]
