"""Leaderboards from the results store: accuracy per scene group and efficiency per architecture.

One DataFrame is built from the store (`load_results`, one row per job); `accuracy_table` reduces it to
numbers (mean and std over seeds, change against the no-KD student, best marks), and the render functions
only format those numbers: markdown via tabulate, terminal via rich, CSV and JSON via pandas.
"""

from __future__ import annotations

import io
import json
import os
import re
from typing import Any

import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.reports.store import ResultsStore

METRICS = ("median_t", "median_r", "mean_t", "mean_r", "n_test", "acc_0.25m_2deg", "acc_0.5m_5deg",
           "acc_5m_10deg")
METHOD_ORDER = ("baseline", "vanilla", "attentive", "similarity", "hint", "sckd")  # then plugins, A-Z
GROUP_TITLES = {"cambridge": "Cambridge Landmarks", "7scenes": "7-Scenes", "synthetic": "Synthetic scenes",
                "other": "Other scenes"}
AVERAGE = "average"
FORMATS = ("markdown", "terminal", "csv", "json")
ROW_KEY = ["group", "scene", "role", "arch", "teacher_arch", "method"]

CAPTION = ("Median test error, translation (m) / rotation (deg), of each run's last-epoch model on the "
           "test split (no epoch is selected on test data); mean ± std over seeds, n = number of seeds (std "
           "left out when n = 1). Δ: change of the mean against the no-KD student (baseline) of the same "
           "architecture, negative is better. Bold: best student per column. Average: mean over the scenes "
           "shown, only for rows that have every one of them.")
EFFICIENCY_CAPTION = ("Sizes in MiB (2^20 bytes): params × 4 bytes (fp32), and the saved file (torch "
                      "state_dict, or the .onnx file). GFLOPs: torch FlopCounterMode at batch 1 and the "
                      "crop, a multiply-add counted as 2 FLOPs (convolutions and matrix products only); "
                      "empty where measured without torch. Latency: median / p90 in ms per batch over at "
                      "least 50 timed runs after warm-up; ≈ marks estimates, which are not measurements.")


# loading ------------------------------------------------------------------------------------------------
def open_store(runs_dir: str | os.PathLike) -> ResultsStore:
    """The existing results store of `runs_dir` (a clear error when there is none)."""
    return ResultsStore(runs_dir, create=False)


def scene_family(scene: str) -> str:
    """The catalog family of a scene ('cambridge', '7scenes', 'synthetic'), 'other' when unknown."""
    from kdbench.scenes import get_scene

    try:
        return get_scene(scene).family
    except KdbenchError:
        return "other"


def _scene_rank(scene: str) -> int:
    from kdbench.scenes import CATALOG

    names = [s.name.lower() for s in CATALOG]
    return names.index(scene.lower()) if scene.lower() in names else len(names)


def load_results(runs_dir: str | os.PathLike, scenes: str | None = None, preset: str | None = None) -> pd.DataFrame:
    """One row per job in the store (every status), with its metrics as columns (NaN where absent).

    Results of different presets are never mixed: jobs of presets other than `preset` (default: the preset
    of the most recently finished job) are kept out of the tables and counted in the footnote.
    """
    with open_store(runs_dir) as store:
        jobs = pd.read_sql_query("SELECT id, kind, scene, method, arch, teacher_arch, seed, preset, status, "
                                 "error, run_dir, train_seconds, updated FROM jobs ORDER BY created", store.conn)
        metrics = pd.read_sql_query("SELECT job_id, name, value FROM metrics", store.conn)
    return select_preset(results_frame(jobs, metrics, scenes), preset)


def select_preset(df: pd.DataFrame, preset: str | None = None) -> pd.DataFrame:
    """Mark the rows of one preset (column `in_preset`); the chosen preset is kept in df.attrs."""
    df = df.copy()
    if "preset" not in df:
        df["preset"] = None
    done = df[df["status"] == "done"]
    if preset is None and done["preset"].nunique() > 1:
        preset = done.sort_values("updated", kind="stable")["preset"].iloc[-1]
    if preset is not None and preset not in set(df["preset"]):
        known = ", ".join(sorted(str(p) for p in df["preset"].dropna().unique())) or "none"
        raise KdbenchError(f"no results of preset {preset!r} in this store (presets present: {known})")
    df["in_preset"] = True if preset is None else (df["preset"] == preset)
    df.attrs["preset"] = preset
    df.attrs["other_presets"] = sorted(str(p) for p in df.loc[~df["in_preset"], "preset"].dropna().unique())
    return df


def results_frame(jobs: pd.DataFrame, metrics: pd.DataFrame, scenes: str | None = None) -> pd.DataFrame:
    """Join job rows with their metrics (long -> wide) and add role and group columns; filter by scenes."""
    wide = metrics.pivot_table(index="job_id", columns="name", values="value", aggfunc="last")
    df = jobs.merge(wide, how="left", left_on="id", right_index=True)
    for name in ("median_t", "median_r"):
        if name not in df:
            df[name] = float("nan")
    df["role"] = df["kind"].where(df["kind"] == "teacher", "student")
    df["group"] = df["scene"].map(scene_family)
    if scenes:
        from kdbench.scenes import resolve_scenes

        wanted = {s.name.lower() for s in resolve_scenes(scenes)}
        df = df[df["scene"].str.lower().isin(wanted)]
    return df.reset_index(drop=True)


def load_profiles(runs_dir: str | os.PathLike) -> pd.DataFrame:
    """The store's profiles table as a DataFrame (one row per measurement)."""
    with open_store(runs_dir) as store:
        return pd.read_sql_query("SELECT * FROM profiles ORDER BY id", store.conn)


# accuracy ------------------------------------------------------------------------------------------------
def shown_jobs(df: pd.DataFrame) -> pd.DataFrame:
    """Done jobs with both medians; when a (row, seed) ran more than once, the latest run counts."""
    in_preset = df["in_preset"] if "in_preset" in df else True
    done = df[(df["status"] == "done") & df["median_t"].notna() & df["median_r"].notna() & in_preset].copy()
    # Teachers and the no-KD student learn without a teacher: their teacher_arch must not split rows.
    no_teacher = (done["role"] == "teacher") | (done["method"] == "baseline")
    done["teacher_arch"] = done["teacher_arch"].where(~no_teacher, "").fillna("")
    done = done.sort_values("updated", kind="stable") if "updated" in done else done
    return done.drop_duplicates(ROW_KEY + ["seed"], keep="last")


def not_shown(df: pd.DataFrame) -> dict[str, int]:
    """Counts of jobs left out of the tables: failed, unfinished (pending/running), superseded reruns."""
    other = ~df["in_preset"] if "in_preset" in df else pd.Series(False, index=df.index)
    df = df[~other]
    done = (df["status"] == "done") & df["median_t"].notna() & df["median_r"].notna()
    return {"failed": int((df["status"] == "failed").sum()),
            "unfinished": int(df["status"].isin(["pending", "running"]).sum()),
            "without metrics": int(((df["status"] == "done") & ~done).sum()),
            "superseded": int(done.sum() - len(shown_jobs(df))),
            "of other presets": int(other.sum())}


def arch_rank(arch: str) -> int:
    """Sort key that puts resnet18 before resnet34 before resnet101 (not alphabetical); others last."""
    match = re.fullmatch(r"[a-z_]+?(\d+)", str(arch))
    return int(match.group(1)) if match else 10**6


def _row_order(acc: pd.DataFrame) -> pd.Series:
    method_rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    plugins = sorted(set(acc["method"]) - set(METHOD_ORDER))
    method_rank.update({m: len(METHOD_ORDER) + i for i, m in enumerate(plugins)})
    role = (acc["role"] != "teacher").astype(int)
    return role * 1e10 + acc["arch"].map(arch_rank) * 1e3 + acc["method"].map(method_rank)


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Numbers of every leaderboard: one row per (group, scene or 'average', row), ordered for display."""
    jobs = shown_jobs(df)
    cols = ROW_KEY + ["label", "n_seeds", "t_mean", "t_std", "r_mean", "r_std", "dt_pct", "dr_pct",
                      "best_t", "best_r"]
    if jobs.empty:
        return pd.DataFrame(columns=cols)
    acc = (jobs.groupby(ROW_KEY, dropna=False)
           .agg(n_seeds=("seed", "size"), t_mean=("median_t", "mean"), t_std=("median_t", "std"),
                r_mean=("median_r", "mean"), r_std=("median_r", "std"))
           .reset_index())
    averages = _averages(acc)
    if not averages.empty:
        acc = pd.concat([acc, averages], ignore_index=True)
    acc = _add_change(acc)
    acc = _add_best(acc)
    acc["label"] = row_labels(acc)
    acc["_group"] = acc["group"].map(lambda g: list(GROUP_TITLES).index(g))
    acc["_scene"] = acc["scene"].map(lambda s: 10**6 if s == AVERAGE else _scene_rank(s))
    acc["_row"] = _row_order(acc)
    acc = acc.sort_values(["_group", "_scene", "scene", "_row", "teacher_arch"], kind="stable")
    return acc[cols].reset_index(drop=True)


def _averages(acc: pd.DataFrame) -> pd.DataFrame:
    """Per group and row: mean over the group's scenes of the per-scene means, for rows with every scene."""
    out = []
    for group, part in acc.groupby("group"):
        n_scenes = part["scene"].nunique()
        keys = [k for k in ROW_KEY if k not in ("group", "scene")]
        for key, rows in part.groupby(keys, dropna=False):
            if len(rows) < n_scenes:
                continue  # an average over fewer scenes would not be comparable with the other rows
            out.append({**dict(zip(keys, key)), "group": group, "scene": AVERAGE,
                        "n_seeds": int(rows["n_seeds"].min()), "t_mean": rows["t_mean"].mean(),
                        "t_std": float("nan"), "r_mean": rows["r_mean"].mean(), "r_std": float("nan")})
    return pd.DataFrame(out, columns=acc.columns)


def _add_change(acc: pd.DataFrame) -> pd.DataFrame:
    """Percent change of a KD student's mean against the baseline student of its arch and scene."""
    base = acc[(acc["role"] == "student") & (acc["method"] == "baseline")]
    base = base[["group", "scene", "arch", "t_mean", "r_mean"]]
    base = base.rename(columns={"t_mean": "bt", "r_mean": "br"})
    acc = acc.merge(base, how="left", on=["group", "scene", "arch"])
    kd = (acc["role"] == "student") & (acc["method"] != "baseline")
    acc["dt_pct"] = (100 * (acc["t_mean"] / acc["bt"] - 1)).where(kd)
    acc["dr_pct"] = (100 * (acc["r_mean"] / acc["br"] - 1)).where(kd)
    return acc.drop(columns=["bt", "br"])


def _add_best(acc: pd.DataFrame) -> pd.DataFrame:
    """Mark the lowest student mean per group, scene and metric (ties all marked)."""
    student = acc["role"] == "student"
    for metric, flag in (("t_mean", "best_t"), ("r_mean", "best_r")):
        best = acc[student].groupby(["group", "scene"])[metric].transform("min")
        acc[flag] = student & (acc[metric] == best.reindex(acc.index))
    return acc


def row_labels(acc: pd.DataFrame) -> list[str]:
    """'teacher resnet34', 'resnet18 baseline (no KD)', 'resnet18 sckd' ('← resnet50' if teachers vary)."""
    kd = acc[(acc["role"] == "student") & (acc["method"] != "baseline")]
    several = kd.groupby("group")["teacher_arch"].nunique()
    labels = []
    for r in acc.itertuples():
        if r.role == "teacher":
            labels.append(f"teacher {r.arch}")
        elif r.method == "baseline":
            labels.append(f"{r.arch} baseline (no KD)")
        else:
            suffix = f" ← {r.teacher_arch}" if several.get(r.group, 0) > 1 and r.teacher_arch else ""
            labels.append(f"{r.arch} {r.method}{suffix}")
    return labels


# efficiency ---------------------------------------------------------------------------------------------
def efficiency_table(profiles: pd.DataFrame) -> pd.DataFrame:
    """Latest measurement per (arch, device, backend, batch, crop), ordered by architecture."""
    cols = ["arch", "device", "backend", "batch", "crop", "params_m", "size_mib", "file_mib", "gflops",
            "latency_median_ms", "latency_p90_ms", "runs", "estimated", "note"]
    if profiles.empty:
        return pd.DataFrame(columns=cols)
    key = ["arch", "device", "backend", "batch", "crop"]
    eff = profiles.sort_values("id").drop_duplicates(key, keep="last")
    eff = eff.assign(params_m=eff["params"] / 1e6, size_mib=eff["size_mb"], file_mib=eff["file_mb"],
                     estimated=eff["estimated"].fillna(0).astype(int))
    eff["_arch"] = eff["arch"].map(arch_rank)
    eff["_backend"] = eff["backend"].map(lambda b: {"torch": 0, "onnxruntime": 1}.get(b, 2))
    eff = eff.sort_values(["_arch", "arch", "estimated", "device", "_backend", "backend", "batch", "crop"])
    return eff[cols].reset_index(drop=True)


# formatting ---------------------------------------------------------------------------------------------
def _num(value: float, best: bool, style: str) -> str:
    text = f"{value:.2f}"
    if best and style == "markdown":
        return f"**{text}**"
    if best and style == "rich":
        return f"[bold green]{text}[/bold green]"
    return text


def _cell(r: pd.Series, style: str) -> str:
    """'0.93 ± 0.05 / 5.96 ± 0.40 (n=3)'; no ± part when n = 1 or for averages."""
    t, rot = _num(r["t_mean"], r["best_t"], style), _num(r["r_mean"], r["best_r"], style)
    if r["scene"] == AVERAGE:
        return f"{t} / {rot}"
    if pd.isna(r["t_std"]):
        return f"{t} / {rot} (n={r['n_seeds']})"
    return f"{t} ± {r['t_std']:.2f} / {rot} ± {r['r_std']:.2f} (n={r['n_seeds']})"


def _pct(value: float) -> str:
    return "0%" if round(value) == 0 else f"{value:+.0f}%"


def _change(r: pd.Series) -> str:
    if r["role"] == "student" and r["method"] == "baseline":
        return "ref."
    if pd.isna(r["dt_pct"]):
        return "–"
    return f"{_pct(r['dt_pct'])} / {_pct(r['dr_pct'])}"


def display_table(acc: pd.DataFrame, group: str, style: str = "plain") -> pd.DataFrame:
    """One group's leaderboard as strings: a row per (role, arch, method), two columns per scene + average."""
    part = acc[acc["group"] == group]
    labels = list(dict.fromkeys(part["label"]))  # accuracy_table already ordered the rows
    scenes = list(dict.fromkeys(part["scene"]))
    if len(scenes) == 2:  # one scene and its average: the average column would repeat it
        scenes = scenes[:1]
    table = pd.DataFrame({"method": labels})
    for scene in scenes:
        cells = part[part["scene"] == scene].set_index("label")
        name = "average" if scene == AVERAGE else scene
        table[f"{name} t (m) / r (deg)"] = [_cell(cells.loc[lb], style) if lb in cells.index else "–"
                                            for lb in labels]
        table[f"{name} Δ t / r"] = [_change(cells.loc[lb]) if lb in cells.index else "–" for lb in labels]
    return table


def efficiency_display(eff: pd.DataFrame) -> pd.DataFrame:
    """The efficiency table as strings; estimated rows say so and how."""
    def num(v: Any, digits: int = 2, est: bool = False) -> str:
        return "–" if pd.isna(v) else f"{'≈' if est else ''}{v:.{digits}f}"

    rows = []
    for r in eff.itertuples():
        est = bool(r.estimated)
        note = f"(estimated: {r.note})" if est else ("" if pd.isna(r.note) else r.note)
        rows.append({"arch": r.arch, "device": r.device, "backend": r.backend,
                     "batch x crop": f"{r.batch} x {r.crop}", "params (M)": num(r.params_m),
                     "size (MiB)": num(r.size_mib, 1), "file (MiB)": num(r.file_mib, 1),
                     "GFLOPs": num(r.gflops), "latency median (ms)": num(r.latency_median_ms, est=est),
                     "p90 (ms)": num(r.latency_p90_ms, est=est), "note": note})
    return pd.DataFrame(rows)


def footnote(counts: dict[str, int]) -> str:
    """'2 failed and 1 unfinished jobs are not shown; see `kdbench runs --status failed`.' or ''."""
    separate = ("superseded", "of other presets")
    parts = [f"{n} {what}" for what, n in counts.items() if n and what not in separate]
    lines = []
    if counts.get("of other presets"):
        lines.append(f"{counts['of other presets']} job(s) of other presets are not shown: presets are never "
                     "mixed in one table; choose one with `kdbench report --preset NAME`.")
    if parts:
        total = sum(n for what, n in counts.items() if what not in separate)
        noun = "job is" if total == 1 else "jobs are"
        see = "`kdbench runs --status failed`" if counts.get("failed") else "`kdbench runs`"
        lines.append(f"{' and '.join(parts)} {noun} not shown; see {see}.")
    if counts.get("superseded"):
        lines.append(f"{counts['superseded']} earlier run(s) of a method and seed that ran again are not "
                     f"counted: the latest run counts.")
    return " ".join(lines)


def _groups(acc: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(acc["group"]))


def _group_heading(acc: pd.DataFrame, group: str) -> str:
    scenes = [s for s in dict.fromkeys(acc[acc["group"] == group]["scene"]) if s != AVERAGE]
    return f"{GROUP_TITLES.get(group, group)}: {', '.join(scenes)}"


def render_markdown(acc: pd.DataFrame, eff: pd.DataFrame, counts: dict[str, int]) -> str:
    """The leaderboard as a markdown document (GitHub tables via tabulate)."""
    from tabulate import tabulate

    def md(table: pd.DataFrame) -> str:
        table = table.map(lambda v: str(v).replace("|", "\\|"))  # a bare | would split the cell
        return tabulate(table, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)

    out = ["# kdbench leaderboard", ""]
    if acc.empty:
        out += ["No finished runs to show.", ""]
    else:
        out += [CAPTION, ""]
    for group in _groups(acc):
        out += [f"## {_group_heading(acc, group)}", "", md(display_table(acc, group, "markdown")), ""]
    if not eff.empty:
        out += ["## Efficiency", "", EFFICIENCY_CAPTION, "", md(efficiency_display(eff)), ""]
    note = footnote(counts)
    if note:
        out += [f"_{note}_", ""]
    return "\n".join(out)


def terminal_renderables(acc: pd.DataFrame, eff: pd.DataFrame, counts: dict[str, int]) -> list[Any]:
    """rich Tables (and text) for the terminal; best students in bold green."""
    from rich.table import Table
    from rich.text import Text

    def rich_table(title: str, table: pd.DataFrame, caption: str | None = None) -> Table:
        t = Table(title=title, caption=caption, caption_justify="left")
        for col in table.columns:
            t.add_column(str(col), overflow="fold")
        for row in table.itertuples(index=False):
            t.add_row(*map(str, row))
        return t

    items: list[Any] = [Text(CAPTION if not acc.empty else "No finished runs to show.")]
    for group in _groups(acc):
        items.append(rich_table(_group_heading(acc, group), display_table(acc, group, "rich")))
    if not eff.empty:
        items.append(rich_table("Efficiency", efficiency_display(eff), EFFICIENCY_CAPTION))
    if footnote(counts):
        items.append(Text(footnote(counts), style="yellow"))
    return items


def render_terminal(acc: pd.DataFrame, eff: pd.DataFrame, counts: dict[str, int], width: int = 200) -> str:
    """The terminal rendering as plain text (for --out FILE)."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    for item in terminal_renderables(acc, eff, counts):
        console.print(item)
    return console.export_text()


def render_csv(acc: pd.DataFrame, eff: pd.DataFrame) -> str:
    """Both tables in one CSV: a `table` column says 'accuracy' or 'efficiency' (numbers, not strings)."""
    # Nullable ints: the other table's rows leave these columns empty, which would turn 2 into 2.0.
    ints = {c: "Int64" for c in ("n_seeds", "batch", "crop", "runs", "estimated")}
    acc = acc.astype({c: t for c, t in ints.items() if c in acc})
    eff = eff.astype({c: t for c, t in ints.items() if c in eff})
    both = pd.concat([acc.assign(table="accuracy"), eff.assign(table="efficiency")], ignore_index=True)
    both = both[["table"] + [c for c in both.columns if c != "table"]]
    return both.to_csv(index=False)


def render_json(acc: pd.DataFrame, eff: pd.DataFrame, counts: dict[str, int]) -> str:
    """{caption, accuracy: [records], efficiency: [records], not_shown, footnote} (NaN as null)."""
    doc = {"caption": CAPTION, "efficiency_caption": EFFICIENCY_CAPTION,
           "accuracy": json.loads(acc.to_json(orient="records", double_precision=15)),
           "efficiency": json.loads(eff.to_json(orient="records", double_precision=15)),
           "not_shown": counts, "footnote": footnote(counts)}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def render(df: pd.DataFrame, profiles: pd.DataFrame, fmt: str = "markdown") -> str:
    """The whole report (accuracy per group, efficiency, footnote) from the results and profiles frames."""
    if fmt not in FORMATS:
        raise KdbenchError(f"unknown report format {fmt!r}: use {', '.join(FORMATS)}")
    acc, eff, counts = accuracy_table(df), efficiency_table(profiles), not_shown(df)
    if fmt == "markdown":
        return render_markdown(acc, eff, counts)
    if fmt == "terminal":
        return render_terminal(acc, eff, counts)
    if fmt == "csv":
        return render_csv(acc, eff)
    return render_json(acc, eff, counts)
