"""Crossed design: --teacher-seeds N x --student-seeds M, the plan, the store, the report's variance shares."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import one_line_error

from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.reports import stats
from kdbench.reports.claims import analyse_claims, matched_log_ratios, students
from kdbench.reports.leaderboard import load_results
from kdbench.reports.store import ResultsStore
from kdbench.reports.variance import decompose, variance_table
from kdbench.runners.benchmark import plan_benchmark
from kdbench.runners.plan import make_plan
from kdbench.scenes import resolve_scenes


def test_crossed_plan_has_n_times_m_students_per_kd_method_sharing_teachers():
    plan = plan_benchmark("baseline,vanilla,sckd", "SynthRoom,SynthStreet", teacher_seeds=2, student_seeds=3)
    for scene in ("SynthRoom", "SynthStreet"):
        jobs = [j for j in plan.jobs if j.cfg.scene == scene]
        teachers = {j.id: j for j in jobs if j.kind == "teacher"}
        assert sorted(j.cfg.seed for j in teachers.values()) == [0, 1]
        base = [j for j in jobs if j.kind == "student" and j.method == "baseline"]
        assert sorted(j.cfg.seed for j in base) == [0, 1, 2] and all(j.teacher_id is None for j in base)
        for method in ("vanilla", "sckd"):
            kd = [j for j in jobs if j.method == method]
            assert len(kd) == 2 * 3
            pairs = {(teachers[j.teacher_id].cfg.seed, j.cfg.seed) for j in kd}
            assert pairs == {(t, s) for t in (0, 1) for s in (0, 1, 2)}
            for j in kd:  # teacher_seed is recorded only where it differs from the student's seed
                t = teachers[j.teacher_id].cfg.seed
                assert j.cfg.teacher_seed == (None if t == j.cfg.seed else t)
                assert j.cfg.teacher_hash == j.teacher_id
        # teachers come before the students that need them
        first_student = min(i for i, j in enumerate(jobs) if j.kind == "student")
        assert max(i for i, j in enumerate(jobs) if j.kind == "teacher") < first_student
    assert len({j.id for j in plan.jobs}) == len(plan.jobs)


def test_same_seed_student_of_the_crossed_design_keeps_its_plain_id():
    specs = resolve_scenes("SynthRoom")
    plain = {j.label: j.id for j in make_plan(["baseline", "vanilla"], specs, [0, 1])}
    crossed = make_plan(["baseline", "vanilla"], specs, [], crossed=([0, 1], [0, 1]))
    same = [j for j in crossed if j.cfg.teacher_seed is None]
    assert len(same) == 2 + 2 + 2  # teachers, baselines, vanilla with its own seed's teacher
    for j in same:
        assert plain[j.label] == j.id
    assert len(crossed) == 2 + 2 + 4


@pytest.mark.parametrize("argv, needle", [
    (["--seeds", "2", "--teacher-seeds", "2"], "--seeds cannot be combined"),
    (["--teacher-seeds", "0"], "--teacher-seeds"),
    (["--student-seeds", "x"], "--student-seeds"),
])
def test_crossed_flags_errors(argv, needle, tmp_path, capsys):
    rc = main(["run", "--dry-run", "--methods", "vanilla", "--runs-dir", str(tmp_path), *argv])
    assert needle in one_line_error(capsys, rc)


def test_library_rejects_seeds_with_crossed_flags():
    with pytest.raises(KdbenchError, match="--seeds cannot be combined"):
        plan_benchmark("vanilla", "SynthRoom", seeds=2, student_seeds=2)


def test_decomposition_recovers_known_components():
    # 40 scenes of 6 teachers x 6 students with teacher SD 0.2, student SD 0.1, residual SD 0.05
    rng = np.random.default_rng(0)
    mats = [rng.normal(0, 0.2, (6, 1)) + rng.normal(0, 0.1, (1, 6)) + rng.normal(0, 0.05, (6, 6)) + s
            for s in rng.normal(0, 3, 40)]
    v = decompose(mats)
    assert v["var_teacher"] == pytest.approx(0.04, rel=0.3)
    assert v["var_student"] == pytest.approx(0.01, rel=0.35)
    assert v["var_residual"] == pytest.approx(0.0025, rel=0.2)


def test_decomposition_sums_of_squares_match_statsmodels():
    smf = pytest.importorskip("statsmodels.formula.api")
    from statsmodels.stats.anova import anova_lm

    rng = np.random.default_rng(1)
    y = rng.normal(size=(3, 4)) + np.arange(3)[:, None]
    frame = pd.DataFrame([(t, s, y[t, s]) for t in range(3) for s in range(4)], columns=["t", "s", "y"])
    table = anova_lm(smf.ols("y ~ C(t) + C(s)", frame).fit())
    v = decompose([y])
    ms_t, ms_s, ms_e = table["mean_sq"].to_numpy()
    assert v["var_teacher"] == pytest.approx(max(0, (ms_t - ms_e) / 4), abs=1e-12)
    assert v["var_student"] == pytest.approx(max(0, (ms_s - ms_e) / 3), abs=1e-12)
    assert v["var_residual"] == pytest.approx(ms_e, abs=1e-12)


def _crossed_store(runs, teacher_effect=0.3, student_effect=0.02):
    """2 scenes, 3 teachers x 4 student seeds of vanilla, baseline on the 4 seeds; teachers matter most."""
    rng = np.random.default_rng(5)
    with ResultsStore(runs) as store:
        for scene, scale in (("SynthRoom", 0.5), ("SynthStreet", 4.0)):
            teach = rng.normal(0, teacher_effect, 3)
            stud = rng.normal(0, student_effect, 4)
            for s in range(4):
                base = scale * np.exp(stud[s])
                _add(store, f"{scene}-b-{s}", scene, "baseline", s, None, base)
                for t in range(3):
                    _add(store, f"{scene}-v-{t}-{s}", scene, "vanilla", s, None if t == s else t,
                         base * 0.9 * np.exp(teach[t] + rng.normal(0, 0.01)))
    return runs


def _add(store, job_id, scene, method, seed, teacher_seed, t):
    cfg = {"teacher_seed": teacher_seed} if teacher_seed is not None else {}
    store.upsert_job({"id": job_id, "kind": "student", "scene": scene, "method": method, "arch": "resnet18",
                      "teacher_arch": "resnet34" if method != "baseline" else None, "seed": seed,
                      "config": json.dumps(cfg), "preset": "quick", "status": "running"})
    store.finish_job(job_id, {"median_t": t, "median_r": 10 * t})


def test_crossed_store_keeps_every_run_and_pairs_by_student_seed(tmp_path):
    runs = _crossed_store(tmp_path)
    with ResultsStore(runs, create=False) as store:  # no run superseded another of the same student seed
        assert len(store.jobs("done")) == 2 * (4 + 12)
    jobs = students(load_results(runs))
    assert len(jobs) == 2 * (4 + 12)
    pairs = matched_log_ratios(load_results(runs))
    t = pairs[pairs["metric"] == "t"]
    assert len(t) == 2 * 4  # one pair per (scene, student seed)
    every = stats.log_ratios(load_results(runs))  # failures included: still one pair per student seed
    assert len(every[every["metric"] == "r"]) == 2 * 4
    comparison = stats.compare_to_baseline(load_results(runs))  # the significance tests pair the same way
    assert set(comparison.loc[comparison["scene"] == "SynthRoom", "n_pairs"]) == {4}
    # each pair is the mean over teachers of log(vanilla) minus log(baseline) of that student seed
    v = jobs[jobs["method"] == "vanilla"]
    b = jobs[jobs["method"] == "baseline"].set_index(["scene", "seed"])["median_t"]
    expected = v.groupby(["scene", "seed"])["median_t"].apply(lambda x: np.log(x).mean())
    expected = expected - np.log(b.loc[expected.index])
    got = t.set_index(["scene", "seed"])["log_ratio"]
    assert np.allclose(got.loc[expected.index].to_numpy(), expected.to_numpy())


def test_report_says_the_teacher_holds_most_of_the_variance(tmp_path, capsys):
    runs = _crossed_store(tmp_path)
    var = variance_table(students(load_results(runs)))
    row = var[(var["method"] == "vanilla") & (var["metric"] == "t")].iloc[0]
    assert row["n_teachers"] == 3 and row["n_students"] == 4 and row["n_scenes"] == 2
    assert row["teacher_pct"] > 80 and row["teacher_pct"] + row["student_pct"] == pytest.approx(100)
    assert main(["report", "--runs-dir", str(runs), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    got = [r for r in doc["claims"] if r["metric"] == "t"][0]
    assert got["teacher_pct"] == pytest.approx(row["teacher_pct"])
    assert main(["report", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert f"{row['teacher_pct']:.0f}% / {row['student_pct']:.0f}%" in out


def test_one_teacher_seed_says_it_cannot_split(tmp_path):
    runs = tmp_path
    with ResultsStore(runs) as store:
        for s in range(3):
            _add(store, f"b{s}", "SynthRoom", "baseline", s, None, 1.0 + 0.1 * s)
            _add(store, f"v{s}", "SynthRoom", "vanilla", s, None, 0.9 + 0.1 * s)
    claims = analyse_claims(load_results(runs))
    assert claims.variance["teacher_pct"].isna().all()
    assert claims.variance["note"].str.contains("one teacher seed per student seed").all()


def test_tiny_crossed_run_gives_a_variance_decomposition(tiny_data_root, tmp_path, one_thread, capsys):
    runs = tmp_path / "runs"
    # resnet18 teachers and no baseline: 6 jobs of 1 epoch at 28 px
    rc = main(["run", "--methods", "vanilla", "--scenes", "SynthRoom", "--teacher-seeds", "2", "--student-seeds", "2",
               "--teacher-arch", "resnet18", "--epochs", "1", "--batch-size", "4", "--load-size", "32", "--crop", "28",
               "--runs-dir", str(runs), "--data-root", str(tiny_data_root), "--quiet", "--jobs-per-gpu", "1"])
    assert rc == 0, capsys.readouterr()
    with ResultsStore(runs, create=False) as store:
        rows = store.jobs("done")
    assert sorted((r["kind"], r["method"]) for r in rows).count(("student", "vanilla")) == 4
    assert len(rows) == 2 + 4
    var = analyse_claims(load_results(runs)).variance
    row = var[(var["method"] == "vanilla") & (var["metric"] == "t")].iloc[0]
    assert row["n_teachers"] == 2 and row["n_students"] == 2 and row["n_scenes"] == 1
    assert row["note"] == "" or row["note"] == "no variance at all"
    assert np.isfinite(row["var_residual"])


def test_crossed_variant_rows_record_their_label_for_rebuild_store():
    jobs = make_plan(["vanilla:alpha=0.7", "baseline"], resolve_scenes("SynthRoom"), [], crossed=([0, 1], [0]))
    kd = [j for j in jobs if j.kind == "student" and j.cfg.method == "vanilla"]
    assert len(kd) == 2 and all(j.cfg.method_label == j.method == "vanilla:alpha=0.7" for j in kd)


def test_crossed_flags_with_a_planner_are_refused_not_ignored():
    with pytest.raises(KdbenchError, match="cannot be combined with tuned rows"):
        plan_benchmark("vanilla", "SynthRoom", teacher_seeds=2, planner=lambda *a, **k: [])


def test_leaderboard_cell_counts_student_seeds_not_teacher_student_runs(tmp_path, capsys):
    from scipy import stats as sps

    from kdbench.reports.leaderboard import accuracy_table

    rng = np.random.default_rng(11)
    errors = {}  # (teacher, student seed) -> vanilla median_t
    with ResultsStore(tmp_path) as store:
        for s in range(3):
            _add(store, f"b{s}", "SynthRoom", "baseline", s, None, 1.0 + 0.1 * s)
            for t in range(2):
                errors[t, s] = float(rng.uniform(0.5, 1.5))
                _add(store, f"v{t}{s}", "SynthRoom", "vanilla", s, None if t == s else t, errors[t, s])
    acc = accuracy_table(load_results(tmp_path))
    cell = acc[(acc["method"] == "vanilla") & (acc["scene"] == "SynthRoom")].iloc[0]
    assert cell["n_seeds"] == 3 and cell["seeds"] == "0,1,2" and cell["n_runs"] == 6
    per_seed = np.array([np.mean([np.log(errors[t, s]) for t in range(2)]) for s in range(3)])  # log of the gmeans
    half = sps.t.ppf(0.975, 2) * per_seed.std(ddof=1) / np.sqrt(3)
    assert cell["t_mean"] == pytest.approx(np.exp(per_seed.mean()))
    assert cell["t_ci_lo"] == pytest.approx(np.exp(per_seed.mean() - half))
    assert cell["t_ci_hi"] == pytest.approx(np.exp(per_seed.mean() + half))
    assert cell["r_mean"] == pytest.approx(10 * np.exp(per_seed.mean()))
    assert main(["report", "--runs-dir", str(tmp_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "Crossed design" in doc["footnote"] and "2 teachers per student seed" in doc["footnote"]
    # the bootstrap IQM and P(better) count student seeds too: one value per seed, the gmean over its teachers
    from kdbench.reports.bootstrap import prob_improvement

    gmeans = np.exp(per_seed)
    iqm = [r for r in doc["bootstrap_errors"] if r["method"] == "vanilla" and r["metric"] == "t"][0]
    assert iqm["n_runs"] == 3 and iqm["iqm"] == pytest.approx(sps.trim_mean(gmeans, 0.25))
    claim = [r for r in doc["claims"] if r["method"] == "vanilla" and r["metric"] == "t"][0]
    assert claim["p_improvement"] == pytest.approx(prob_improvement([gmeans], [np.array([1.0, 1.1, 1.2])]))
    assert main(["report", "--runs-dir", str(tmp_path), "--format", "markdown"]) == 0
    assert "n counts student seeds" in capsys.readouterr().out


def test_plain_design_footnote_says_nothing_of_a_crossed_design(tmp_path, capsys):
    with ResultsStore(tmp_path) as store:
        for s in range(3):
            _add(store, f"b{s}", "SynthRoom", "baseline", s, None, 1.0 + 0.1 * s)
            _add(store, f"v{s}", "SynthRoom", "vanilla", s, None, 0.9 + 0.1 * s)
    assert main(["report", "--runs-dir", str(tmp_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "Crossed design" not in doc["footnote"]
    cell = [r for r in doc["accuracy"] if r["method"] == "vanilla" and r["scene"] == "SynthRoom"][0]
    assert cell["n_seeds"] == 3 and cell["n_runs"] == 3


def test_claims_bootstrap_leaves_out_a_student_seed_whose_run_with_one_teacher_failed(tmp_path, capsys):
    with ResultsStore(tmp_path) as store:
        for s in range(3):
            _add(store, f"b{s}", "SynthRoom", "baseline", s, None, 1.0 + 0.1 * s)
            for t in range(2):
                _add(store, f"v{t}{s}", "SynthRoom", "vanilla", s, None if t == s else t, 0.7 + 0.05 * t + 0.01 * s)
        store.upsert_job({**store.get_job("v10"), "id": "v10f", "status": "failed"})  # seed 0 with teacher 1
        store.record_failure("v10f", "RuntimeError: loss is nan")
    assert main(["report", "--runs-dir", str(tmp_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    cell = [r for r in doc["accuracy"] if r["method"] == "vanilla" and r["scene"] == "SynthRoom"][0]
    iqm = [r for r in doc["bootstrap_errors"] if r["method"] == "vanilla" and r["metric"] == "t"][0]
    assert cell["n_seeds"] == 2 and iqm["n_runs"] == 2  # seed 0 failed: never its surviving teacher's run alone
    gmeans = [np.sqrt((0.7 + 0.01 * s) * (0.75 + 0.01 * s)) for s in (1, 2)]
    from scipy import stats as sps

    assert iqm["iqm"] == pytest.approx(sps.trim_mean(gmeans, 0.25))
