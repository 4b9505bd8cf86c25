"""What `kdbench scenes list` shows: catalog entries with on-disk and cache status."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from kdbench.scenes.cache import prepared_sizes
from kdbench.scenes.catalog import CATALOG, SceneSpec, data_root, is_on_disk, scene_dir

# The catalog does not know the real scenes' archive sizes (they were never measured offline); the first
# download of a scene records its size and checksum here, under the data root, so later listings show it.
DOWNLOADS_RECORD = ".kdbench-downloads.json"
UNKNOWN_DOWNLOAD = "not known yet"
UNKNOWN_NOTE = ("download sizes marked \"not known yet\" are not in the catalog: the first `kdbench scenes "
                "download` of a scene measures its archive and records it in {path}, and this list shows it "
                "from then on")


def read_download_record(root: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """What earlier downloads measured, by scene name (empty when nothing was downloaded or the file is bad)."""
    path = data_root(root) / DOWNLOADS_RECORD
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def record_download(spec: SceneSpec, root: str | os.PathLike | None, size: int, sha256: str, source: str) -> None:
    """Remember a finished download's archive size and checksum (atomic write; other scenes' entries kept)."""
    from kdbench.fileio import write_json_atomic

    doc = read_download_record(root)
    doc[spec.name] = {"bytes": int(size), "sha256": sha256, "source": source, "recorded": time.time()}
    write_json_atomic(data_root(root) / DOWNLOADS_RECORD, doc)


def download_size(spec: SceneSpec, root: str | os.PathLike | None = None,
                  record: dict[str, dict[str, Any]] | None = None) -> str:
    """The archive size to show: the catalog's, else one an earlier download measured, else not known yet."""
    if spec.synthetic:
        return "render locally"
    if spec.zip_bytes is not None:
        return human_bytes(spec.zip_bytes)
    measured = (read_download_record(root) if record is None else record).get(spec.name, {}).get("bytes")
    return f"{human_bytes(measured)} (measured)" if isinstance(measured, int) else UNKNOWN_DOWNLOAD


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
    record = read_download_record(root)
    for spec in CATALOG:
        d = scene_dir(spec, root)
        on_disk = is_on_disk(spec, root)
        sizes = prepared_sizes(d) if on_disk else []
        rows.append({
            "scene": spec.name, "family": spec.family, "train": spec.n_train, "test": spec.n_test,
            "on_disk": on_disk, "prepared": ", ".join(f"{s}px" for s in sizes),
            "size": human_bytes(folder_bytes(d)) if on_disk else "-",
            "download": download_size(spec, root, record),
            "path": str(d),
        })
    return rows
