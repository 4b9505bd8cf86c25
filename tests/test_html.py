"""`kdbench report --format html`: a self-contained page, checked in a real browser (headless Chromium).

The browser tests open site/index.html from disk in Debian's chromium driven by Playwright, read the tables,
compare their numbers with the results store, click headers to sort, and take a screenshot. They skip where
no browser or no playwright is installed, unless KDBENCH_REQUIRE_BROWSER=1 (.ci/run sets it), which turns
the skip into a failure so that CI cannot pass without running them.
"""

from __future__ import annotations

import os
import re
import sqlite3
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdbench.cli import main
from kdbench.interference import MARK
from kdbench.reports.html import sort_key
from kdbench.reports.store import ResultsStore

SCENES = ("SynthRoom", "SynthStreet")
ROWS = (("teacher", "resnet34", "baseline"), ("student", "resnet18", "baseline"),
        ("student", "resnet18", "vanilla"), ("student", "resnet18", "sckd"))
SEEDS = (0, 1, 2)
CHROMIUM = os.environ.get("KDBENCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ENVS = ({"kdbench_version": "0.1.0", "git_commit": "1234abcd5678", "python": "3.11.2", "torch": "2.15.0+cpu",
         "torchvision": "0.30.0", "cuda": None, "device": "Test CPU (cpu)", "hostname": "bench-a",
         "platform": "Linux-6.1"},
        {"kdbench_version": "0.1.0", "git_commit": "1234abcd5678", "python": "3.11.2", "torch": "2.15.0+cu128",
         "torchvision": "0.30.0", "cuda": "12.8", "device": "NVIDIA H100 (cuda)", "hostname": "bench-b",
         "platform": "Linux-6.8"})


def _label(kind: str, arch: str, method: str) -> str:
    if kind == "teacher":
        return f"teacher {arch}"
    return f"{arch} baseline (no KD)" if method == "baseline" else f"{arch} {method}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """2 synthetic scenes x (teacher, 3 students) x 3 seeds on two environments, profiles (one disturbed)."""
    runs = tmp_path_factory.mktemp("html") / "runs"
    rng = np.random.default_rng(3)
    with ResultsStore(runs) as store:
        env_ids = [store.add_environment(e) for e in ENVS]
        for scene in SCENES:
            scale = 0.5 if scene == "SynthRoom" else 4.0
            for seed in SEEDS:
                for kind, arch, method in ROWS:
                    job_id = f"{scene}-{kind}-{method}-{seed}"
                    run_dir = f"{scene}/{job_id}"
                    t, r = float(scale * rng.uniform(0.6, 1.4)), float(rng.uniform(5.0, 20.0))
                    store.upsert_job({"id": job_id, "kind": kind, "scene": scene, "method": method, "arch": arch,
                                      "teacher_arch": "resnet34" if kind == "student" else None, "seed": seed,
                                      "preset": "quick", "config": "{}", "status": "running", "run_dir": run_dir,
                                      "env_id": env_ids[seed % 2]})
                    store.finish_job(job_id, {"median_t": t, "median_r": r, "mean_t": 1.2 * t, "mean_r": 1.1 * r})
                    err = np.random.default_rng(zlib.crc32(job_id.encode()))
                    (runs / run_dir).mkdir(parents=True)
                    pd.DataFrame({"err_t": err.gamma(2.0, t / 2, 16), "err_r": err.gamma(2.0, r / 2, 16)}).to_csv(
                        runs / run_dir / "predictions.csv", index=False)
        store.upsert_job({"id": "failed-hint", "kind": "student", "scene": "SynthRoom", "method": "hint",
                          "arch": "resnet18", "seed": 0, "preset": "quick", "config": "{}", "status": "failed",
                          "error": "boom"})
        common = {"backend": "torch", "device": "Test CPU (cpu)", "batch": 1, "crop": 224, "runs": 50}
        store.add_profiles([
            {**common, "arch": "resnet18", "params": 11708999, "size_mb": 44.67, "file_mb": 44.74, "gflops": 3.63,
             "latency_median_ms": 17.0, "latency_p90_ms": 17.6, "note": "fp32"},
            {**common, "arch": "resnet34", "params": 21817159, "size_mb": 83.23, "file_mb": 83.3, "gflops": 7.33,
             "latency_median_ms": 195.8, "latency_p90_ms": 939.9,
             "note": f"{MARK} (p90 939.9 ms is 4.8x the median 195.8 ms (limit 1.5x)), kept with --force; fp32"},
        ])
    return runs


@pytest.fixture(scope="module")
def site(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    assert main(["report", "--runs-dir", str(runs), "--format", "html", "--out", str(out)]) == 0
    return out / "index.html"


def store_means(runs: Path) -> dict[tuple[str, str], tuple[float, float]]:
    """(label, scene) -> geometric mean over seeds of median_t and median_r, straight from the SQLite file."""
    with sqlite3.connect(runs / "results.sqlite") as conn:
        rows = pd.read_sql_query("SELECT j.scene, j.kind, j.arch, j.method, t.value AS t, r.value AS r FROM jobs j "
                                 "JOIN metrics t ON t.job_id = j.id AND t.name = 'median_t' "
                                 "JOIN metrics r ON r.job_id = j.id AND r.name = 'median_r' "
                                 "WHERE j.status = 'done'", conn)
    means = np.exp(rows.assign(t=np.log(rows["t"]), r=np.log(rows["r"])).groupby(
        ["scene", "kind", "arch", "method"])[["t", "r"]].mean())
    return {(_label(kind, arch, method), scene): (x.t, x.r) for (scene, kind, arch, method), x in means.iterrows()}


def column(headers: list[str], prefix: str) -> int:
    matches = [i for i, h in enumerate(headers) if h.startswith(prefix)]
    assert matches, f"no column {prefix!r} in {headers}"
    return matches[0]


def cell_means(headers: list[str], row: list[str], scene: str) -> tuple[float, float]:
    """The t and r means a leaderboard row shows for a scene."""
    return sort_key(row[column(headers, f"{scene} t (m)")]), sort_key(row[column(headers, f"{scene} r (deg)")])


# without a browser -------------------------------------------------------------------------------------------
def test_page_is_self_contained(site, capsys):
    text = site.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    # Nothing is fetched: no external scripts, styles, images or fonts.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<link" not in text and "<script src" not in text
    # Every figure of `report --plots`: the group's performance profile, 2 critical-difference diagrams (t, r);
    # no accuracy-vs-cost plots with one student architecture.
    assert text.count('src="data:image/png;base64,') == 3
    assert os.stat(site).st_mode & 0o777 == 0o644


def test_report_html_prints_the_path(runs, tmp_path, capsys):
    assert main(["report", "--runs-dir", str(runs), "--format", "html", "--out", str(tmp_path / "s")]) == 0
    assert f"wrote {tmp_path / 's' / 'index.html'}" in capsys.readouterr().err


def test_out_that_is_a_file_is_an_error(runs, tmp_path, capsys):
    (tmp_path / "page.html").write_text("keep me")
    assert main(["report", "--runs-dir", str(runs), "--format", "html", "--out", str(tmp_path / "page.html")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert (tmp_path / "page.html").read_text() == "keep me"


def test_names_are_escaped(tmp_path):
    runs = tmp_path / "runs"
    with ResultsStore(runs) as store:
        store.upsert_job({"id": "x", "kind": "student", "scene": "SynthRoom", "method": "<img src=x onerror=1>",
                          "arch": "resnet18", "seed": 0, "config": "{}", "status": "running", "run_dir": "x"})
        store.finish_job("x", {"median_t": 1.0, "median_r": 2.0})
    assert main(["report", "--runs-dir", str(runs), "--format", "html", "--out", str(tmp_path / "s")]) == 0
    text = (tmp_path / "s" / "index.html").read_text(encoding="utf-8")
    assert "<img src=x" not in text and "&lt;img src=x onerror=1&gt;" in text


def test_empty_store_says_so(tmp_path):
    runs = tmp_path / "runs"
    with ResultsStore(runs) as store:
        store.upsert_job({"id": "f", "kind": "student", "scene": "SynthRoom", "method": "sckd", "arch": "resnet18",
                          "seed": 0, "config": "{}", "status": "failed", "error": "boom"})
    assert main(["report", "--runs-dir", str(runs), "--format", "html", "--out", str(tmp_path / "s")]) == 0
    text = (tmp_path / "s" / "index.html").read_text(encoding="utf-8")
    # a failed run is a result: its row says so (it was left out, and the page said there was nothing)
    assert "<td>failed</td>" in text and "1/1 (100%)" in text
    assert "1 run that failed or diverged is counted as a failure" in text


# in a browser ----------------------------------------------------------------------------------------------
def _unavailable(reason: str):
    if os.environ.get("KDBENCH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, but KDBENCH_REQUIRE_BROWSER=1 requires the browser tests to run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set KDBENCH_CHROMIUM)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, site):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(site.as_uri())
    yield page
    # The page opened from disk fetched nothing else (images are inline data: URLs).
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    page.close()


def _table(page, table_id: str) -> tuple[list[str], list[list[str]]]:
    headers = page.eval_on_selector_all(f"#{table_id} thead th", "ths => ths.map(th => th.textContent)")
    rows = page.eval_on_selector_all(f"#{table_id} tbody tr",
                                     "trs => trs.map(tr => Array.from(tr.cells).map(td => td.textContent))")
    return headers, rows


def test_browser_tables_match_the_store(page, runs):
    headers, rows = _table(page, "leaderboard-synthetic")
    means = store_means(runs)
    assert {row[0] for row in rows} == {label for label, _ in means} | {"resnet18 hint"}
    hint = next(row for row in rows if row[0] == "resnet18 hint")  # its one run failed: shown, not left out
    assert hint[column(headers, "SynthRoom t (m)")] == "failed" and hint[headers.index("failed")] == "1/1 (100%)"
    for row in rows:
        for scene in SCENES:
            if row[0] == "resnet18 hint":
                continue
            t, r = cell_means(headers, row, scene)
            want_t, want_r = means[(row[0], scene)]
            assert (t, r) == (round(want_t, 2), round(want_r, 2)), (row[0], scene)
    eff_headers, eff = _table(page, "efficiency")
    lat = column(eff_headers, "latency median")
    assert {(r[0], sort_key(r[lat])) for r in eff} == {("resnet18", 17.0), ("resnet34", 195.8)}
    # The forced, disturbed measurement is highlighted; the quiet one is not.
    flagged = page.eval_on_selector_all("#efficiency tr.disturbed", "trs => trs.map(tr => tr.cells[0].textContent)")
    assert flagged == ["resnet34"]


def test_browser_sorts_on_header_click(page):
    headers, rows = _table(page, "leaderboard-synthetic")
    col = column(headers, "SynthStreet t (m)")
    page.click(f"#leaderboard-synthetic thead th:nth-child({col + 1})")
    _, asc = _table(page, "leaderboard-synthetic")
    values = [sort_key(r[col]) for r in asc]
    assert values[-1] is None  # hint has no SynthStreet number: last either way
    values = values[:-1]
    assert values == sorted(values) and sorted(map(tuple, asc)) == sorted(map(tuple, rows))
    assert page.get_attribute(f"#leaderboard-synthetic thead th:nth-child({col + 1})", "aria-sort") == "ascending"
    page.click(f"#leaderboard-synthetic thead th:nth-child({col + 1})")
    _, desc = _table(page, "leaderboard-synthetic")
    assert [sort_key(r[col]) for r in desc][:-1] == sorted(values, reverse=True)
    page.click("#leaderboard-synthetic thead th:nth-child(1)")  # text column: alphabetical
    _, by_name = _table(page, "leaderboard-synthetic")
    assert [r[0] for r in by_name] == sorted(r[0] for r in rows)


def test_browser_shows_significance(page, runs):
    from kdbench.reports.leaderboard import load_results
    from kdbench.reports.stats import analyse

    sig = analyse(load_results(runs))
    shown = page.inner_text("#group-synthetic p.sig")
    assert shown == " ".join(sig.sentences["synthetic"]) and "Holm" in shown
    headers, rows = _table(page, "significance-synthetic")
    pairs = {r[0]: (r[headers.index("pairs")], r[headers.index("failed")]) for r in rows}
    # 2 scenes x 3 seeds, matched with the baseline; hint's failed run is a pair too
    assert pairs == {"resnet18 vanilla": ("6", "0/6"), "resnet18 sckd": ("6", "0/6"),
                     "resnet18 hint": ("1", "1/1 (100%)")}


def test_browser_shows_plots_and_environment(page, runs):
    sizes = page.eval_on_selector_all("#plots img", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
    assert len(sizes) == 3 and all(w > 300 and h > 200 for w, h in sizes)  # decoded, not broken images
    captions = page.eval_on_selector_all("#plots figcaption", "cs => cs.map(c => c.textContent)")
    assert captions == ["Synthetic scenes: performance profiles of the runs' errors, with 95% bootstrap bands",
                        "Synthetic scenes: critical-difference diagram of the mean ranks (translation)",
                        "Synthetic scenes: critical-difference diagram of the mean ranks (rotation)"]
    headers, rows = _table(page, "environments")
    env = [dict(zip(headers, row)) for row in rows]
    assert [(e["torch"], e["device"], e["git commit"], e["jobs"]) for e in env] == [
        ("2.15.0+cpu", "Test CPU (cpu)", "1234abcd5678", "16"), ("2.15.0+cu128", "NVIDIA H100 (cuda)", "1234abcd5678",
                                                                 "8")]
    assert "1 run that failed or diverged is counted as a failure" in page.inner_text("body")


def test_browser_screenshot(page, tmp_path):
    from PIL import Image

    path = tmp_path / "index.png"
    page.screenshot(path=str(path), full_page=True)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width == 1400 and im.height > 900
        # Not a blank page: the screenshot holds text and tables (many distinct colours, dark pixels).
        grey = np.asarray(im.convert("L"))
        assert (grey < 100).mean() > 0.005
    shots = os.environ.get("KDBENCH_SCREENSHOT_DIR")
    if shots:  # keep it for a person to look at (CI artefact)
        Path(shots).mkdir(parents=True, exist_ok=True)
        Path(shots, "index.png").write_bytes(path.read_bytes())
