"""Decoded-image cache: each split decoded once into a uint8 memory-mapped array, rebuilt when stale.

Layout: <scene>/.kdbench-cache/<split>-<load_size>/{images.npy, poses.npy, manifest.json[, mean.npy]}.
The manifest lists every source image with size and mtime plus the settings; the poses are compared too,
so an edited label file also triggers a rebuild. Built in a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kdbench.errors import KdbenchError
from kdbench.fileio import atomic_dir
from kdbench.progress import make_progress
from kdbench.scenes.catalog import SceneSpec, get_scene, scene_dir
from kdbench.scenes.readers import SPLITS, Frame, read_split

CACHE_DIRNAME = ".kdbench-cache"
CACHE_VERSION = 1
DEFAULT_LOAD_SIZE = 256


@dataclass
class SplitCache:
    """One decoded split: images (N, H, W, 3) uint8 memmap, poses (N, 7) float32, the train mean image."""

    scene: str
    split: str
    path: Path
    images: np.ndarray
    poses: np.ndarray
    image_paths: list[str]
    mean: np.ndarray  # (H, W, 3) float32 mean image of the TRAIN split (used for both splits)

    def __len__(self) -> int:
        return len(self.poses)


def cache_path(scene_root: Path, split: str, load_size: int) -> Path:
    """Folder of one split's cache inside a scene folder."""
    return Path(scene_root) / CACHE_DIRNAME / f"{split}-{load_size}"


def _source_list(frames: list[Frame], root: Path) -> list[list]:
    out = []
    for f in frames:
        st = f.image_path.stat()
        out.append([os.path.relpath(f.image_path, root), st.st_size, st.st_mtime_ns])
    return out


def _is_fresh(path: Path, sources: list[list], poses: np.ndarray, load_size: int) -> bool:
    manifest = path / "manifest.json"
    if not manifest.is_file() or not (path / "images.npy").is_file():
        return False
    try:
        m = json.loads(manifest.read_text())
        cached_poses = np.load(path / "poses.npy")
    except (OSError, ValueError):
        return False
    return (m.get("version") == CACHE_VERSION and m.get("load_size") == load_size and m.get("sources") == sources
            and cached_poses.shape == poses.shape and np.allclose(cached_poses, poses, atol=1e-6))


def _target_size(first: Path, load_size: int) -> tuple[int, int]:
    with Image.open(first) as im:
        w, h = im.size
    scale = load_size / min(w, h)
    return max(load_size, round(w * scale)), max(load_size, round(h * scale))


def _decode(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != size:
                im = im.resize(size, Image.BILINEAR, reducing_gap=3.0)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise KdbenchError(f"cannot decode image {path} ({exc}): the file is corrupt; download or render "
                           "the scene again") from None


def _build(path: Path, frames: list[Frame], sources: list[list], poses: np.ndarray, load_size: int,
           label: str, quiet: bool) -> None:
    w, h = _target_size(frames[0].image_path, load_size)
    with atomic_dir(path) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(frames), h, w, 3))
        total = np.zeros((h, w, 3), dtype=np.float64)
        with make_progress(quiet) as progress, ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            task = progress.add_task(f"caching {label}", total=len(frames), info="")
            for i, img in enumerate(pool.map(lambda f: _decode(f.image_path, (w, h)), frames)):
                images[i] = img
                total += img
                progress.advance(task)
        images.flush()
        del images
        np.save(tmp / "poses.npy", poses)
        np.save(tmp / "split_mean.npy", (total / len(frames)).astype(np.float32))
        manifest = {"version": CACHE_VERSION, "load_size": load_size, "size": [h, w], "n": len(frames),
                    "sources": sources}
        (tmp / "manifest.json").write_text(json.dumps(manifest))


def load_split_cache(spec: SceneSpec | str, root: str | os.PathLike | None = None, split: str = "train",
                     load_size: int = DEFAULT_LOAD_SIZE, quiet: bool = True,
                     scene_root: str | os.PathLike | None = None,
                     train_mean: np.ndarray | None = None) -> SplitCache:
    """The cache of one split, built (or rebuilt, when sources or settings changed) on first use.

    The test split carries the train split's mean image; pass `train_mean` when the caller already holds
    it, so the train split is not checked again.
    """
    spec = get_scene(spec)
    if split not in SPLITS:
        raise KdbenchError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if load_size < 8:
        raise KdbenchError(f"load size {load_size} is too small: use at least 8 pixels")
    root_dir = Path(scene_root) if scene_root else scene_dir(spec, root)
    frames = read_split(root_dir, spec, split)
    poses = np.stack([f.pose for f in frames]).astype(np.float32)
    sources = _source_list(frames, root_dir)
    path = cache_path(root_dir, split, load_size)
    if not _is_fresh(path, sources, poses, load_size):
        _build(path, frames, sources, poses, load_size, f"{spec.name} {split} @{load_size}px", quiet)
    if split == "train":
        mean = np.load(path / "split_mean.npy")
    elif train_mean is not None:
        mean = train_mean
    else:
        mean = load_split_cache(spec, root, "train", load_size, quiet, scene_root).mean
    return SplitCache(spec.name, split, path, np.load(path / "images.npy", mmap_mode="r"),
                      np.load(path / "poses.npy"), [s[0] for s in sources], mean)


def prepare_scene(spec: SceneSpec | str, root: str | os.PathLike | None = None,
                  load_size: int = DEFAULT_LOAD_SIZE, quiet: bool = False) -> None:
    """Build the caches of both splits (what `scenes download` and `scenes synth` finish with)."""
    for split in SPLITS:
        load_split_cache(spec, root, split, load_size, quiet)


def prepared_sizes(scene_root: Path) -> list[int]:
    """Load sizes for which both splits have a complete cache."""
    base = Path(scene_root) / CACHE_DIRNAME
    if not base.is_dir():
        return []
    sizes = []
    for d in base.glob("train-*"):
        size = d.name.split("-", 1)[1]
        if size.isdigit() and (d / "manifest.json").is_file() and (base / f"test-{size}" / "manifest.json").is_file():
            sizes.append(int(size))
    return sorted(sizes)
