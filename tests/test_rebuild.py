"""`kdbench run --rebuild-store` recovers everything a report shows: run and train jobs, variant labels,
superseded rows; and a store that lost a table names the command that helps."""

import sqlite3

import pytest
from conftest import one_line_error

from kdbench.cli import main

TINY = ["--batch-size", "4", "--quiet"]
RUN = ["run", "--seeds", "1", "--scenes", "SynthRoom", "--load-size", "32", "--crop", "28", *TINY]


def _reports(runs, capsys) -> tuple[str, str]:
    capsys.readouterr()
    out = []
    for fmt in ("markdown", "json"):
        assert main(["report", "--runs-dir", str(runs), "--format", fmt]) == 0
        out.append(capsys.readouterr().out)
    return out[0], out[1]


@pytest.fixture(scope="module")
def every_kind(tiny_data_root, tmp_path_factory):
    """A runs folder holding a run's teacher and students (a variant among them), a superseded student and
    a `kdbench train` job."""
    import torch

    runs = tmp_path_factory.mktemp("every-kind") / "runs"
    data = ["--runs-dir", str(runs), "--data-root", str(tiny_data_root)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*RUN, *data, "--methods", "baseline,vanilla,vanilla:alpha=0.9", "--epochs", "1"]) == 0
        assert main([*RUN, *data, "--methods", "baseline", "--epochs", "2"]) == 0  # supersedes the 1-epoch one
        assert main(["train", "--scene", "SynthRoom", "--arch", "resnet18", "--epochs", "1", *TINY, *data]) == 0
    finally:
        torch.set_num_threads(threads)
    return runs


def test_rebuilt_store_gives_the_same_report(every_kind, tiny_data_root, capsys, tmp_path, one_thread):
    import shutil

    runs = shutil.copytree(every_kind, tmp_path / "runs")
    with sqlite3.connect(runs / "results.sqlite") as conn:
        statuses = sorted(r[0] for r in conn.execute("SELECT status FROM jobs"))
        methods = {r[0] for r in conn.execute("SELECT method FROM jobs")}
    assert statuses == ["done"] * 5 + ["superseded"] and "vanilla:alpha=0.9" in methods
    before = _reports(runs, capsys)
    (runs / "results.sqlite").write_bytes(b"not a database" * 100)
    assert main([*RUN, "--runs-dir", str(runs), "--data-root", str(tiny_data_root), "--methods", "baseline",
                 "--epochs", "2", "--rebuild-store"]) == 0
    assert "rebuilt the results store from 6 finished run folder(s)" in capsys.readouterr().out
    assert _reports(runs, capsys) == before
    assert "vanilla:alpha=0.9" in before[0] and "1 earlier run" in before[0]


def test_a_dropped_metrics_table_names_rebuild_store(every_kind, capsys, tmp_path):
    import shutil

    runs = shutil.copytree(every_kind, tmp_path / "runs")
    with sqlite3.connect(runs / "results.sqlite") as conn:
        conn.execute("DROP TABLE metrics")
    err = one_line_error(capsys, main(["report", "--runs-dir", str(runs)]))
    assert "kdbench run --rebuild-store" in err and "metrics" in err
