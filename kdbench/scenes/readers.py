"""Readers for the two on-disk layouts (Cambridge Landmarks, 7-Scenes); synthetic scenes use them too.

A Frame's pose is the dataset's own label: camera centre (x, y, z) and a unit quaternion (w, x, y, z)
with w >= 0. The quaternion is world-to-camera in the Cambridge layout and camera-to-world in the
7-Scenes layout (DATASETS.md); `camera_to_world` turns either into a 4x4 camera-to-world matrix.
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
CAMBRIDGE_HEADER_LINES = 3


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
    frames = []
    with open(label, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if lineno <= CAMBRIDGE_HEADER_LINES or not line.strip():
                continue
            cols = line.split()
            if len(cols) != 8:
                raise KdbenchError(
                    f"{label}:{lineno}: expected 8 space-separated columns "
                    f"(image X Y Z W P Q R), found {len(cols)}: {line.strip()!r}"
                )
            try:
                values = np.array([float(c) for c in cols[1:]], dtype=np.float64)
            except ValueError as exc:
                raise KdbenchError(f"{label}:{lineno}: non-numeric pose value ({exc}): {line.strip()!r}") from None
            if not np.all(np.isfinite(values)) or np.linalg.norm(values[3:]) < 1e-6:
                raise KdbenchError(f"{label}:{lineno}: pose must be finite with a non-zero quaternion")
            rel = cols[0]
            if os.path.isabs(rel) or ".." in Path(rel).parts:
                raise KdbenchError(f"{label}:{lineno}: image path {rel!r} must be relative to the scene folder")
            pose = np.concatenate([values[:3], canonical_quat(values[3:])])
            frames.append(Frame(root / rel, pose))
    return frames


_SEQ_RE = re.compile(r"^sequence(\d+)$", re.IGNORECASE)


def _read_7scenes(root: Path, split: str) -> list[Frame]:
    split_file = root / ("TrainSplit.txt" if split == "train" else "TestSplit.txt")
    if not split_file.is_file():
        raise KdbenchError(f"missing split file {split_file}: a 7-Scenes folder needs TrainSplit.txt and "
                           "TestSplit.txt")
    seqs = []
    with open(split_file, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            text = line.strip()
            if not text:
                continue
            m = _SEQ_RE.match(text)
            if not m:
                raise KdbenchError(f"{split_file}:{lineno}: expected a line like 'sequence2', found {text!r}")
            seqs.append(int(m.group(1)))
    frames = []
    for seq in seqs:
        seq_dir = root / f"seq-{seq:02d}"
        if not seq_dir.is_dir():
            raise KdbenchError(f"{split_file} lists sequence{seq} but {seq_dir} does not exist: "
                               "the scene is incomplete")
        pose_files = sorted(seq_dir.glob("frame-*.pose.txt"))
        if not pose_files:
            raise KdbenchError(f"{seq_dir} holds no frame-XXXXXX.pose.txt files")
        for pf in pose_files:
            frames.append(Frame(pf.with_name(pf.name.replace(".pose.txt", ".color.png")), read_7scenes_pose(pf)))
    return frames


def read_7scenes_pose(path: Path) -> np.ndarray:
    """7-d label of a 7-Scenes pose.txt: translation column and quaternion of the camera-to-world rotation."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
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
