"""What `kdbench scenes list` shows: catalog entries with on-disk and cache status."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kdbench.scenes.cache import prepared_sizes
from kdbench.scenes.catalog import CATALOG, is_on_disk, scene_dir


def human_bytes(n: int | None) -> str:
    """1536 -> '1.5 KB'; None -> 'unknown'."""
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def folder_bytes(path: Path) -> int:
    """Total size of the files under a folder."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def scene_status(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per catalog scene: name, family, counts, on disk, prepared load sizes, size on disk."""
    rows = []
    for spec in CATALOG:
        d = scene_dir(spec, root)
        on_disk = is_on_disk(spec, root)
        sizes = prepared_sizes(d) if on_disk else []
        rows.append({
            "scene": spec.name, "family": spec.family, "train": spec.n_train, "test": spec.n_test,
            "on_disk": on_disk, "prepared": ", ".join(f"{s}px" for s in sizes),
            "size": human_bytes(folder_bytes(d)) if on_disk else "-",
            "download": "render locally" if spec.synthetic else human_bytes(spec.zip_bytes),
            "path": str(d),
        })
    return rows
