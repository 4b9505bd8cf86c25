"""Leaderboards from a results store: numbers, order, marks, footnote, formats and plots."""

from __future__ import annotations

import importlib.util
import io
import json
import zlib

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.reports.leaderboard import (
    AVERAGE,
    accuracy_table,
    footnote,
    load_profiles,
    load_results,
    not_shown,
    render,
)
from kdbench.reports.plots import pareto_front, write_plots
from kdbench.reports.store import ResultsStore

SCENES = ("ShopFacade", "Stairs")
METHODS = ("baseline", "vanilla", "sckd")
SEEDS = (0, 1)


def _add_job(store: ResultsStore, runs_dir, job_id: str, kind: str, scene: str, method: str, arch: str,
             seed: int, metrics: dict | None, status: str = "done", n_images: int = 12) -> None:
    """One job as the runner writes it; done jobs get metrics and a predictions.csv in their run_dir."""
    run_dir = f"jobs/{job_id}"
    store.upsert_job({"id": job_id, "kind": kind, "scene": scene, "method": method, "arch": arch,
                      "teacher_arch": "resnet34" if kind == "student" else None, "seed": seed, "config": "{}",
                      "status": "running", "run_dir": run_dir})
    if status == "done":
        store.finish_job(job_id, metrics)
        rng = np.random.default_rng(zlib.crc32(job_id.encode()))
        pred = pd.DataFrame({"image": [f"seq-01/frame-{i:06d}.color.png" for i in range(n_images)],
                             "err_t": rng.gamma(2.0, metrics["median_t"] / 2, n_images),
                             "err_r": rng.gamma(2.0, metrics["median_r"] / 2, n_images)})
        (runs_dir / run_dir).mkdir(parents=True)
        pred.to_csv(runs_dir / run_dir / "predictions.csv", index=False)
    elif status != "running":
        store.upsert_job({"id": job_id, "status": status, "error": "boom" if status == "failed" else None})


@pytest.fixture
def store_dir(tmp_path):
    """2 scenes x 3 student methods x 2 seeds, a teacher per scene and seed, a failed and a pending job."""
    runs = tmp_path / "runs"
    rng = np.random.default_rng(7)
    raw = []
    with ResultsStore(runs) as store:
        for scene in SCENES:
            for seed in SEEDS:
                rows = [("teacher", "resnet34", "baseline")] + [("student", "resnet18", m) for m in METHODS]
                for kind, arch, method in rows:
                    t, r = float(rng.uniform(0.3, 2.0)), float(rng.uniform(3.0, 15.0))
                    job_id = f"{scene}-{kind}-{method}-{seed}"
                    _add_job(store, runs, job_id, kind, scene, method, arch, seed,
                             {"median_t": t, "median_r": r, "mean_t": 1.3 * t, "mean_r": 1.2 * r,
                              "acc_0.5m_5deg": t / 4, "n_test": 12})
                    raw.append({"scene": scene, "role": kind, "arch": arch, "method": method, "seed": seed,
                                "median_t": t, "median_r": r})
        for seed, status in ((0, "failed"), (1, "pending")):
            _add_job(store, runs, f"{status}-hint", "student", "Stairs", "hint", "resnet18", seed, None,
                     status=status)
        store.add_profiles([
            {"arch": "resnet18", "backend": "torch", "device": "Test CPU (cpu)", "batch": 1, "crop": 224,
             "params": 11708999, "size_mb": 44.67, "file_mb": 44.74, "gflops": 3.63,
             "latency_median_ms": 17.0, "latency_p90_ms": 18.0, "runs": 50, "note": "fp32"},
            {"arch": "resnet34", "backend": "torch", "device": "Test CPU (cpu)", "batch": 1, "crop": 224,
             "params": 21817159, "size_mb": 83.23, "file_mb": 83.3, "gflops": 7.33, "latency_median_ms": 30.0,
             "latency_p90_ms": 32.0, "runs": 50, "note": "fp32"},
            {"arch": "resnet18", "backend": "tensorrt-fp16", "device": "Jetson Nano (cuda)", "batch": 1,
             "crop": 224, "params": 11708999, "size_mb": 44.67, "gflops": 3.63, "latency_median_ms": 11.4,
             "estimated": 1, "note": "published torch2trt figure scaled by GFLOPs"},
        ])
    pd.DataFrame(raw).to_pickle(tmp_path / "raw.pkl")
    return runs


def _raw(store_dir) -> pd.DataFrame:
    return pd.read_pickle(store_dir.parent / "raw.pkl")


# numbers --------------------------------------------------------------------------------------------------
def test_table_equals_direct_pandas_recomputation(store_dir):
    """Cells are geometric means over seeds with the t interval of the mean log error; Δ the geometric-mean ratio
    over matched seeds (was: arithmetic means and their ratio, an estimator the tests did not use)."""
    acc = accuracy_table(load_results(store_dir))
    raw = _raw(store_dir).assign(lt=lambda d: np.log(d["median_t"]), lr=lambda d: np.log(d["median_r"]))
    expected = raw.groupby(["scene", "role", "method"]).agg(
        n=("seed", "size"), t=("lt", "mean"), ts=("median_t", "std"), r=("lr", "mean"), rs=("median_r", "std"),
        tsem=("lt", "sem"))
    per_scene = acc[acc["scene"] != AVERAGE].set_index(["scene", "role", "method"]).sort_index()
    # the failed hint run is a row of its own (a result: 0 finished seeds, 1 failed), not left out
    assert len(per_scene) == len(expected) + 1 == len(SCENES) * (1 + len(METHODS)) + 1
    hint = per_scene.loc[("Stairs", "student", "hint")]
    assert (hint["n_seeds"], hint["n_failed"], hint["row_failed"]) == (0, 1, 1)
    for key, row in expected.iterrows():
        got = per_scene.loc[key]
        assert got["n_seeds"] == row["n"] == len(SEEDS) and got["n_failed"] == 0
        assert got[["t_mean", "t_std", "r_mean", "r_std"]].tolist() == pytest.approx(
            [np.exp(row["t"]), row["ts"], np.exp(row["r"]), row["rs"]], rel=1e-12)
        half = sst.t.ppf(0.975, row["n"] - 1) * row["tsem"]
        assert [got["t_ci_lo"], got["t_ci_hi"]] == pytest.approx(np.exp([row["t"] - half, row["t"] + half]))
    for scene in SCENES:
        pairs = raw[(raw["scene"] == scene) & (raw["role"] == "student")].pivot(index="seed", columns="method")
        for metric, col in (("t", "lt"), ("r", "lr")):
            change = 100 * np.expm1((pairs[(col, "sckd")] - pairs[(col, "baseline")]).mean())
            assert per_scene.loc[(scene, "student", "sckd"), f"d{metric}_pct"] == pytest.approx(change)


def test_average_is_mean_over_scenes_of_each_group(store_dir):
    acc = accuracy_table(load_results(store_dir))
    # ShopFacade (cambridge) and Stairs (7scenes) are different groups: each average is its one scene.
    for scene in SCENES:
        group = acc[acc["scene"] == scene]["group"].iloc[0]
        avg = acc[(acc["group"] == group) & (acc["scene"] == AVERAGE)].set_index("label")
        one = acc[acc["scene"] == scene].set_index("label")
        assert avg["t_mean"].dropna().to_dict() == pytest.approx(one["t_mean"].dropna().to_dict())


def test_average_over_two_scenes_of_one_group(tmp_path):
    runs = tmp_path / "runs"
    with ResultsStore(runs) as store:
        for i, (scene, t) in enumerate([("ShopFacade", 1.0), ("KingsCollege", 2.0)]):
            for method, scale in (("baseline", 1.0), ("sckd", 0.5)):
                _add_job(store, runs, f"j{i}{method}", "student", scene, method, "resnet18", 0,
                         {"median_t": t * scale, "median_r": 10 * t * scale})
        _add_job(store, runs, "only-one", "student", "ShopFacade", "hint", "resnet18", 0,
                 {"median_t": 0.1, "median_r": 1.0})
    acc = accuracy_table(load_results(runs)).set_index(["scene", "method"])
    # geometric mean over the scenes (was the arithmetic mean: the larger scene's metres would decide it)
    assert acc.loc[(AVERAGE, "baseline"), "t_mean"] == pytest.approx(np.sqrt(2.0))
    assert acc.loc[(AVERAGE, "sckd"), "r_mean"] == pytest.approx(5 * np.sqrt(2.0))
    assert acc.loc[(AVERAGE, "sckd"), "dt_pct"] == pytest.approx(-50.0)
    assert (AVERAGE, "hint") not in acc.index  # hint ran on one of the two scenes: no average
    assert list(acc.loc["ShopFacade"].index) == ["baseline", "hint", "sckd"]  # fixed method order


def test_teacher_first_baseline_second_best_student_marked(store_dir):
    acc = accuracy_table(load_results(store_dir))
    for scene in SCENES:
        part = acc[acc["scene"] == scene]
        expected = ["teacher resnet34", "resnet18 baseline (no KD)", "resnet18 vanilla", "resnet18 sckd"]
        if scene == "Stairs":  # the failed hint run is shown as a failure, after the builtin methods
            expected.insert(3, "resnet18 hint")
        assert list(part["label"]) == expected
        students = part[part["role"] == "student"]
        for metric, flag in (("t_mean", "best_t"), ("r_mean", "best_r")):
            best = students.loc[students[metric].idxmin(), "label"]
            assert part.loc[part[flag], "label"].tolist() == [best]
        assert not part[part["role"] == "teacher"][["best_t", "best_r"]].any(axis=None)
    md = render(load_results(store_dir), load_profiles(store_dir), "markdown")
    best = acc[(acc["scene"] == "Stairs") & acc["best_t"]].iloc[0]
    assert f"**{best['t_mean']:.2f}** [{best['t_ci_lo']:.2f}, {best['t_ci_hi']:.2f}]" in md


def test_failed_and_unfinished_jobs_counted_in_footnote(store_dir):
    """A failed run is a result, counted in the tables (it was left out: survivorship); unfinished ones are not."""
    df = load_results(store_dir)
    counts = not_shown(df)
    assert counts["failed"] == 1 and counts["unfinished"] == 1
    hint = accuracy_table(df).query("method == 'hint'")
    assert set(hint["n_failed"]) == {1} and set(hint["n_seeds"]) == {0}
    note = ("1 run that failed or diverged is counted as a failure (column failed), never left out; see "
            "`kdbench runs --status failed`. 1 unfinished job is not shown; see `kdbench runs`.")
    assert footnote(counts) == note
    assert note in render(df, load_profiles(store_dir), "markdown")
    # Restricted to ShopFacade, the Stairs failures are out of scope and no footnote is written.
    assert footnote(not_shown(load_results(store_dir, scenes="ShopFacade"))) == ""


def test_rerun_of_same_row_and_seed_counts_once(tmp_path):
    runs = tmp_path / "runs"
    with ResultsStore(runs) as store:
        _add_job(store, runs, "old", "student", "Stairs", "baseline", "resnet18", 0, {"median_t": 9.0,
                                                                                    "median_r": 9.0})
        _add_job(store, runs, "new", "student", "Stairs", "baseline", "resnet18", 0, {"median_t": 1.0,
                                                                                    "median_r": 2.0})
    df = load_results(runs)
    acc = accuracy_table(df)
    row = acc[acc["scene"] == "Stairs"].iloc[0]
    assert (row["n_seeds"], row["t_mean"]) == (1, 1.0)
    assert not_shown(df)["superseded"] == 1


def test_estimated_profiles_are_labelled(store_dir):
    md = render(load_results(store_dir), load_profiles(store_dir), "markdown")
    assert "(estimated: published torch2trt figure scaled by GFLOPs)" in md
    assert "≈11.40" in md
    efficiency = md.split("## Efficiency")[1]
    lines = [ln for ln in efficiency.splitlines() if ln.startswith("| resnet")]
    assert [ln.split("|")[3].strip() for ln in lines] == ["torch", "tensorrt-fp16", "torch"]


# formats --------------------------------------------------------------------------------------------------
def test_csv_round_trip(store_dir):
    df, profiles = load_results(store_dir), load_profiles(store_dir)
    got = pd.read_csv(io.StringIO(render(df, profiles, "csv")))
    acc = accuracy_table(df)
    assert got["label"].tolist() == acc["label"].tolist()
    for col in ("n_seeds", "t_mean", "t_std", "t_ci_lo", "t_ci_hi", "r_mean", "r_std", "dt_pct", "dr_pct"):
        np.testing.assert_allclose(got[col].astype(float), acc[col].astype(float), rtol=1e-12)
    assert got["best_t"].astype(bool).tolist() == acc["best_t"].tolist()
    # Mean errors and threshold accuracies are kept: the mean over seeds of what the store holds.
    raw = _raw(store_dir)
    stairs_sckd = got[(got["scene"] == "Stairs") & (got["method"] == "sckd")].iloc[0]
    expected = raw[(raw["scene"] == "Stairs") & (raw["method"] == "sckd")]
    assert stairs_sckd["mean_t"] == pytest.approx(1.3 * expected["median_t"].mean(), rel=1e-12)
    assert stairs_sckd["mean_r"] == pytest.approx(1.2 * expected["median_r"].mean(), rel=1e-12)
    assert stairs_sckd["acc_0.5m_5deg"] == pytest.approx(expected["median_t"].mean() / 4, rel=1e-12)
    assert "efficiency" not in set(got.get("table", []))  # one table per file, no padding columns
    eff = pd.read_csv(io.StringIO(render(df, profiles, "csv", table="efficiency")))
    assert sorted(eff["latency_median_ms"]) == [11.4, 17.0, 30.0]
    assert "t_mean" not in eff
def test_json_round_trip(store_dir):
    df, profiles = load_results(store_dir), load_profiles(store_dir)
    doc = json.loads(render(df, profiles, "json"))
    back = pd.DataFrame(doc["accuracy"])
    acc = accuracy_table(df)
    assert back["label"].tolist() == acc["label"].tolist()
    for col in ("t_mean", "t_std", "r_mean", "r_std", "dt_pct"):
        np.testing.assert_allclose(back[col].astype(float), acc[col].astype(float), rtol=1e-12)
    assert doc["not_shown"]["failed"] == 1
    assert "last-epoch" in doc["caption"]
    assert len(doc["efficiency"]) == 3


def test_terminal_render_has_groups_and_efficiency(store_dir):
    text = render(load_results(store_dir), load_profiles(store_dir), "terminal")
    for part in ("Cambridge Landmarks: ShopFacade", "7-Scenes: Stairs", "Efficiency", "teacher resnet34",
                 "counted as a failure", "1 unfinished job"):
        assert part in text


def test_unknown_format_is_an_error(store_dir):
    with pytest.raises(KdbenchError, match="unknown report format"):
        render(load_results(store_dir), load_profiles(store_dir), "html")


SNAPSHOT = """\
# kdbench leaderboard

Median test error, translation (m) and rotation (deg), of each run's last-epoch model on the test split (no epoch is selected on test data): geometric mean over the finished seeds and, in brackets, its 95% t interval on the log scale (never below zero; left out when n = 1); n = finished seeds; failed: runs of the row that failed or diverged (a result, never left out), of all its runs. Δ: geometric mean change of the error against the no-KD student (baseline) of the same architecture over the matched (scene, seed) pairs, negative is better; the average column's Δ is the scene-level estimate (per scene the mean log ratio over seeds, averaged over scenes). †: a claim at 0.05, Holm-corrected over methods x translation and rotation: in a scene's column a paired t-test over its seeds (exploratory), in the average column the scene-level test over scenes (needs 3 or more scenes). Bold: best student per column. Average: geometric mean over the scenes shown and over the seeds the baseline has on every one of them, only for rows that have all of these.

## 7-Scenes: Stairs

| method                    | Stairs t (m)          | Stairs r (deg)           | Stairs Δ t / r   | n   | failed     |
|---------------------------|-----------------------|--------------------------|------------------|-----|------------|
| teacher resnet34          | 0.20                  | 10.00                    | –                | 1   | 0/1        |
| resnet18 baseline (no KD) | 0.49 [0.04, 6.44]     | **11.83** [1.40, 100.33] | ref.             | 2   | 0/2        |
| resnet18 hint             | failed                | failed                   | –                | 0   | 1/1 (100%) |
| resnet18 sckd             | **0.40** [0.40, 0.40] | 12.96 [4.87, 34.51]      | -18% / +10%      | 2   | 0/2        |

7-Scenes: one scene is too few for a scene-level claim (one about scenes like these, not only these): that needs 3 or more scenes, the seeds of each averaged first. 7-Scenes, on Stairs: with 2 (scene, seed) pairs no claim can be made about which method is better or worse than the resnet18 student alone on them; a paired test needs 2 or more seeds and 3 or more pairs (run with `--seeds 3` or more). resnet18 hint failed or diverged on 1 of 1 run paired with the baseline (failure rate 100%): no pair is left to estimate a change. Fewer pairs for resnet18 hint (not run on every seed the baseline has).

Verdict against the student alone with a region of practical equivalence of ±2% (a change smaller than that does not matter; `--rope`): better / practically equivalent / worse from one-sided paired t-tests on the log error ratios at ±2% (TOST, 0.05 each; the 90% interval below, inside or above the region), else undecided; pooled over the matched (scene, student seed) pairs: a claim on these scenes. MDC: the minimum change the paired t-test detects with 80% power at 0.05 over these pairs at their observed SD of the log ratio (noncentral t). IQM Δ: interquartile mean of the pairs' log ratios as a change, P(better): probability that a run beats a baseline run on the same scene (averaged over scenes; in a crossed design a run is a student seed, the geometric mean over its teachers), each with a 95% stratified bootstrap interval (seeds resampled within scenes, 2000 resamples, seed 0). Variance: share of the row's log-error variance that is the teacher's / the student's (crossed --teacher-seeds x --student-seeds runs, two-way random effects; '–' with one teacher per student seed).

| method        | metric      | pairs   | verdict (±2%)   | MDC 80%   | IQM Δ (95% CI)   | P(better) (95% CI)   | variance teacher / student   |
|---------------|-------------|---------|-----------------|-----------|------------------|----------------------|------------------------------|
| resnet18 sckd | translation | 2       | undecided       | > ±100%   | -18% [-33%, 0%]  | 0.75 [0.50, 1.00]    | –                            |
| resnet18 sckd | rotation    | 2       | undecided       | > ±100%   | +10% [0%, +20%]  | 0.38 [0.00, 1.00]    | –                            |

## Efficiency

Sizes in MiB (2^20 bytes): params × 4 bytes (fp32), and the saved file (torch state_dict, or the .onnx file). GFLOPs: torch FlopCounterMode at batch 1 and the crop, a multiply-add counted as 2 FLOPs (convolutions and matrix products only); empty where measured without torch. Latency: median / p90 in ms per batch over at least 50 timed runs after warm-up; ≈ marks estimates, which are not measurements.

| arch     | device    | backend   | batch x crop   | params (M)   | size (MiB)   | file (MiB)   | GFLOPs   | latency median (ms)   | p90 (ms)   | note       |
|----------|-----------|-----------|----------------|--------------|--------------|--------------|----------|-----------------------|------------|------------|
| resnet18 | CPU (cpu) | torch     | 1 x 224        | 11.71        | 44.7         | 44.7         | 3.63     | 17.00                 | 18.00      | fp32, a\\|b |

_1 run that failed or diverged is counted as a failure (column failed), never left out; see `kdbench runs --status failed`._
"""  # noqa: E501


def test_markdown_snapshot(tmp_path):
    runs = tmp_path / "runs"
    with ResultsStore(runs) as store:
        _add_job(store, runs, "t0", "teacher", "Stairs", "baseline", "resnet34", 0,
                 {"median_t": 0.2, "median_r": 10.0})
        for seed, (bt, br, st, sr) in enumerate([(0.4, 10.0, 0.4, 12.0), (0.6, 14.0, 0.4, 14.0)]):
            _add_job(store, runs, f"b{seed}", "student", "Stairs", "baseline", "resnet18", seed,
                     {"median_t": bt, "median_r": br})
            _add_job(store, runs, f"s{seed}", "student", "Stairs", "sckd", "resnet18", seed,
                     {"median_t": st, "median_r": sr})
        _add_job(store, runs, "f", "student", "Stairs", "hint", "resnet18", 0, None, status="failed")
        store.add_profiles([{"arch": "resnet18", "backend": "torch", "device": "CPU (cpu)", "batch": 1,
                             "crop": 224, "params": 11708999, "size_mb": 44.666, "file_mb": 44.736,
                             "gflops": 3.628, "latency_median_ms": 17.0, "latency_p90_ms": 18.0, "runs": 50,
                             "note": "fp32, a|b", "created": 1.0}])
    md = render(load_results(runs), load_profiles(runs), "markdown")
    assert md == SNAPSHOT


# command line and plots -------------------------------------------------------------------------------------
def test_report_command_writes_file(store_dir, tmp_path, capsys):
    out = tmp_path / "LEADERBOARD.md"
    assert main(["report", "--runs-dir", str(store_dir), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# kdbench leaderboard") and "## Efficiency" in text
    assert main(["report", "--runs-dir", str(store_dir), "--scenes", "Stairs", "--format", "csv"]) == 0
    back = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(back["scene"].dropna()) == {"Stairs", AVERAGE}
    assert main(["report", "--runs-dir", str(store_dir), "--format", "csv", "--table", "efficiency"]) == 0
    eff = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(eff["arch"]) == ["resnet18", "resnet18", "resnet34"] and "t_mean" not in eff
    assert main(["report", "--runs-dir", str(store_dir), "--format", "csv", "--table", "significance"]) == 0
    sig = pd.read_csv(io.StringIO(capsys.readouterr().out))
    # hint's failed run is a pair too (was dropped: survivorship)
    assert set(sig["method"]) == {"vanilla", "sckd", "hint"} and set(sig["metric"]) == {"t", "r"}
    assert set(sig.loc[sig["method"] == "hint", "n_failed"]) == {1}


def test_report_without_store_is_a_clear_error(tmp_path, capsys):
    assert main(["report", "--runs-dir", str(tmp_path / "nowhere")]) == 2
    assert "no results store" in capsys.readouterr().err


def test_plots_are_written(store_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    paths = write_plots(load_results(store_dir), load_profiles(store_dir), out, runs_dir=store_dir)
    names = sorted(p.name for p in paths)
    # One student architecture: no accuracy-vs-latency plot (every student would sit at one x). One scene per
    # group: no critical-difference diagram (its blocks are scenes; seeds of one scene are not independent data
    # sets, the old (scene, seed) blocks were the defect).
    assert names == ["profile-7scenes.png", "profile-cambridge.png"]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_tradeoff_plots_need_two_student_archs_and_list_only_what_is_drawn(store_dir, tmp_path):
    pytest.importorskip("matplotlib")
    from kdbench.reports.leaderboard import efficiency_table
    from kdbench.reports.plots import tradeoff_figure, tradeoff_points

    with ResultsStore(store_dir) as store:
        for scene in SCENES:
            for seed in SEEDS:
                _add_job(store, store_dir, f"{scene}-r34-{seed}", "student", scene, "baseline", "resnet34", seed,
                         {"median_t": 0.5, "median_r": 5.0})
    df, profiles = load_results(store_dir), load_profiles(store_dir)
    names = sorted(p.name for p in write_plots(df, profiles, tmp_path / "plots", runs_dir=store_dir))
    assert "pareto-latency-7scenes.png" in names and "pareto-params-cambridge.png" in names
    points, _ = tradeoff_points(accuracy_table(df), efficiency_table(profiles), "7scenes")
    students = points[points["role"] == "student"]
    fig = tradeoff_figure(students, "latency_median_ms", "latency", "t")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "teachers" not in legend  # none drawn, none listed
    labels = {t.get_text() for t in fig.axes[0].texts}
    # Per student architecture its baseline and its best KD student are labelled; the rest are grey dots.
    best = students[students["method"] != "baseline"].sort_values("t_mean").iloc[0]["label"]
    assert labels == {"resnet18 baseline (no KD)", "resnet34 baseline (no KD)", best}


def test_report_command_plots(store_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "figs"
    assert main(["report", "--runs-dir", str(store_dir), "--scenes", "ShopFacade", "--plots", str(out)]) == 0
    assert (out / "profile-cambridge.png").stat().st_size > 0
    assert not (out / "profile-7scenes.png").exists()


def test_pareto_front():
    xs = [1.0, 2.0, 2.0, 3.0, 4.0]
    ys = [5.0, 3.0, 4.0, 3.5, 1.0]
    assert pareto_front(xs, ys) == [0, 1, 4]


# a store written by real (tiny) runs ------------------------------------------------------------------------
@pytest.mark.slow
def test_real_tiny_runs_give_tables_equal_to_pandas(tiny_data_root, tmp_path):
    import sqlite3

    from kdbench.runners import run_benchmark

    runs = tmp_path / "runs"
    tiny = dict(runs_dir=runs, data_root=tiny_data_root, quiet=True, epochs=1, batch_size=4, load_size=32,
                crop_size=28)
    # 7 jobs: teacher, baseline and vanilla on both scenes with seed 0; a second baseline seed on SynthRoom
    # gives one row with n = 2 (a std) next to rows with n = 1.
    first = run_benchmark("baseline,vanilla", "SynthRoom,SynthStreet", [0], **tiny)
    second = run_benchmark("baseline", "SynthRoom", [1], **tiny)
    assert not first.failed and not second.failed and len(first.done) + len(second.done) == 7
    # Recompute straight from the SQLite file, without any kdbench code.
    with sqlite3.connect(runs / "results.sqlite") as con:
        jobs = pd.read_sql_query("SELECT * FROM jobs WHERE status = 'done'", con)
        metrics = pd.read_sql_query("SELECT * FROM metrics", con)
    wide = jobs.join(metrics.pivot(index="job_id", columns="name", values="value"), on="id")
    # cells are geometric means over seeds (the arithmetic mean was the defect: one estimator, issue 16)
    expected = wide.assign(lt=np.log(wide["median_t"]), lr=np.log(wide["median_r"])).groupby(
        ["scene", "kind", "method"]).agg(n=("seed", "size"), t=("lt", "mean"), ts=("median_t", "std"),
                                         r=("lr", "mean"), rs=("median_r", "std"))
    expected[["t", "r"]] = np.exp(expected[["t", "r"]])
    df = load_results(runs)
    acc = accuracy_table(df)
    got = acc[acc["scene"] != AVERAGE].set_index(["scene", "role", "method"])
    assert len(got) == len(expected) == 2 * 3
    assert expected["n"].tolist().count(2) == 1
    for (scene, kind, method), row in expected.iterrows():
        g = got.loc[(scene, kind, method)]
        assert g["n_seeds"] == row["n"]
        assert [g["t_mean"], g["r_mean"]] == pytest.approx([row["t"], row["r"]], rel=1e-12)
        assert [g["t_std"], g["r_std"]] == pytest.approx([row["ts"], row["rs"]], rel=1e-12, nan_ok=True)
    # vanilla ran on seed 0 only: its change is against the baseline's seed 0 (paired), not its 2-seed mean.
    seed0 = wide[wide["seed"] == 0].set_index(["scene", "kind", "method"])["median_t"]
    van, base = seed0[("SynthRoom", "student", "vanilla")], seed0[("SynthRoom", "student", "baseline")]
    assert got.loc[("SynthRoom", "student", "vanilla"), "dt_pct"] == pytest.approx(100 * (van / base - 1))
    # The average column rests on the seeds the baseline has on both scenes: seed 0, for every row.
    avg = acc[acc["scene"] == AVERAGE].set_index(["role", "method"])
    assert set(avg["seeds"]) == {"0"}
    for (kind, method), t in np.exp(np.log(seed0).groupby(level=["kind", "method"]).mean()).items():
        assert avg.loc[(kind, method), "t_mean"] == pytest.approx(t, rel=1e-12)  # geometric over scenes
    # The medians in the store are the medians of the per-image errors the runs wrote.
    for job in wide.itertuples():
        pred = pd.read_csv(runs / job.run_dir / "predictions.csv")
        assert np.median(pred["err_t"]) == pytest.approx(job.median_t, rel=1e-6)
    md = render(df, load_profiles(runs), "markdown")
    assert "## Synthetic scenes: SynthRoom, SynthStreet" in md and "resnet18 vanilla" in md
    if importlib.util.find_spec("matplotlib"):
        paths = write_plots(df, load_profiles(runs), tmp_path / "plots", runs_dir=runs)
        assert {p.name for p in paths} == {"profile-synthetic.png"}  # no efficiency profiles: no Pareto


def test_presets_are_never_mixed(tmp_path, capsys):
    runs = tmp_path / "runs"
    with ResultsStore(runs) as store:
        for preset, t in (("quick", 1.0), ("paper", 0.2)):
            for method in ("baseline", "sckd"):
                job_id = f"{preset}-{method}"
                _add_job(store, runs, job_id, "student", "Stairs", method, "resnet18", 0,
                         {"median_t": t, "median_r": 10 * t})
                store.upsert_job({"id": job_id, "preset": preset})
    latest = load_results(runs)  # paper finished last: it is shown, quick is counted
    acc = accuracy_table(latest)
    assert latest.attrs["preset"] == "paper"
    assert sorted(acc.loc[acc["scene"] == "Stairs", "t_mean"].round(3)) == [0.2, 0.2]
    assert not_shown(latest)["of other presets"] == 2
    assert "of other presets are not shown" in footnote(not_shown(latest))
    quick = accuracy_table(load_results(runs, preset="quick"))
    assert sorted(quick.loc[quick["scene"] == "Stairs", "t_mean"].round(3)) == [1.0, 1.0]
    assert main(["report", "--runs-dir", str(runs), "--preset", "fast"]) == 2
    assert "no results of preset 'fast'" in capsys.readouterr().err


# paired comparisons and what `kdbench run` prints (issue 12) ------------------------------------------------
def _two_scene_store(runs):
    """The state after a 1-seed run of every method and a 2-seed rerun of baseline,sckd on one scene."""
    values = {("SynthRoom", "baseline", 0): 0.50, ("SynthRoom", "baseline", 1): 0.30,
              ("SynthRoom", "sckd", 0): 0.45, ("SynthRoom", "sckd", 1): 0.33, ("SynthRoom", "rkd", 0): 0.40,
              ("SynthStreet", "baseline", 0): 4.0, ("SynthStreet", "sckd", 0): 3.0, ("SynthStreet", "rkd", 0): 5.0}
    with ResultsStore(runs) as store:
        for (scene, method, seed), t in values.items():
            _add_job(store, runs, f"{scene}-{method}-{seed}", "student", scene, method, "resnet18", seed,
                     {"median_t": t, "median_r": 10 * t})
    return values


def test_change_and_average_use_matched_seeds(tmp_path):
    runs = tmp_path / "runs"
    v = _two_scene_store(runs)
    acc = accuracy_table(load_results(runs)).set_index(["scene", "method"])
    # rkd ran on seed 0 only: its change is against the baseline's seed 0, not the baseline's 2-seed mean.
    assert acc.loc[("SynthRoom", "rkd"), "dt_pct"] == pytest.approx(100 * (0.40 / 0.50 - 1))
    assert acc.loc[("SynthRoom", "rkd"), "n_pairs"] == 1
    # the geometric-mean ratio over the matched pairs (was the ratio of arithmetic means)
    assert acc.loc[("SynthRoom", "sckd"), "dt_pct"] == pytest.approx(100 * (np.sqrt(0.45 / 0.50 * 0.33 / 0.30) - 1))
    assert acc.loc[("SynthRoom", "baseline"), "n_seeds"] == 2
    # The average column rests on the seeds the baseline has on both scenes (seed 0) for every row.
    avg = acc.loc[AVERAGE]
    assert set(avg["n_seeds"]) == {1} and set(avg["seeds"]) == {"0"}
    for method in ("baseline", "sckd", "rkd"):
        expected = np.sqrt(v[("SynthRoom", method, 0)] * v[("SynthStreet", method, 0)])  # geometric over scenes
        assert avg.loc[method, "t_mean"] == pytest.approx(expected)
    # the scene-level estimate: per scene the mean log ratio, averaged over scenes
    assert avg.loc["rkd", "dt_pct"] == pytest.approx(100 * (np.sqrt(0.40 / 0.50 * 5.0 / 4.0) - 1))


def test_run_leaderboard_fits_the_terminal_with_bold(tmp_path, monkeypatch, capsys):
    import re
    import sys

    from kdbench.runners.commands import print_leaderboard

    runs = tmp_path / "runs"
    _two_scene_store(runs)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    print_leaderboard(str(runs), None)
    out = capsys.readouterr().out
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert max(len(line) for line in plain.splitlines()) <= 80
    assert "\x1b[1m" in out  # the best student is really bold, as the caption says
    assert "Bold: best student per column" in " ".join(plain.split())
    assert "resnet18 rkd" in plain and "0.40" in plain
    # Piped, the same call writes markdown, where bold is **...**.
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    print_leaderboard(str(runs), None)
    assert f"**{np.sqrt(0.45 * 0.33):.2f}** [" in capsys.readouterr().out  # sckd's SynthRoom mean, seeds 0, 1


def test_terminal_text_marks_best_with_a_star(store_dir):
    text = render(load_results(store_dir), load_profiles(store_dir), "terminal")
    assert "*: best student per column" in " ".join(text.split()) and "Bold" not in text
    best = accuracy_table(load_results(store_dir)).query("scene == 'Stairs' and best_t").iloc[0]
    assert f"{best['t_mean']:.2f}* " in text


@pytest.mark.slow
def test_run_prints_only_what_it_ran(tiny_data_root, tmp_path, capsys, one_thread):
    runs = tmp_path / "runs"
    tiny = ["--epochs", "1", "--batch-size", "4", "--load-size", "32", "--crop", "28", "--runs-dir", str(runs),
            "--data-root", str(tiny_data_root), "--quiet"]
    assert main(["run", "--seeds", "1", "--methods", "baseline,rkd", "--scenes", "SynthRoom,SynthStreet", *tiny]) == 0
    capsys.readouterr()
    assert main(["run", "--seeds", "1",
                 "--methods", "baseline,vanilla", "--scenes", "SynthRoom", "--seeds", "2", *tiny]) == 0
    printed = capsys.readouterr().out
    table = printed.split("## Synthetic scenes")[1]
    assert "resnet18 vanilla" in table and "resnet18 rkd" not in table and "SynthStreet" not in table
    assert "7-Scenes" not in printed and "on SynthRoom: with 2 (scene, seed) pairs no claim can be made" in printed
    # `kdbench report` shows everything, and rkd's change is still against the baseline's seed 0 alone.
    assert main(["report", "--runs-dir", str(runs), "--format", "json"]) == 0
    acc = pd.DataFrame(json.loads(capsys.readouterr().out)["accuracy"])
    acc = acc[acc["role"] == "student"].set_index(["scene", "method"])
    assert acc.loc[("SynthRoom", "baseline"), "n_seeds"] == 2
    with ResultsStore(runs) as store:
        t = {(j["method"], j["seed"]): store.metrics(j["id"])["median_t"] for j in store.jobs("done")
             if j["scene"] == "SynthRoom" and j["kind"] == "student"}
    assert acc.loc[("SynthRoom", "rkd"), "dt_pct"] == pytest.approx(100 * (t[("rkd", 0)] / t[("baseline", 0)] - 1))
    assert set(acc.loc[AVERAGE, "n_seeds"]) == {1}
