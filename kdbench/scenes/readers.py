"""Readers for the two on-disk layouts (Cambridge Landmarks, 7-Scenes); synthetic scenes use them too.

A Frame's pose is the dataset's own label: camera centre (x, y, z) and a unit quaternion (w, x, y, z)
with w >= 0. The quaternion is world-to-camera in the Cambridge layout and camera-to-world in the
7-Scenes layout (DATASETS.md); `camera_to_world` turns either into a 4x4 camera-to-world matrix.

Split integrity: a sequence (7-Scenes) or image (Cambridge) listed in both splits is train/test leakage
and an error. A duplicate inside one split is an error too, not a warning: it silently double-weights a
frame in training or in the test medians, with two different poses one label is wrong, the official
files contain none, and the fix (delete the line) is trivial.
Cambridge header lines are recognised by content, not counted: leading lines that are neither an image
file name nor a name followed by seven numbers (the official files have three); a file without a header
loses no frame, whatever its images' format. A UTF-8 byte-order mark (BOM) at the start of a file is read
as what it is, not as part of the first image's name. A 7-Scenes colour image without its pose file is an
error, not a frame silently left out.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdbench.errors import KdbenchError
from kdbench.poses import canonical_quat, matrix_to_quat, quat_to_matrix, rigid_transform_problem
from kdbench.scenes.catalog import SceneSpec, get_scene

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp")


@dataclass(frozen=True)
class Frame:
    """One labelled image: absolute path and 7-d pose (x, y, z, qw, qx, qy, qz)."""

    image_path: Path
    pose: np.ndarray


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise KdbenchError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def read_split(scene_dir: str | os.PathLike, name: str | SceneSpec, split: str,
               check_images: bool = True) -> list[Frame]:
    """Frames of one split of a scene on disk, in file order; errors name the file and line."""
    _check_split(split)
    spec = get_scene(name)
    root = Path(scene_dir).expanduser().resolve()
    if not root.is_dir():
        raise KdbenchError(
            f"scene folder {root} does not exist: run `kdbench scenes download {spec.name}`"
            + (f" or `kdbench scenes synth {spec.name}`" if spec.synthetic else "")
        )
    frames = _read_cambridge(root, split) if spec.layout == "cambridge" else _read_7scenes(root, split)
    if not frames:
        raise KdbenchError(f"the {split} split of {spec.name} in {root} lists no images: check its split files")
    if check_images:
        for f in frames:
            if not f.image_path.is_file():
                raise KdbenchError(
                    f"{spec.name} {split} split lists {f.image_path}, which does not exist: "
                    "the scene is incomplete; download or render it again"
                )
    return frames


def _read_cambridge(root: Path, split: str) -> list[Frame]:
    label = root / f"dataset_{split}.txt"
    if not label.is_file():
        raise KdbenchError(f"missing label file {label}: a Cambridge scene folder needs dataset_{split}.txt")
    frames, seen = _read_cambridge_file(label, root)
    other = root / f"dataset_{_other(split)}.txt"
    if other.is_file():
        _, other_seen = _read_cambridge_file(other, root)
        for rel, lineno in seen.items():
            if rel in other_seen:
                raise KdbenchError(
                    f"{label}:{lineno}: image {rel} is also in {other.name}:{other_seen[rel]}: an image cannot "
                    "be in both splits (train/test leakage); remove it from one of them")
    return frames


def _looks_like_data(cols: list[str]) -> bool:
    """An image line: a known image suffix, or any name followed by the seven pose numbers (a .gif too)."""
    if not cols:
        return False
    if cols[0].lower().endswith(IMAGE_SUFFIXES):
        return True
    if len(cols) != 8:
        return False
    try:
        [float(c) for c in cols[1:]]
    except ValueError:
        return False
    return True


def _no_bom(label: Path, lineno: int, line: str) -> None:
    if "\ufeff" in line:  # a BOM inside the file (files concatenated): the start of the file is handled
        raise KdbenchError(f"{label}:{lineno}: the line holds a byte-order mark (BOM, U+FEFF), e.g. from joining "
                           "files saved with one: remove it (save the file as UTF-8 without BOM)")


def _non_finite(values: np.ndarray, names: str = "XYZWPQR") -> str:
    """The first non-finite value of a pose line, named: 'Y = nan'."""
    for name, v in zip(names, values):
        if not np.isfinite(v):
            return f"{name} = {v}"
    return ""


def _read_cambridge_file(label: Path, root: Path) -> tuple[list[Frame], dict[str, int]]:
    """Frames of one label file and the line of each image; header lines are skipped by content."""
    frames: list[Frame] = []
    seen: dict[str, int] = {}
    in_header = True
    with open(label, encoding="utf-8-sig", errors="replace") as fh:  # -sig: a leading BOM is not a name
        for lineno, line in enumerate(fh, start=1):
            _no_bom(label, lineno, line)
            cols = line.split()
            if not cols:
                continue
            if in_header and not _looks_like_data(cols):
                continue  # e.g. 'Visual Landmark Dataset V1', 'ImageFile, Camera Position [X Y Z W P Q R]'
            in_header = False
            if len(cols) != 8:
                raise KdbenchError(
                    f"{label}:{lineno}: expected 8 space-separated columns "
                    f"(image X Y Z W P Q R), found {len(cols)}: {line.strip()!r}"
                )
            try:
                values = np.array([float(c) for c in cols[1:]], dtype=np.float64)
            except ValueError as exc:
                raise KdbenchError(f"{label}:{lineno}: non-numeric pose value ({exc}): {line.strip()!r}") from None
            if not np.all(np.isfinite(values)):
                raise KdbenchError(f"{label}:{lineno}: pose value {_non_finite(values)} is not finite: fix or delete "
                                   f"the line: {line.strip()!r}")
            if np.linalg.norm(values[3:]) < 1e-6:
                raise KdbenchError(f"{label}:{lineno}: the quaternion (W P Q R) is zero; a rotation needs a non-zero "
                                   f"quaternion: {line.strip()!r}")
            rel = cols[0]
            if os.path.isabs(rel) or ".." in Path(rel).parts:
                raise KdbenchError(f"{label}:{lineno}: image path {rel!r} must be relative to the scene folder")
            key = Path(rel).as_posix()
            if key in seen:
                raise KdbenchError(
                    f"{label}:{lineno}: image {rel} is listed again (first on line {seen[key]}): each image may "
                    "appear once per split (a duplicate double-weights it; with another pose one label is "
                    "wrong); delete one of the lines")
            seen[key] = lineno
            pose = np.concatenate([values[:3], canonical_quat(values[3:])])
            frames.append(Frame(root / rel, pose))
    return frames, seen


def _other(split: str) -> str:
    return "test" if split == "train" else "train"


_SEQ_RE = re.compile(r"^sequence(\d+)$", re.IGNORECASE)


def _split_file_7scenes(root: Path, split: str) -> Path:
    return root / ("TrainSplit.txt" if split == "train" else "TestSplit.txt")


def read_sequences(split_file: Path) -> dict[int, int]:
    """Sequence number -> line of a TrainSplit.txt / TestSplit.txt; a sequence listed twice is an error."""
    seqs: dict[int, int] = {}
    with open(split_file, encoding="utf-8-sig", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            text = line.strip()
            if not text:
                continue
            m = _SEQ_RE.match(text)
            if not m:
                raise KdbenchError(f"{split_file}:{lineno}: expected a line like 'sequence2', found {text!r}")
            seq = int(m.group(1))
            if seq in seqs:
                raise KdbenchError(f"{split_file}:{lineno}: sequence{seq} is listed again (first on line "
                                   f"{seqs[seq]}): its frames would count twice; delete one of the lines")
            seqs[seq] = lineno
    return seqs


def _read_7scenes(root: Path, split: str) -> list[Frame]:
    split_file = _split_file_7scenes(root, split)
    if not split_file.is_file():
        raise KdbenchError(f"missing split file {split_file}: a 7-Scenes folder needs TrainSplit.txt and "
                           "TestSplit.txt")
    seqs = read_sequences(split_file)
    other = _split_file_7scenes(root, _other(split))
    if other.is_file():
        other_seqs = read_sequences(other)
        for seq, lineno in seqs.items():
            if seq in other_seqs:
                raise KdbenchError(
                    f"{split_file}:{lineno}: sequence{seq} is also in {other.name}:{other_seqs[seq]}: a "
                    "sequence cannot be in both splits (train/test leakage); remove it from one of them")
    frames = []
    for seq in seqs:
        seq_dir = root / f"seq-{seq:02d}"
        if not seq_dir.is_dir():
            raise KdbenchError(f"{split_file} lists sequence{seq} but {seq_dir} does not exist: "
                               "the scene is incomplete")
        pose_files = sorted(seq_dir.glob("frame-*.pose.txt"))
        if not pose_files:
            raise KdbenchError(f"{seq_dir} holds no frame-XXXXXX.pose.txt files")
        for color in sorted(seq_dir.glob("frame-*.color.png")):
            if not color.with_name(color.name.replace(".color.png", ".pose.txt")).is_file():
                raise KdbenchError(f"{color} has no pose file ({color.name.replace('.color.png', '.pose.txt')} "
                                   "is missing): the frame cannot be used; restore the pose file, or delete the image "
                                   "to leave the frame out")
        for pf in pose_files:
            frames.append(Frame(pf.with_name(pf.name.replace(".pose.txt", ".color.png")), read_7scenes_pose(pf)))
    return frames


def read_7scenes_pose(path: Path) -> np.ndarray:
    """7-d label of a 7-Scenes pose.txt: translation column and quaternion of the camera-to-world rotation."""
    rows = []
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append([float(v) for v in line.split()])
            except ValueError as exc:
                raise KdbenchError(f"{path}:{lineno}: non-numeric value ({exc}) in a 4x4 pose matrix") from None
            if len(rows[-1]) != 4:
                raise KdbenchError(f"{path}:{lineno}: expected 4 values per row of a 4x4 pose, found {len(rows[-1])}")
    if len(rows) != 4:
        raise KdbenchError(f"{path}: expected 4 rows of a 4x4 camera-to-world matrix, found {len(rows)}")
    m = np.array(rows)
    bad = np.argwhere(~np.isfinite(m))
    if len(bad):
        (i, j), = bad[:1]
        raise KdbenchError(f"{path}: row {i + 1}, column {j + 1} of the pose matrix is {m[i, j]}, not a finite "
                           "number: fix the file or delete the frame (its pose and colour image)")
    problem = rigid_transform_problem(m)
    if problem:
        raise KdbenchError(f"{path}: not a rigid transform: {problem}")
    return np.concatenate([m[:3, 3], matrix_to_quat(m[:3, :3])])


def camera_to_world(pose: np.ndarray, layout: str) -> np.ndarray:
    """4x4 camera-to-world matrix of a 7-d label in the given layout's convention."""
    pose = np.asarray(pose, dtype=np.float64)
    r = quat_to_matrix(pose[3:])
    m = np.eye(4)
    m[:3, :3] = r.T if layout == "cambridge" else r  # Cambridge labels hold the world-to-camera rotation
    m[:3, 3] = pose[:3]
    return m


def pose_label(c2w: np.ndarray, layout: str) -> np.ndarray:
    """7-d label in the given layout's convention from a 4x4 camera-to-world matrix."""
    c2w = np.asarray(c2w, dtype=np.float64)
    r = c2w[:3, :3].T if layout == "cambridge" else c2w[:3, :3]
    return np.concatenate([c2w[:3, 3], matrix_to_quat(r)])
