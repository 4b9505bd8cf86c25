"""`kdbench report --format html --out site/`: the leaderboard as one self-contained static page.

index.html holds everything inline (CSS, a small sorting script, plots as base64 PNG), so it opens from disk,
offline, and can be mailed or published as it is. Its numbers are the markdown leaderboard's: the tables are
`leaderboard.display_table` / `efficiency_display` strings; only the markup differs. Every column sorts on a
click of its header: by the cell's leading number where the column has numbers (cells without one last),
else alphabetically. Each group's significance statements and tests against the student alone come from
kdbench.reports.stats, as in the markdown report. The environment section lists the store's environments
of the runs shown (versions, git commit, device, host); the efficiency table names the device of every
latency.
"""

from __future__ import annotations

import base64
import html
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from kdbench.fileio import write_text_atomic
from kdbench.reports import leaderboard as lb
from kdbench.reports import stats, tuning
from kdbench.reports.claims import Claims, claims_caption, claims_display
from kdbench.reports.stats import Significance
from kdbench.reports.store import STORE_NAME

INDEX = "index.html"
_NUMBER = re.compile(r"^[≈~]?\s*([-+]?\d+(?:\.\d+)?)")
ENV_COLUMNS = {"jobs": "jobs", "kdbench_version": "kdbench", "git_commit": "git commit", "python": "Python",
               "torch": "torch", "torchvision": "torchvision", "cuda": "CUDA", "device": "device",
               "hostname": "host", "platform": "platform"}
PLOT_TITLES = (("profile-", "performance profiles of the runs' errors, with 95% bootstrap bands"),
               ("pareto-latency-", "accuracy against latency"), ("pareto-params-", "accuracy against parameters"),
               ("front-", "accuracy-latency front per device: median t and r, one point per (arch, method)"),
               *tuning.PLOT_TITLES)

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; padding: 1.5em;
       max-width: 1400px; color: #1d1d1f; background: #fff; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta, .caption, .footnote { color: #555; max-width: 110ch; }
.footnote { font-style: italic; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d0d0; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
thead th { background: #f0f2f5; cursor: pointer; user-select: none; white-space: nowrap; }
thead th:hover { background: #e2e6ec; }
thead th::after { content: " ↕"; color: #999; }
thead th[aria-sort="ascending"]::after { content: " ▲"; color: #1d1d1f; }
thead th[aria-sort="descending"]::after { content: " ▼"; color: #1d1d1f; }
tbody tr:nth-child(even) { background: #fafafa; }
td.note { max-width: 60ch; font-size: 12px; color: #444; }
tr.disturbed td { background: #fff3cd; }
tr.estimated td { color: #666; font-style: italic; }
.sig { background: #eef6ee; border-left: 4px solid #3a7d44; padding: 0.5em 0.8em; max-width: 110ch; }
.wide { overflow-x: auto; max-width: 100%; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 12px; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""

# Sort on a header click; a second click reverses. Numeric where the column has numbers (data-sort), rows
# without a number go last either way; text otherwise. Array.prototype.sort is stable.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.querySelectorAll("thead th");
  heads.forEach(function (th, col) {
    th.tabIndex = 0;
    var run = function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var cell = function (r) { return r.cells[col]; };
      var numeric = rows.some(function (r) { return cell(r).dataset.sort !== undefined; });
      rows.sort(function (a, b) {
        if (numeric) {
          var x = cell(a).dataset.sort, y = cell(b).dataset.sort;
          if (x === undefined || y === undefined) { return (x === undefined) - (y === undefined); }
          return asc ? x - y : y - x;
        }
        var s = cell(a).textContent.localeCompare(cell(b).textContent);
        return asc ? s : -s;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    };
    th.addEventListener("click", run);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") { run(); } });
  });
});
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def sort_key(text: str) -> float | None:
    """The leading number of a display cell ('0.47 ± 0.02 / 9.78' -> 0.47, '+12%' -> 12), else None."""
    match = _NUMBER.match(str(text).strip())
    return float(match.group(1)) if match else None


def _cell_html(text: str) -> str:
    """A markdown display cell as HTML: escaped, **best** marks as <strong>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", _esc(text))


def table_html(table: pd.DataFrame, table_id: str, row_classes: list[str] | None = None,
               cell_classes: dict[str, str] | None = None) -> str:
    """A sortable HTML table of display strings; numeric cells carry their leading number in data-sort."""
    cell_classes = cell_classes or {}
    head = "".join(f'<th scope="col">{_esc(c)}</th>' for c in table.columns)
    rows = []
    for i, row in enumerate(table.itertuples(index=False)):
        cells = []
        for col, value in zip(table.columns, row):
            key = sort_key(str(value).replace("**", ""))
            attrs = f' data-sort="{key!r}"' if key is not None else ""
            if col in cell_classes:
                attrs += f' class="{cell_classes[col]}"'
            cells.append(f"<td{attrs}>{_cell_html(value)}</td>")
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    # In a scrolling box: a leaderboard with many scenes must not widen the page.
    return (f'<div class="wide"><table class="sortable" id="{_esc(table_id)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


# sections ---------------------------------------------------------------------------------------------------
def _accuracy_sections(acc: pd.DataFrame, sig: Significance, claims: Claims | None = None) -> list[str]:
    out = []
    for group in dict.fromkeys(acc["group"]):
        heading = lb._group_heading(acc, group)
        out.append(f'<section id="group-{_esc(group)}"><h2>{_esc(heading)}</h2>')
        out.append(table_html(lb.display_table(acc, group, "markdown"), f"leaderboard-{group}"))
        out += _significance(sig, group)
        if claims is not None and (claims.table()["group"] == group).any():
            out.append(f'<p class="caption">{_esc(claims_caption(claims))}</p>')
            out.append(table_html(claims_display(claims, group), f"claims-{group}"))
        out.append("</section>")
    return out


def _significance(sig: Significance, group: str) -> list[str]:
    """The group's significance statements (kdbench.reports.stats) and, where tests ran, its table."""
    out = []
    if sig.sentences.get(group):
        out.append(f'<p class="sig">{_esc(" ".join(sig.sentences[group]))}</p>')
    tested = sig.comparison.loc[sig.comparison["group"] == group, "tested"]
    if tested.any():
        out.append(f'<p class="caption">{_esc(lb.SIGNIFICANCE_CAPTION)}</p>')
        out.append(table_html(lb.significance_display(sig.comparison, group), f"significance-{group}"))
    return out


def _efficiency_section(eff: pd.DataFrame) -> list[str]:
    from kdbench.interference import MARK

    if eff.empty:
        return ['<section id="efficiency"><h2>Efficiency</h2><p class="meta">No profile rows in the store: '
                "run <code>kdbench profile</code>.</p></section>"]
    table = lb.efficiency_display(eff)
    classes = ["disturbed" if MARK in str(note) else ("estimated" if est else "")
               for note, est in zip(eff["note"], eff["estimated"])]
    out = ['<section id="efficiency"><h2>Efficiency</h2>', f'<p class="caption">{_esc(lb.EFFICIENCY_CAPTION)}</p>',
           table_html(table, "efficiency", classes, {"note": "note"})]
    if "disturbed" in classes:
        out.append(f'<p class="footnote">Highlighted rows: {_esc(MARK)}, measured while other work disturbed the '
                   f"machine and kept with <code>kdbench profile --force</code>; do not compare them.</p>")
    out.append("</section>")
    return out


def environments(runs_dir: str | os.PathLike, job_ids: list[str]) -> pd.DataFrame:
    """The store's environments of the given jobs, with how many of those jobs ran in each."""
    if not job_ids:
        return pd.DataFrame(columns=list(ENV_COLUMNS))
    marks = ",".join("?" * len(job_ids))
    with lb.open_store(runs_dir) as store:
        env = pd.read_sql_query(f"SELECT e.*, COUNT(j.id) AS jobs FROM jobs j JOIN environments e ON e.id = "
                                f"j.env_id WHERE j.id IN ({marks}) GROUP BY e.id ORDER BY e.id", store.conn,
                                params=job_ids)
    return env[list(ENV_COLUMNS)]


def _environment_section(env: pd.DataFrame, n_jobs: int) -> list[str]:
    out = ['<section id="environment"><h2>Environment of the runs</h2>']
    if env.empty:
        out.append('<p class="meta">No environment recorded for the runs shown.</p>')
    else:
        recorded = int(env["jobs"].sum())
        missing = f" ({n_jobs - recorded} without a recorded environment)" if recorded < n_jobs else ""
        out.append(f'<p class="meta">Where the {n_jobs} runs shown were trained and evaluated{missing}; the '
                   f"efficiency table names the device of each latency.</p>")
        table = env.astype(object).where(env.notna(), "–").astype(str).rename(columns=ENV_COLUMNS)
        out.append(table_html(table, "environments"))
    out.append("</section>")
    return out


def plot_images(df: pd.DataFrame, profiles: pd.DataFrame, runs_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """(caption, base64 PNG) of every figure `plots.write_plots` draws; [] without matplotlib."""
    from kdbench.errors import KdbenchError
    from kdbench.reports.plots import write_plots

    with tempfile.TemporaryDirectory() as tmp:
        try:
            paths = write_plots(df, profiles, tmp, runs_dir=runs_dir)
        except KdbenchError as exc:  # matplotlib missing: the page says so instead of failing
            print(f"kdbench: html: no plots ({exc})", file=sys.stderr)
            return []
        return [(plot_caption(p.stem), base64.b64encode(p.read_bytes()).decode("ascii")) for p in paths]


def plot_caption(stem: str) -> str:
    """'profile-synthetic' -> 'Synthetic scenes: performance profiles ...'."""
    if stem.startswith("cd-") and stem.endswith(tuple(f"-{m}" for m in stats.METRICS)):
        subject, metric = stem[3:].rsplit("-", 1)  # cd-<group>[-<arch>]-<metric>
        group, _, arch = subject.partition("-")
        what = stats.METRICS[metric][1] + (f", {arch} students" if arch else "")
        return f"{lb.GROUP_TITLES.get(group, group)}: critical-difference diagram of the mean ranks ({what})"
    for prefix, title in PLOT_TITLES:
        if stem.startswith(prefix):
            subject, _, rest = stem[len(prefix):].partition("-")  # <prefix><group>[-<arch> or -<device>]
            device = " ".join(rest.replace("_", " ").split())  # front-<group>-<device slug>
            what = {"profile-": f" ({rest} students)", "front-": f" ({device})"}.get(prefix, "")
            return f"{lb.GROUP_TITLES.get(subject, subject)}{what if rest else ''}: {title}"
    return stem


def _plots_section(images: list[tuple[str, str]] | None) -> list[str]:
    out = ['<section id="plots"><h2>Plots</h2>']
    if images is None:
        out.append('<p class="meta">Plots need matplotlib: <code>pip install "kdbench[plots]"</code>.</p>')
    elif not images:
        out.append('<p class="meta">No plots: no finished runs with predictions or profiles to plot.</p>')
    for caption, data in images or []:
        out.append(f'<figure><img alt="{_esc(caption)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{_esc(caption)}</figcaption></figure>")
    out.append("</section>")
    return out


# the page ---------------------------------------------------------------------------------------------------
def render_html(df: pd.DataFrame, profiles: pd.DataFrame, runs_dir: str | os.PathLike,
                images: list[tuple[str, str]] | None = None) -> str:
    """The whole page: leaderboards, significance, efficiency, plots, environment, footnote."""
    sig, acc, counts, eff, claims = lb.analysed(df, profiles)
    shown = lb.shown_jobs(df)
    preset = df.attrs.get("preset") or ", ".join(sorted(str(p) for p in shown["preset"].dropna().unique()))
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    store = Path(runs_dir) / STORE_NAME
    groups = list(dict.fromkeys(acc["group"]))
    nav = "".join(f'<a href="#group-{_esc(g)}">{_esc(lb.GROUP_TITLES.get(g, g))}</a>' for g in groups)
    nav += '<a href="#efficiency">Efficiency</a><a href="#plots">Plots</a><a href="#environment">Environment</a>'
    body = ["<h1>kdbench leaderboard</h1>",
            f'<p class="meta">{len(shown)} finished runs from <code>{_esc(store)}</code>'
            f"{f', preset {_esc(preset)}' if preset else ''}; generated {stamp}. Click a column header to sort."
            "</p>", f"<nav>{nav}</nav>",
            f'<p class="caption">{_esc(lb.CAPTION if not acc.empty else "No finished runs to show.")}</p>']
    body += _accuracy_sections(acc, sig, claims)
    body += tuning.tuned_section_html(runs_dir, _esc)
    body += _efficiency_section(eff)
    body += _plots_section(images)
    body += _environment_section(environments(runs_dir, list(shown["id"])), len(shown))
    note = lb.footnote(counts)
    if note:
        body.append(f'<p class="footnote">{_esc(note)}</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>kdbench leaderboard</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body)
            + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def write_site(df: pd.DataFrame, profiles: pd.DataFrame, out_dir: str | os.PathLike,
               runs_dir: str | os.PathLike = "runs") -> Path:
    """Write `out_dir/index.html` (atomically; other files in the folder are left alone) and return its path."""
    import importlib.util

    from kdbench.errors import KdbenchError

    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise KdbenchError(f"--out {out_dir} is a file: the html report is a folder (index.html inside), "
                           f"e.g. --out site/")
    images = plot_images(df, profiles, runs_dir) if importlib.util.find_spec("matplotlib") else None
    path = Path(out_dir) / INDEX
    write_text_atomic(path, render_html(df, profiles, runs_dir, images))  # keeps an existing page's mode
    return path
