"""Decoded-image cache: each split decoded once into a uint8 memory-mapped array, verified on reuse.

Layout: <scene>/.kdbench-cache/<split>-<load_size>/{images.npy, poses.npy, split_mean.npy, manifest.json}.

The manifest records, for every source image, its path, byte size, mtime and a blake2b digest of its
bytes (taken at build time, from the bytes that were decoded), the labels' sha256, the decoded size, and
for each cache file its byte size plus a checksum: a full sha256 for the small files, a sampled one
(SAMPLE_BLOCKS blocks spread over the file) for images.npy, so reuse never re-reads gigabytes.
A cache is reused only when sources, labels and settings match and every cache file has its recorded
size and checksum; a damaged one (truncated, missing, edited) is rebuilt with a message saying why.

Every source image's content is hashed when the cache is built (the bytes that are decoded; decoding costs
far more, see benchmarks/bench_cache_verify.py). On reuse a source image whose inode change time (ctime)
differs from the one recorded is hashed again and compared: an image replaced with the same size and mtime
(`cp -p`, `touch -r`, an editor that keeps times) still gets a new ctime, which no user call can set back,
so it rebuilds the cache. Unchanged files are not read; after a copy of the data root (every ctime new)
each image is hashed once and the new ctimes are recorded where the manifest is writable.

Every image of a split must share one size and one 8-bit mode (the most common one); an image that
differs is refused by name, rather than stretched into the split's size or clipped to white (16-bit).

`data_fingerprint` identifies the data a job trains and is evaluated on: a hash of both splits' manifest
entries that do not depend on where or when the files were copied (paths, content digests, labels, decoded
size, load size, cache version). It reads the two manifests only.

Builds run under the scene lock (`catalog.scene_lock`), go to a temporary folder renamed into place, and
first remove temporary folders that a killed build left behind. A cache that is fresh is read without the
lock, so a read-only data root serves caches that were prepared before.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kdbench.errors import KdbenchError
from kdbench.fileio import atomic_dir, write_json_atomic
from kdbench.progress import console, make_progress
from kdbench.scenes.catalog import SceneSpec, get_scene, scene_dir, scene_lock
from kdbench.scenes.readers import SPLITS, Frame, read_split

CACHE_DIRNAME = ".kdbench-cache"
CACHE_VERSION = 2
DEFAULT_LOAD_SIZE = 256
MIN_LOAD_SIZE = 8  # smaller images leave a ResNet nothing to pool
SAMPLE_BLOCKS = 16  # blocks of images.npy hashed at every reuse
SAMPLE_BYTES = 1 << 16
# Modes whose convert("RGB") keeps the picture; 16/32-bit integer and float images turn white or black.
EIGHT_BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


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
    fingerprint: str = ""  # this split's data (see data_fingerprint)

    def __len__(self) -> int:
        return len(self.poses)


def cache_path(scene_root: Path, split: str, load_size: int) -> Path:
    """Folder of one split's cache inside a scene folder."""
    return Path(scene_root) / CACHE_DIRNAME / f"{split}-{load_size}"


def _ctimes(root: Path, sources: list[list]) -> list[int]:
    return [(root / rel).stat().st_ctime_ns for rel, *_ in sources]


def _file_digest(path: Path) -> str:
    """blake2b of a source file's bytes, as `_decode` takes it."""
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _replaced_source(path: Path, m: dict, sources: list[list]) -> str | None:
    """The first source image whose content changed behind an unchanged size and mtime (None: none did).

    Only files whose ctime moved since it was recorded are read; the ctimes found sound are recorded.
    """
    root = path.parent.parent  # <scene>/.kdbench-cache/<split>-<size>
    now = _ctimes(root, sources)
    known = m.get("ctimes") if isinstance(m.get("ctimes"), list) and len(m["ctimes"]) == len(now) else [None] * len(now)
    digests = m.get("digests") or []
    moved = [i for i, (a, b) in enumerate(zip(known, now)) if a != b]
    for i in moved:
        if i >= len(digests) or _file_digest(root / sources[i][0]) != digests[i]:
            return sources[i][0]
    if moved:
        try:  # best effort: a read-only data root hashes them again next time
            write_json_atomic(path / "manifest.json", {**m, "ctimes": now})
        except (OSError, KdbenchError):
            pass
    return None


def _source_list(frames: list[Frame], root: Path) -> list[list]:
    out = []
    for f in frames:
        st = f.image_path.stat()
        out.append([Path(os.path.relpath(f.image_path, root)).as_posix(), st.st_size, st.st_mtime_ns])
    return out


# ----------------------------------------------------------------------------------------------------
# Checksums


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _sampled_digest(path: Path) -> str:
    """blake2b of the file size and SAMPLE_BLOCKS blocks spread evenly over it (first and last included)."""
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    starts = np.linspace(0, max(size - SAMPLE_BYTES, 0), SAMPLE_BLOCKS).astype(np.int64)
    with open(path, "rb") as fh:
        for start in sorted(set(starts.tolist())):
            fh.seek(start)
            h.update(fh.read(SAMPLE_BYTES))
    return h.hexdigest()


def _poses_digest(poses: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(poses, dtype=np.float32).tobytes()).hexdigest()


def _split_fingerprint(manifest: dict) -> str:
    """Hash of what a split's data is, independent of mtimes and of where the files sit."""
    blob = json.dumps({"version": manifest["version"], "load_size": manifest["load_size"],
                       "size": manifest["size"], "images": [[s[0], d] for s, d in
                                                            zip(manifest["sources"], manifest["digests"])],
                       "poses": manifest["poses_sha256"]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------
# Reuse check


def _reuse_problem(path: Path, sources: list[list], poses: np.ndarray, load_size: int) -> tuple[str, str] | None:
    """None when the cache in `path` can be reused; else (kind, reason), kind 'absent'|'stale'|'damaged'."""
    manifest_file = path / "manifest.json"
    if not path.exists():
        return "absent", "not built yet"
    try:
        m = json.loads(manifest_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "damaged", "manifest.json is missing"
    except (OSError, ValueError) as exc:
        return "damaged", f"manifest.json is unreadable ({exc})"
    if not isinstance(m, dict) or m.get("version") != CACHE_VERSION:
        return "stale", "it was written by another kdbench version"
    if m.get("load_size") != load_size or not isinstance(m.get("files"), dict):
        return "damaged", "manifest.json does not describe this cache"
    if m.get("sources") != sources:
        return "stale", "the source images changed"
    if m.get("poses_sha256") != _poses_digest(poses):
        return "stale", "the labels changed"
    replaced = _replaced_source(path, m, sources)
    if replaced is not None:
        return "stale", f"the content of {replaced} changed (same size and modification time)"
    for name, rec in m["files"].items():
        f = path / name
        if not f.is_file():
            return "damaged", f"{name} is missing"
        size = f.stat().st_size
        if size != rec.get("bytes"):
            return "damaged", f"{name} has {size} bytes instead of {rec.get('bytes')} (truncated or replaced)"
        if "sha256" in rec and _sha256_file(f) != rec["sha256"]:
            return "damaged", f"{name} does not match its checksum"
        if "sampled" in rec and _sampled_digest(f) != rec["sampled"]:
            return "damaged", f"{name} does not match its checksum"
    for name in ("images.npy", "poses.npy", "split_mean.npy"):
        if name not in m["files"]:
            return "damaged", f"manifest.json does not list {name}"
    return None


# ----------------------------------------------------------------------------------------------------
# Image checks and decoding


def _too_large(path: Path, exc: Exception) -> KdbenchError:
    """Pillow refuses images above twice MAX_IMAGE_PIXELS (decompression-bomb guard): too large, not corrupt."""
    limit = (Image.MAX_IMAGE_PIXELS or 0) * 2 / 1e6
    return KdbenchError(f"image {path} is too large to decode ({exc}; Pillow's limit is about {limit:.0f} Mpx): "
                        "downscale it (camera-pose images need well under 1 Mpx), or replace the file")


def _probe(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) and mode from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except Image.DecompressionBombError as exc:
        raise _too_large(path, exc) from None
    except (OSError, ValueError) as exc:
        raise KdbenchError(f"cannot decode image {path} ({exc}): the file is corrupt; download or render "
                           "the scene again, or replace that file") from None


def _check_images(frames: list[Frame], label: str) -> tuple[tuple[int, int], str]:
    """The split's common (size, mode); any image that differs, or a mode that is not 8-bit, is refused."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        probes = list(pool.map(lambda f: _probe(f.image_path), frames))
    (size, mode), _count = Counter(probes).most_common(1)[0]
    odd = [(f, p) for f, p in zip(frames, probes) if p != (size, mode)]
    if odd:
        f, ((w, h), m) = odd[0]
        more = f" ({len(odd)} of {len(frames)} images differ)" if len(odd) > 1 else ""
        raise KdbenchError(f"image {f.image_path} is {w}x{h} {m}, but the {label} images are "
                           f"{size[0]}x{size[1]} {mode}{more}: replace or remove that image; kdbench does not "
                           "stretch or convert odd frames")
    if mode not in EIGHT_BIT_MODES:
        raise KdbenchError(f"image {frames[0].image_path} has mode {mode} (16/32-bit or float), like every "
                           f"{label} image: kdbench reads 8-bit images; convert them to 8-bit RGB")
    return size, mode


def _target_size(source: tuple[int, int], load_size: int) -> tuple[int, int]:
    w, h = source
    scale = load_size / min(w, h)
    return max(load_size, round(w * scale)), max(load_size, round(h * scale))


def _decode(path: Path, size: tuple[int, int], source: tuple[tuple[int, int], str]) -> tuple[np.ndarray, str]:
    """The image resized to `size` as uint8 RGB, and the digest of the file bytes it was decoded from."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            if (im.size, im.mode) != source:  # changed since the size check
                raise KdbenchError(f"image {path} is {im.size[0]}x{im.size[1]} {im.mode}, but the split's "
                                   f"images are {source[0][0]}x{source[0][1]} {source[1]}: replace it")
            im = im.convert("RGB")
            if im.size != size:
                im = im.resize(size, Image.BILINEAR, reducing_gap=3.0)
            return np.asarray(im, dtype=np.uint8), hashlib.blake2b(data, digest_size=16).hexdigest()
    except Image.DecompressionBombError as exc:
        raise _too_large(path, exc) from None
    except (OSError, ValueError) as exc:
        raise KdbenchError(f"cannot decode image {path} ({exc}): the file is corrupt; download or render "
                           "the scene again") from None


# ----------------------------------------------------------------------------------------------------
# Building


def _check_writable(folder: Path, spec: SceneSpec, split: str, load_size: int) -> None:
    """A clear error, before any work, when the cache cannot be written where it belongs."""
    probe_dir = folder
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        with tempfile.TemporaryFile(dir=probe_dir):
            pass
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise KdbenchError(
            f"{spec.name} {split} needs a new {load_size}px cache in {folder}, but {probe_dir} is not writable "
            f"({exc.strerror}): copy the scene folder to a writable place and pass that data root with "
            "--data-root, or prepare it once with write access (`kdbench scenes prepare "
            f"{spec.name} --load-size {load_size}`)") from None


def _inputs(root_dir: Path, spec: SceneSpec, split: str) -> tuple[list[Frame], np.ndarray, list[list]]:
    """A split's frames, their poses (N, 7) float32 and the source list a manifest is compared with."""
    frames = read_split(root_dir, spec, split)
    return frames, np.stack([f.pose for f in frames]).astype(np.float32), _source_list(frames, root_dir)


def _remove_orphans(cache_root: Path, quiet: bool) -> None:
    """Temporary folders of builds that were killed; only called under the scene lock, so none is live."""
    if not cache_root.is_dir():
        return
    orphans = [p for p in cache_root.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".old"))]
    for p in orphans:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if orphans and not quiet:
        console.print(f"removed {len(orphans)} temporary folder(s) left by an interrupted cache build in "
                      f"{cache_root}", markup=False, highlight=False, soft_wrap=True)


def _build(path: Path, frames: list[Frame], sources: list[list], poses: np.ndarray, load_size: int,
           label: str, quiet: bool) -> None:
    ctimes = _ctimes(path.parent.parent, sources)  # before reading: a file replaced meanwhile is checked later
    source = _check_images(frames, label)
    w, h = _target_size(source[0], load_size)
    _check_space(path, len(frames) * h * w * 3, label)
    digests: list[str] = []
    with atomic_dir(path) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(frames), h, w, 3))
        _reserve(tmp / "images.npy", path, label)
        total = np.zeros((h, w, 3), dtype=np.float64)
        with make_progress(quiet) as progress, ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            task = progress.add_task(f"caching {label}", total=len(frames), info="")
            for i, (img, digest) in enumerate(pool.map(lambda f: _decode(f.image_path, (w, h), source), frames)):
                images[i] = img
                total += img
                digests.append(digest)
                progress.advance(task)
        images.flush()
        del images
        np.save(tmp / "poses.npy", poses)
        np.save(tmp / "split_mean.npy", (total / len(frames)).astype(np.float32))
        files = {"images.npy": {"bytes": (tmp / "images.npy").stat().st_size,
                                "sampled": _sampled_digest(tmp / "images.npy")}}
        for name in ("poses.npy", "split_mean.npy"):
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256_file(tmp / name)}
        manifest = {"version": CACHE_VERSION, "load_size": load_size, "size": [h, w], "n": len(frames),
                    "source_size": list(source[0]), "source_mode": source[1], "sources": sources,
                    "digests": digests, "ctimes": ctimes,
                    "poses_sha256": _poses_digest(poses), "files": files}
        manifest["fingerprint"] = _split_fingerprint(manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


SPACE_MARGIN = 1.02  # the cache's small files (poses, mean, manifest) beside the image array


def _space_error(path: Path, need: int, free: int | None, label: str) -> KdbenchError:
    left = f"{free / 2**20:.1f} MiB free" if free is not None else "the disk is full"
    return KdbenchError(f"disk full while writing the {label} cache {path}: it needs {need * SPACE_MARGIN / 2**20:.1f} "
                        f"MiB there, {left}: free some space (or copy the scene to a larger disk and pass that "
                        "--data-root) and rerun; no cache was written")


def _check_space(path: Path, need: int, label: str) -> None:
    """Fail before decoding anything when the disk cannot hold the image array (its size is known)."""
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < need * SPACE_MARGIN:
        raise _space_error(path, need, free, label)


def _reserve(array: Path, path: Path, label: str) -> None:
    """Allocate the memory map's blocks now: a full disk is then an error here, not SIGBUS mid-build.

    A memory-mapped file is sparse; writing its pages onto a full disk kills the process with SIGBUS
    (no message, the temporary folder left behind).
    """
    if not hasattr(os, "posix_fallocate"):
        return
    size = array.stat().st_size
    fd = os.open(array, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise _space_error(path, size, None, label) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
            raise
    finally:
        os.close(fd)


def _read_manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text(encoding="utf-8"))


def load_split_cache(spec: SceneSpec | str, root: str | os.PathLike | None = None, split: str = "train",
                     load_size: int = DEFAULT_LOAD_SIZE, quiet: bool = True,
                     scene_root: str | os.PathLike | None = None,
                     train_mean: np.ndarray | None = None) -> SplitCache:
    """The cache of one split: reused when verified, else (re)built, saying why when it was damaged.

    The test split carries the train split's mean image; pass `train_mean` when the caller already holds
    it, so the train split is not checked again.
    """
    spec = get_scene(spec)
    if split not in SPLITS:
        raise KdbenchError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if load_size < MIN_LOAD_SIZE:
        raise KdbenchError(f"load size {load_size} is too small: use at least {MIN_LOAD_SIZE} pixels")
    root_dir = Path(scene_root) if scene_root else scene_dir(spec, root)
    frames, poses, sources = _inputs(root_dir, spec, split)
    path = cache_path(root_dir, split, load_size)
    label = f"{spec.name} {split} @{load_size}px"
    if _reuse_problem(path, sources, poses, load_size) is not None:
        _check_writable(path, spec, split, load_size)
        with scene_lock(root_dir, f"preparing {spec.name}", quiet=quiet):
            # Another process may have rendered the scene or built this cache while this one waited.
            frames, poses, sources = _inputs(root_dir, spec, split)
            problem = _reuse_problem(path, sources, poses, load_size)
            if problem is not None:
                _remove_orphans(path.parent, quiet)
                kind, reason = problem
                if kind == "damaged":  # said even when quiet: the user should know their cache broke
                    console.print(f"the {label} cache in {path} is damaged ({reason}); rebuilding it",
                                  markup=False, highlight=False, soft_wrap=True)
                elif kind == "stale" and not quiet:
                    console.print(f"rebuilding the {label} cache: {reason}", markup=False, highlight=False,
                                  soft_wrap=True)
                _build(path, frames, sources, poses, load_size, label, quiet)
    manifest = _read_manifest(path)
    if split == "train":
        mean = np.load(path / "split_mean.npy")
    elif train_mean is not None:
        mean = train_mean
    else:
        mean = load_split_cache(spec, root, "train", load_size, quiet, scene_root).mean
    images = np.load(path / "images.npy", mmap_mode="r")
    if mean.shape != images.shape[1:]:
        raise KdbenchError(f"the test images of {spec.name} decode to {images.shape[2]}x{images.shape[1]} but the "
                           f"train images to {mean.shape[1]}x{mean.shape[0]} at {load_size}px: both splits "
                           f"must have one image size; check the images in {root_dir}")
    return SplitCache(spec.name, split, path, images, np.load(path / "poses.npy"), [s[0] for s in sources], mean,
                      manifest["fingerprint"])


def _combine(spec: SceneSpec, load_size: int, split_fps: list[str]) -> str:
    blob = f"kdbench-data-v{CACHE_VERSION}:{spec.name}:{load_size}:" + ":".join(split_fps)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def data_fingerprint(spec_or_name: SceneSpec | str, data_root: str | os.PathLike | None = None,
                     load_size: int = DEFAULT_LOAD_SIZE) -> str:
    """16 hex digits naming the data of both splits at `load_size`; reads the two cache manifests only.

    Call it after `prepare_scene` (which returns the same value, having verified the caches); an
    unprepared scene is an error that names the command to run.
    """
    spec = get_scene(spec_or_name)
    root_dir = scene_dir(spec, data_root)
    fps = []
    for split in SPLITS:
        path = cache_path(root_dir, split, load_size)
        try:
            m = _read_manifest(path)
            if m.get("version") != CACHE_VERSION or m.get("load_size") != load_size:
                raise ValueError("another cache version")
            fps.append(m["fingerprint"])
        except (OSError, ValueError, KeyError):
            raise KdbenchError(f"{spec.name} has no current {split} cache at {load_size}px in {path}: prepare it "
                               f"with `kdbench scenes prepare {spec.name} --load-size {load_size}`") from None
    return _combine(spec, load_size, fps)


def prepare_scene(spec: SceneSpec | str, root: str | os.PathLike | None = None,
                  load_size: int = DEFAULT_LOAD_SIZE, quiet: bool = False) -> str:
    """Verify or build the caches of both splits; return the scene's data fingerprint at `load_size`."""
    spec = get_scene(spec)
    train = load_split_cache(spec, root, "train", load_size, quiet)
    test = load_split_cache(spec, root, "test", load_size, quiet, train_mean=train.mean)
    return _combine(spec, load_size, [train.fingerprint, test.fingerprint])


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
