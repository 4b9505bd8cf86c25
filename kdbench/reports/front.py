"""The accuracy-latency front: frames in, frames out (plots.py draws them; leaderboard.py shows the ratios).

One point per (architecture, method) of a group's average row: median translation and rotation error
(geometric means over scenes and seeds, as the leaderboard's average) against the batch-1 latency of that
architecture on one device and backend.
A point is on the front of a metric when no other point is at once faster and more accurate there. A
device known only from estimates (kdbench.profile.jetson_nano_estimates) gives points flagged estimated,
with the estimate's note saying how.
"""

from __future__ import annotations

import pandas as pd


def pareto_mask(xs: list[float], ys: list[float]) -> list[bool]:
    """True where no other point has x <= and y <= with one of them strictly lower (lower is better)."""
    return [not any((xj <= xi and yj <= yi) and (xj < xi or yj < yi) for xj, yj in zip(xs, ys))
            for xi, yi in zip(xs, ys)]


def device_points(avg: pd.DataFrame, eff: pd.DataFrame) -> dict[tuple[str, str, int], pd.DataFrame]:
    """Per (device, backend, crop) with batch-1 latencies: the average rows joined with their latency.

    `avg`: one group's average accuracy rows (arch, method, role, label, t_mean, r_mean); `eff`: the efficiency
    table. Each frame gets on_front_t / on_front_r, and `estimated` (1 where the latency is an estimate).
    """
    out = {}
    rows = eff[(eff["batch"] == 1) & eff["latency_median_ms"].notna() & eff["arch"].isin(set(avg["arch"]))]
    for (device, backend, crop), part in rows.groupby(["device", "backend", "crop"], sort=False):
        lat = part.drop_duplicates("arch", keep="last")[["arch", "latency_median_ms", "estimated", "note"]]
        points = avg.merge(lat, on="arch", how="inner").reset_index(drop=True)
        if points.loc[points["role"] == "student", "arch"].nunique() < 2:
            continue  # one student architecture: the leaderboard's efficiency column says it all
        for metric in ("t", "r"):
            points[f"on_front_{metric}"] = pareto_mask(points["latency_median_ms"].tolist(),
                                                       points[f"{metric}_mean"].tolist())
        out[(device, backend, int(crop))] = points
    return out


def with_teacher_latency(eff: pd.DataFrame, acc: pd.DataFrame) -> pd.DataFrame:
    """The efficiency table plus `vs_teacher`: a student arch's latency over its teacher's, same device,
    backend, batch and crop ('0.41x resnet34'; several teachers joined with '; '; '' for others)."""
    pairs = acc[(acc["role"] == "student") & acc["teacher_arch"].fillna("").ne("")][["arch", "teacher_arch"]]
    teachers = pairs.drop_duplicates().groupby("arch")["teacher_arch"].apply(list).to_dict()
    key = ["device", "backend", "batch", "crop"]
    lat = {(r.arch, *(getattr(r, k) for k in key)): r.latency_median_ms for r in eff.itertuples()}
    texts = []
    for r in eff.itertuples():
        parts = []
        for t in teachers.get(r.arch, []):
            ref = lat.get((t, *(getattr(r, k) for k in key)))
            if t != r.arch and ref and pd.notna(ref) and pd.notna(r.latency_median_ms):
                parts.append(f"{r.latency_median_ms / ref:.2f}x {t}")
        texts.append("; ".join(parts))
    return eff.assign(vs_teacher=texts)
