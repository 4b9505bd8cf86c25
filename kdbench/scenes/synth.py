"""Offline synthetic scenes: numpy ray casting of textured axis-aligned boxes, written in the real layouts.

World frame: metres, right-handed, z up; the floor (SynthRoom) or the ground (SynthStreet) is z = 0.
Camera frame: OpenCV, x right, y down, z forward. A pose is a 4x4 camera-to-world matrix whose columns
are the camera axes in world coordinates and whose last column is the camera centre.
Pinhole camera: focal length FOCAL_FRACTION * W pixels for both axes (horizontal field of view about
58 degrees, like 7-Scenes' 585 px at 640), principal point at the image centre, pixel centres at +0.5.

SynthRoom is written in the 7-Scenes layout (pose.txt = camera-to-world matrix), SynthStreet in the
Cambridge layout (label = camera centre + world-to-camera quaternion); see DATASETS.md.
"""

from __future__ import annotations

import colorsys
import functools
import os
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kdbench.errors import KdbenchError
from kdbench.fileio import atomic_dir
from kdbench.progress import console, make_progress
from kdbench.scenes.catalog import SceneSpec, get_scene, scene_dir, scene_lock
from kdbench.scenes.readers import camera_to_world, pose_label, read_split

FOCAL_FRACTION = 0.9
DEFAULT_FRAMES = 100
N_SEQUENCES = 6
MIN_SIZE = 16
MAX_SIZE = 4096
_EPS = 1e-4

# Material kinds: how a surface's (u, v) coordinates in metres become a colour.
TILES, STRIPES, FACADE, ART, GROUND = range(5)

CAMBRIDGE_HEADER = "Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n"


@dataclass(frozen=True)
class World:
    """Solid boxes plus an enclosing room (camera inside) or a ground plane and sky, with materials."""

    lo: np.ndarray  # (N, 3) box minimum corners
    hi: np.ndarray  # (N, 3) box maximum corners
    box_mat: np.ndarray  # (N,) material index of each box
    kind: np.ndarray  # (M,) material kind
    col_a: np.ndarray  # (3, M) main colour (channels first: per-pixel gathers stay contiguous)
    col_b: np.ndarray  # (3, M) second colour
    scale: np.ndarray  # (2, M) pattern period along u and v (metres)
    room_lo: np.ndarray | None = None  # enclosing room (indoor scenes)
    room_hi: np.ndarray | None = None
    room_mat: np.ndarray | None = None  # (6,) materials of faces -x, +x, -y, +y, floor, ceiling
    ground_mat: int = -1  # outdoor scenes: material of the z = 0 plane; sky elsewhere
    light: np.ndarray | None = None  # indoor point light; outdoor scenes use the sun
    seed: int = 0


# ----------------------------------------------------------------------------------------------------
# Public API


def render_scene(spec_or_name: SceneSpec | str, root: str | os.PathLike | None = None,
                 frames_per_seq: int | None = None, size: tuple[int, int] = (160, 120), seed: int = 0,
                 quiet: bool = False) -> Path:
    """Render a synthetic scene's 6 sequences in its dataset layout in the data root; return the folder."""
    spec = _synthetic_spec(spec_or_name)
    size = _check_size(size)
    n = _check_frames(DEFAULT_FRAMES if frames_per_seq is None else frames_per_seq)
    seed = _check_seed(seed)
    seqs = tuple(spec.train_seqs) + tuple(spec.test_seqs)
    poses = {s: sequence_poses(spec, s, n, seed) for s in seqs}
    target = scene_dir(spec, root)
    # Everything goes into a temporary folder that replaces the target only once complete, so an
    # interrupted render never leaves split files that make the scene look ready. The scene lock keeps a
    # second process from replacing the folder while this one renders or caches it.
    with scene_lock(target, f"rendering {spec.name}", quiet=quiet):
        _remove_orphans(target, quiet)
        with atomic_dir(target) as tmp:
            frames = _write_labels(spec, tmp, poses)
            _render_frames(spec, frames, size, seed, quiet)
    return target


def _remove_orphans(target: Path, quiet: bool) -> None:
    """Temporary folders of renders that were killed (atomic_dir's names); the caller holds the scene lock."""
    if not target.parent.is_dir():
        return
    orphans = [p for p in target.parent.glob(f".{target.name}.*") if p.is_dir() and p.name.endswith((".tmp", ".old"))]
    for p in orphans:
        shutil.rmtree(p, ignore_errors=True)
    if orphans and not quiet:
        console.print(f"removed {len(orphans)} temporary folder(s) left by an interrupted render of {target.name}",
                      markup=False, highlight=False, soft_wrap=True)


def render_view(spec_or_name: SceneSpec | str, c2w: np.ndarray, size: tuple[int, int] = (160, 120),
                seed: int = 0) -> np.ndarray:
    """One (H, W, 3) uint8 view of a synthetic scene's world from a 4x4 camera-to-world matrix."""
    spec = _synthetic_spec(spec_or_name)
    w, h = _check_size(size)
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
        raise KdbenchError(f"a camera pose must be a finite 4x4 camera-to-world matrix, got {c2w.shape}")
    return _render(_world(spec.name, _check_seed(seed)), c2w, w, h)


def sequence_poses(spec_or_name: SceneSpec | str, seq: int, frames_per_seq: int = DEFAULT_FRAMES,
                   seed: int = 0) -> np.ndarray:
    """(N, 4, 4) camera-to-world poses of one sequence: a smooth hand-held loop with its own offsets."""
    spec = _synthetic_spec(spec_or_name)
    frames_per_seq = _check_frames(frames_per_seq)
    rng = np.random.default_rng([_check_seed(seed), _scene_key(spec.name), 1000 + int(seq)])
    # One full loop per sequence, from a random start, in a random direction.
    start, direction = rng.uniform(0, 2 * np.pi), rng.choice([-1.0, 1.0])
    phi = start + direction * 2 * np.pi * np.arange(frames_per_seq) / frames_per_seq
    path = _room_path if spec.layout == "7scenes" else _street_path
    return path(rng, phi)


def camera_intrinsics(size: tuple[int, int]) -> np.ndarray:
    """3x3 pinhole intrinsics matrix used for a W x H image."""
    w, h = size
    f = FOCAL_FRACTION * w
    return np.array([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------------------------------
# Checks


def _synthetic_spec(spec_or_name: SceneSpec | str) -> SceneSpec:
    spec = get_scene(spec_or_name)
    if not spec.synthetic:
        raise KdbenchError(f"{spec.name} is a real scene, not a synthetic one: fetch it with `kdbench scenes "
                           f"download {spec.name}` (synthetic scenes: SynthRoom, SynthStreet)")
    return spec


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise KdbenchError(f"image size {size!r}: expected (width, height), e.g. 160x120") from None
    if not (MIN_SIZE <= w <= MAX_SIZE and MIN_SIZE <= h <= MAX_SIZE):
        raise KdbenchError(f"image size {w}x{h}: width and height must be between {MIN_SIZE} and {MAX_SIZE} "
                           "pixels, e.g. 160x120")
    return w, h


def _check_frames(n: int) -> int:
    if int(n) < 2:
        raise KdbenchError(f"frames per sequence must be at least 2, got {n} (e.g. --frames 50)")
    return int(n)


def _check_seed(seed: int) -> int:
    if int(seed) < 0:
        raise KdbenchError(f"seed must be a non-negative integer, got {seed}")
    return int(seed)


def _scene_key(name: str) -> int:
    # str hashes are salted per process; crc32 is stable, so seeds mean the same thing everywhere.
    return zlib.crc32(name.encode())


# ----------------------------------------------------------------------------------------------------
# Trajectories


def _smooth_noise(rng: np.random.Generator, phi: np.ndarray, harmonics: int = 4) -> np.ndarray:
    """Periodic noise in [-1, 1]: a few random harmonics of the loop angle, smooth like a hand-held walk."""
    k = np.arange(1, harmonics + 1)
    amp = rng.normal(size=harmonics) / k  # higher harmonics weaker: wobble, not jitter
    amp /= np.abs(amp).sum()
    ph = rng.uniform(0, 2 * np.pi, size=harmonics)
    return (amp[:, None] * np.sin(k[:, None] * phi[None, :] + ph[:, None])).sum(0)


def _look_matrix(pos: np.ndarray, yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(N, 4, 4) camera-to-world poses from centres and heading angles (yaw about +z, pitch up, roll)."""
    fwd = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], -1)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(fwd, right)
    cr, sr = np.cos(roll)[:, None], np.sin(roll)[:, None]
    right, down = cr * right + sr * down, cr * down - sr * right
    m = np.tile(np.eye(4), (len(pos), 1, 1))
    m[:, :3, 0], m[:, :3, 1], m[:, :3, 2], m[:, :3, 3] = right, down, fwd, pos
    return m


def _room_path(rng: np.random.Generator, phi: np.ndarray) -> np.ndarray:
    # A loop around the room's centre, looking roughly inwards at the furniture and the far walls;
    # per-sequence radius, height, target and heading offsets, then smooth noise on each.
    ax, ay = 2.3 * rng.uniform(0.88, 1.08), 1.6 * rng.uniform(0.88, 1.08)
    z0 = rng.uniform(1.2, 1.65)
    target0 = np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.3), rng.uniform(0.85, 1.25)])
    yaw0 = rng.uniform(-0.3, 0.3)
    n = [_smooth_noise(rng, phi) for _ in range(8)]
    pos = np.stack([ax * (1 + 0.07 * n[0]) * np.cos(phi), ay * (1 + 0.07 * n[1]) * np.sin(phi),
                    z0 + 0.12 * n[2]], -1)
    target = target0 + np.stack([0.4 * n[3], 0.3 * n[4], 0.2 * n[5]], -1)
    to = target - pos
    yaw = np.arctan2(to[:, 1], to[:, 0]) + yaw0 + 0.3 * n[6]
    pitch = np.arctan2(to[:, 2], np.linalg.norm(to[:, :2], axis=-1))
    return _look_matrix(pos, yaw, pitch, 0.05 * n[7])


def _street_path(rng: np.random.Generator, phi: np.ndarray) -> np.ndarray:
    # A long loop up one side of the street and back down the other, heading mostly along the street
    # (turning smoothly at the ends) with per-sequence offsets and a swaying look towards the facades.
    ax, ay, cx = 24.0 * rng.uniform(0.9, 1.1), rng.uniform(1.2, 2.6), rng.uniform(-3.0, 3.0)
    z0 = rng.uniform(1.5, 1.9)
    yaw0, pitch0 = rng.uniform(-0.35, 0.35), rng.uniform(0.04, 0.16)
    n = [_smooth_noise(rng, phi) for _ in range(6)]
    pos = np.stack([cx + ax * np.cos(phi) + 1.5 * n[0], ay * np.sin(phi) + 0.6 * n[1], z0 + 0.1 * n[2]], -1)
    # Tangent of a fatter ellipse than the path itself, so the turn at each end spreads over many frames.
    sgn = np.sign(phi[-1] - phi[0])
    yaw = np.arctan2(sgn * 16.0 * np.cos(phi), -sgn * ax * np.sin(phi)) + yaw0 + 0.4 * n[3]
    return _look_matrix(pos, yaw, pitch0 + 0.06 * n[4], 0.04 * n[5])


# ----------------------------------------------------------------------------------------------------
# Worlds


@functools.lru_cache(maxsize=8)
def _world(name: str, seed: int) -> World:
    rng = np.random.default_rng([seed, _scene_key(name), 0])
    return _room_world(rng, seed) if get_scene(name).layout == "7scenes" else _street_world(rng, seed)


class _Builder:
    """Collects boxes and materials while a world is made."""

    def __init__(self) -> None:
        self.boxes: list[tuple[list[float], list[float], int]] = []
        self.mats: list[tuple[int, tuple, tuple, tuple[float, float]]] = []

    def mat(self, kind: int, col_a: tuple, col_b: tuple, scale: tuple[float, float]) -> int:
        self.mats.append((kind, col_a, col_b, scale))
        return len(self.mats) - 1

    def box(self, lo: list[float], hi: list[float], mat: int) -> None:
        self.boxes.append((lo, hi, mat))

    def build(self, **extra) -> World:
        f32 = np.float32
        return World(
            lo=np.array([b[0] for b in self.boxes], f32).reshape(-1, 3),
            hi=np.array([b[1] for b in self.boxes], f32).reshape(-1, 3),
            box_mat=np.array([b[2] for b in self.boxes], np.int64),
            kind=np.array([m[0] for m in self.mats], np.int64),
            col_a=np.ascontiguousarray(np.array([m[1] for m in self.mats], f32).T),
            col_b=np.ascontiguousarray(np.array([m[2] for m in self.mats], f32).T),
            scale=np.ascontiguousarray(np.array([m[3] for m in self.mats], f32).T),
            **extra,
        )


def _hsv(rng: np.random.Generator, h: float, s: tuple[float, float], v: tuple[float, float]) -> tuple:
    """A colour near hue h (0-1) with saturation and value drawn from the given ranges."""
    hue = (h + rng.uniform(-0.04, 0.04)) % 1.0
    return colorsys.hsv_to_rgb(hue, rng.uniform(*s), rng.uniform(*v))


def _room_world(rng: np.random.Generator, seed: int) -> World:
    b = _Builder()
    hx, hy, hz = 4.0, 3.0, 3.0
    walls = [
        b.mat(STRIPES, _hsv(rng, 0.10, (0.2, 0.3), (0.85, 0.95)), _hsv(rng, 0.08, (0.3, 0.4), (0.7, 0.8)),
              (0.25, 1.0)),
        b.mat(TILES, _hsv(rng, 0.58, (0.3, 0.45), (0.75, 0.9)), _hsv(rng, 0.55, (0.1, 0.2), (0.9, 1.0)),
              (0.3, 0.3)),
        b.mat(STRIPES, _hsv(rng, 0.33, (0.3, 0.45), (0.6, 0.75)), _hsv(rng, 0.30, (0.15, 0.25), (0.8, 0.9)),
              (0.6, 1.0)),
        b.mat(TILES, _hsv(rng, 0.02, (0.5, 0.65), (0.55, 0.7)), _hsv(rng, 0.05, (0.4, 0.5), (0.4, 0.5)),
              (0.5, 0.25)),
    ]
    floor = b.mat(TILES, _hsv(rng, 0.08, (0.45, 0.6), (0.45, 0.55)), _hsv(rng, 0.07, (0.5, 0.6), (0.3, 0.38)),
                  (0.6, 0.6))
    ceiling = b.mat(TILES, (0.93, 0.93, 0.9), (0.8, 0.8, 0.78), (1.0, 1.0))
    order = rng.permutation(4)  # which wall gets which wallpaper varies with the seed
    room_mat = np.array([walls[order[0]], walls[order[1]], walls[order[2]], walls[order[3]], floor, ceiling])
    _room_furniture(b, rng, hx, hy)
    _room_decor(b, rng, hx, hy)
    lamp = b.mat(TILES, (1.0, 1.0, 0.92), (0.95, 0.95, 0.85), (0.3, 0.3))
    b.box([-0.3, -0.3, hz - 0.12], [0.3, 0.3, hz], lamp)
    return b.build(room_lo=np.array([-hx, -hy, 0.0], np.float32), room_hi=np.array([hx, hy, hz], np.float32),
                   room_mat=room_mat, light=np.array([0.0, 0.0, hz - 0.3], np.float32), seed=seed)


def _room_furniture(b: _Builder, rng: np.random.Generator, hx: float, hy: float) -> None:
    # Central pieces stay inside the camera loop; wall pieces stay outside it (see _room_path radii).
    wood = b.mat(TILES, _hsv(rng, 0.07, (0.5, 0.7), (0.5, 0.65)), _hsv(rng, 0.07, (0.5, 0.7), (0.4, 0.5)),
                 (0.15, 0.6))
    tx, ty = rng.uniform(-0.15, 0.15), rng.uniform(-0.1, 0.1)
    b.box([tx - 0.6, ty - 0.35, 0.70], [tx + 0.6, ty + 0.35, 0.78], wood)
    b.box([tx - 0.1, ty - 0.1, 0.0], [tx + 0.1, ty + 0.1, 0.70], wood)
    for dx in (-0.3, 0.25):
        m = b.mat(ART, _hsv(rng, rng.uniform(), (0.6, 0.9), (0.7, 0.95)),
                  _hsv(rng, rng.uniform(), (0.6, 0.9), (0.3, 0.6)), (0.08, 0.08))
        w, d, h = rng.uniform(0.15, 0.3), rng.uniform(0.15, 0.25), rng.uniform(0.12, 0.4)
        b.box([tx + dx - w / 2, ty - d / 2, 0.78], [tx + dx + w / 2, ty + d / 2, 0.78 + h], m)
    shelf = b.mat(TILES, _hsv(rng, 0.6, (0.3, 0.5), (0.55, 0.7)), _hsv(rng, 0.1, (0.6, 0.8), (0.8, 0.95)),
                  (0.2, 0.3))
    sx = rng.choice([-1.0, 1.0])
    b.box([sx * 0.95 - 0.15, 0.15, 0.0], [sx * 0.95 + 0.15, 0.45, rng.uniform(1.1, 1.5)], shelf)
    pieces = [  # (wall side, along-wall size, depth, height, hue)
        ("y-", 2.0, 0.85, 0.8, rng.uniform()), ("y+", 1.6, 0.4, 2.0, rng.uniform()),
        ("x+", 1.5, 0.55, 0.9, rng.uniform()), ("x-", 1.0, 0.6, 1.9, rng.uniform()),
    ]
    for side, length, depth, height, hue in pieces:
        m = b.mat(TILES, _hsv(rng, hue, (0.4, 0.7), (0.5, 0.8)), _hsv(rng, hue + 0.5, (0.3, 0.6), (0.3, 0.5)),
                  (rng.uniform(0.2, 0.4), rng.uniform(0.2, 0.4)))
        b.box(*_against_wall(rng, side, hx, hy, length, depth, 0.0, height), m)


def _against_wall(rng: np.random.Generator, side: str, hx: float, hy: float, length: float, depth: float,
                  z0: float, z1: float) -> tuple[list[float], list[float]]:
    """Corners of a box standing against one wall at a random position along it."""
    half = (hx if side[0] == "y" else hy) - length / 2 - 0.3
    c = rng.uniform(-half, half)
    if side[0] == "y":
        y = hy if side[1] == "+" else -hy
        ys = sorted([y, y - np.sign(y) * depth])
        return [c - length / 2, ys[0], z0], [c + length / 2, ys[1], z1]
    x = hx if side[1] == "+" else -hx
    xs = sorted([x, x - np.sign(x) * depth])
    return [xs[0], c - length / 2, z0], [xs[1], c + length / 2, z1]


def _room_decor(b: _Builder, rng: np.random.Generator, hx: float, hy: float) -> None:
    # Paintings, a door and a window: thin boxes on the walls, the landmarks that make views unique.
    for side in ("x-", "x+", "y-", "y+", rng.choice(["y-", "y+"])):
        w, h = rng.uniform(0.5, 1.1), rng.uniform(0.4, 0.8)
        z0 = rng.uniform(1.3, 2.6 - h)
        cells = (w / rng.integers(2, 5), h / rng.integers(2, 4))
        m = b.mat(ART, _hsv(rng, rng.uniform(), (0.5, 0.9), (0.6, 0.95)),
                  _hsv(rng, rng.uniform(), (0.5, 0.9), (0.2, 0.5)), cells)
        b.box(*_against_wall(rng, side, hx, hy, w, 0.04, z0, z0 + h), m)
    door = b.mat(STRIPES, _hsv(rng, 0.07, (0.5, 0.7), (0.3, 0.4)), _hsv(rng, 0.07, (0.5, 0.7), (0.25, 0.3)),
                 (0.45, 2.0))
    b.box(*_against_wall(rng, rng.choice(["x-", "x+"]), hx, hy, 0.9, 0.05, 0.0, 2.05), door)
    window = b.mat(TILES, (0.75, 0.9, 1.0), (0.6, 0.8, 0.95), (0.6, 0.5))
    b.box(*_against_wall(rng, rng.choice(["y-", "y+"]), hx, hy, 1.2, 0.05, 1.0, 2.0), window)


def _street_world(rng: np.random.Generator, seed: int) -> World:
    b = _Builder()
    ground = b.mat(GROUND, (0.32, 0.32, 0.34), (0.62, 0.6, 0.56), (1.0, 1.0))
    for side in (-1.0, 1.0):
        x = -48.0
        while x < 48.0:
            width = rng.uniform(7.0, 13.0)
            front = 8.0 + rng.uniform(0.0, 1.2)
            height = rng.uniform(8.0, 20.0)
            hue = rng.choice([0.03, 0.08, 0.12, 0.55, 0.95])  # plaster, brick, sandstone, blue, pink
            wall, glass = _hsv(rng, hue, (0.15, 0.55), (0.55, 0.9)), _hsv(rng, 0.6, (0.2, 0.4), (0.15, 0.3))
            m = b.mat(FACADE, wall, glass, (rng.uniform(2.5, 3.5), rng.uniform(3.0, 3.6)))
            ys = sorted([side * front, side * (front + 10.0)])
            b.box([x, ys[0], 0.0], [x + width, ys[1], height], m)
            x += width + (rng.uniform(1.5, 3.0) if rng.uniform() < 0.25 else 0.0)  # occasional alley
    for end, height in ((1.0, rng.uniform(18.0, 26.0)), (-1.0, rng.uniform(10.0, 16.0))):
        m = b.mat(FACADE, _hsv(rng, rng.uniform(), (0.2, 0.5), (0.6, 0.85)),
                  _hsv(rng, 0.6, (0.2, 0.4), (0.2, 0.3)), (rng.uniform(3.0, 4.5), rng.uniform(3.5, 4.5)))
        xs = sorted([end * 52.0, end * 62.0])
        b.box([xs[0], -30.0, 0.0], [xs[1], 30.0, height], m)
    _street_props(b, rng)
    return b.build(ground_mat=ground, seed=seed)


def _street_props(b: _Builder, rng: np.random.Generator) -> None:
    # Parked cars and lamp posts near the kerbs: close objects give strong parallax between views.
    post = b.mat(TILES, (0.2, 0.22, 0.2), (0.3, 0.32, 0.3), (0.5, 0.5))
    for side in (-1.0, 1.0):
        for x in np.arange(-40.0, 41.0, 16.0) + rng.uniform(-3.0, 3.0):
            b.box([x - 0.12, side * 6.5 - 0.12, 0.0], [x + 0.12, side * 6.5 + 0.12, 4.5], post)
        for x in rng.uniform(-40.0, 40.0, size=3):
            m = b.mat(ART, _hsv(rng, rng.uniform(), (0.6, 0.9), (0.5, 0.9)), (0.15, 0.15, 0.18), (2.0, 0.75))
            ys = sorted([side * 4.4, side * 6.2])
            b.box([x - 2.1, ys[0], 0.0], [x + 2.1, ys[1], 1.45], m)


# ----------------------------------------------------------------------------------------------------
# Ray casting


@functools.lru_cache(maxsize=8)
def _camera_rays(w: int, h: int) -> np.ndarray:
    """(3, H*W) unit ray directions in the camera frame (x right, y down, z forward)."""
    f = FOCAL_FRACTION * w
    u = (np.arange(w) + 0.5 - w / 2) / f
    v = (np.arange(h) + 0.5 - h / 2) / f
    d = np.stack([np.broadcast_to(u[None, :], (h, w)), np.broadcast_to(v[:, None], (h, w)), np.ones((h, w))])
    d = d.reshape(3, -1)
    return (d / np.linalg.norm(d, axis=0)).astype(np.float32)


def _box_rects(world: World, c2w: np.ndarray, w: int, h: int) -> list[tuple[int, slice, slice]]:
    """(box, rows, columns) of the boxes in view with the pixel rectangle each can cover.

    Conservative: a box is dropped only when all 8 corners are outside one frustum plane, and a box
    reaching behind the camera gets the whole image.
    """
    if len(world.lo) == 0:
        return []
    corners = np.stack([np.where(np.array(bits, bool), world.hi, world.lo)
                        for bits in np.ndindex(2, 2, 2)], 1).astype(np.float64)  # (N, 8, 3)
    cam = (corners - c2w[:3, 3]) @ c2w[:3, :3]  # world -> camera: R^T (X - C)
    x, y, z = cam[..., 0], cam[..., 1], cam[..., 2]
    f = FOCAL_FRACTION * w
    tx, ty = w / 2 / f, h / 2 / f
    culled = np.zeros(len(world.lo), bool)
    for outside in (z <= _EPS, x < -tx * z, x > tx * z, y < -ty * z, y > ty * z):
        culled |= outside.all(1)
    front = (z > _EPS).all(1)
    zs = np.where(z > _EPS, z, 1.0)
    u, v = f * x / zs + w / 2, f * y / zs + h / 2
    rects = []
    for i in np.flatnonzero(~culled):
        if not front[i]:
            rects.append((int(i), slice(0, h), slice(0, w)))
            continue
        c0, c1 = max(int(np.floor(u[i].min())), 0), min(int(np.ceil(u[i].max())) + 1, w)
        r0, r1 = max(int(np.floor(v[i].min())), 0), min(int(np.ceil(v[i].max())) + 1, h)
        if c0 < c1 and r0 < r1:
            rects.append((int(i), slice(r0, r1), slice(c0, c1)))
    return rects


def _cast_boxes(world: World, c2w: np.ndarray, o: np.ndarray, d: np.ndarray, w: int, h: int):
    """Nearest box hit per ray: distance (inf for none), box index and hit face axis, each (H*W,)."""
    t = np.full((h, w), np.inf, np.float32)
    box = np.zeros((h, w), np.int64)
    axis = np.zeros((h, w), np.int64)
    d_img = d.reshape(3, h, w)
    inv_img = 1.0 / np.where(np.abs(d_img) < 1e-9, np.float32(1e-9), d_img)  # rays parallel to a slab
    # A z-buffer over boxes, each tested only on the pixels of its screen rectangle.
    for i, rows, cols in _box_rects(world, c2w, w, h):
        inv = inv_img[:, rows, cols]
        t1 = (world.lo[i][:, None, None] - o[:, None, None]) * inv
        t2 = (world.hi[i][:, None, None] - o[:, None, None]) * inv
        tmin3 = np.minimum(t1, t2)
        near = tmin3.max(0)
        closer = (near <= np.maximum(t1, t2).min(0)) & (near > _EPS) & (near < t[rows, cols])
        t[rows, cols] = np.where(closer, near, t[rows, cols])
        box[rows, cols] = np.where(closer, i, box[rows, cols])
        axis[rows, cols] = np.where(closer, tmin3.argmax(0), axis[rows, cols])
    return t.reshape(-1), box.reshape(-1), axis.reshape(-1)


def _cast_room(world: World, o: np.ndarray, d: np.ndarray):
    """Exit distance of each ray from the enclosing room, with the face's material."""
    inv = 1.0 / np.where(np.abs(d) < 1e-9, np.float32(1e-9), d)
    t1 = (world.room_lo[:, None] - o[:, None]) * inv
    t2 = (world.room_hi[:, None] - o[:, None]) * inv
    tmax3 = np.maximum(t1, t2)
    axis = tmax3.argmin(0)
    t = np.take_along_axis(tmax3, axis[None], 0)[0]
    face = 2 * axis + (np.take_along_axis(d, axis[None], 0)[0] > 0)
    return t, world.room_mat[face], axis


def _render(world: World, c2w: np.ndarray, w: int, h: int) -> np.ndarray:
    """Cast one ray per pixel; shade the nearest surface; return (H, W, 3) uint8."""
    rot = c2w[:3, :3].astype(np.float32)
    o = c2w[:3, 3].astype(np.float32)
    d = rot @ _camera_rays(w, h)  # (3, P) unit world directions
    t, box, axis = _cast_boxes(world, c2w, o, d, w, h)
    mat = world.box_mat[box]
    if world.room_lo is not None:
        t_env, mat_env, axis_env = _cast_room(world, o, d)
    else:  # the ground plane z = 0, seen only by rays going down
        down = d[2] < -1e-6
        t_env = np.where(down, -o[2] / np.where(down, d[2], -1.0), np.inf).astype(np.float32)
        mat_env, axis_env = np.where(down, world.ground_mat, -1), np.full_like(axis, 2)
    use_env = t_env <= t
    t = np.where(use_env, t_env, t)
    mat = np.where(use_env, mat_env, mat)
    axis = np.where(use_env, axis_env, axis)
    rgb = _shade(world, o, d, t, mat, axis, FOCAL_FRACTION * w)
    return (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8).T.reshape(h, w, 3)


# ----------------------------------------------------------------------------------------------------
# Textures and shading


def _hash01(seed: int, *keys: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random values in [0, 1) from integer lattice keys (a murmur-style mixer)."""
    h = np.full(np.shape(keys[0]), (seed * 0x9E3779B1 + 0x7F4A7C15) & 0xFFFFFFFF, dtype=np.uint32)
    for k in keys:
        h ^= (np.asarray(k, np.int64) & 0xFFFFFFFF).astype(np.uint32)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> np.uint32(16)
    return (h >> np.uint32(8)).astype(np.float32) / np.float32(1 << 24)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel linear blend of (3, P) colours."""
    return a + (b - a) * t[None]


def _tex_tiles(u, v, s, a, b, key, seed, blur):
    """Checkerboard of two colours with per-tile brightness jitter and dark grout lines."""
    i, j = np.floor(u / s[0]), np.floor(v / s[1])
    checker = (i + j) % 2
    jitter = 0.8 + 0.4 * _hash01(seed, i, j, key)
    fu, fv = u / s[0] - i, v / s[1] - j
    grout = ((np.minimum(fu, 1 - fu) * s[0] < 0.012) | (np.minimum(fv, 1 - fv) * s[1] < 0.012)) & (blur < 0.5)
    c = _mix(a, b, checker * (1 - blur) + 0.5 * blur) * jitter[None]
    return np.where(grout[None], c * 0.55, c)


def _tex_stripes(u, v, s, a, b, key, seed, blur):
    """Vertical wallpaper stripes with a skirting board and a dado rail."""
    i = np.floor(u / s[0])
    c = _mix(a, b, (i % 2) * (1 - blur) + 0.5 * blur) * (0.9 + 0.2 * _hash01(seed, i, key))[None]
    band = (v < 0.1) | (np.abs(v - 1.0) < 0.03)  # skirting board and dado rail
    return np.where(band[None], c * 0.5, c)


def _tex_facade(u, v, s, a, b, key, seed, blur):
    """Plastered wall with a grid of windows (some lit), shop windows on the ground floor."""
    i, j = np.floor(u / s[0]), np.floor(v / s[1])
    fu, fv = u / s[0] - i, v / s[1] - j
    shop = j < 1  # ground floor: wide shop windows
    win = np.where(shop, (fu > 0.08) & (fu < 0.92) & (fv > 0.12) & (fv < 0.75),
                   (fu > 0.28) & (fu < 0.72) & (fv > 0.3) & (fv < 0.78))
    lit = _hash01(seed, i, j, key)
    glass = b * (0.6 + 1.2 * lit)[None]
    wall = a * (0.88 + 0.24 * _hash01(seed + 1, np.floor(u / 0.6), np.floor(v / 0.3), key))[None]
    cornice = (fv < 0.06) & ~shop
    wall = np.where(cornice[None], wall * 0.7, wall)
    c = np.where(win[None], glass, wall)
    return np.where((blur > 0.5)[None], 0.75 * a + 0.25 * b, c)  # far away: windows blend into the wall


def _tex_art(u, v, s, a, b, key, seed, blur):
    """Grid of random colourful cells: paintings, parcels, cars."""
    i, j = np.floor(u / s[0]), np.floor(v / s[1])
    r1, r2 = _hash01(seed, i, j, key), _hash01(seed + 7, i, j, key)
    c = _mix(a, b, r1) * (0.7 + 0.5 * r2)[None]
    c = np.where(((i + j) % 2 == 0)[None], c, c[::-1] * 0.9 + 0.05)  # swap channels: vivid variety
    return _mix(c, 0.5 * (a + b), blur)


def _tex_ground(u, v, s, a, b, key, seed, blur):
    """Street surface: asphalt road with a dashed centre line, kerbs, paving slabs."""
    # u = x (along the street), v = y (across): road |y| < 4 with a dashed centre line, sidewalks beyond.
    road = np.abs(v) < 4.0
    speck = _hash01(seed, np.floor(u / 0.5), np.floor(v / 0.5), key)
    asphalt = a * (0.85 + 0.3 * speck)[None]
    dash = (np.abs(v) < 0.1) & ((u % 6.0) < 3.0) & (blur < 0.5)
    asphalt = np.where(dash[None], np.float32(0.9), asphalt)
    kerb = (np.abs(v) > 4.0) & (np.abs(v) < 4.2)
    i, j = np.floor(u / 1.0), np.floor(v / 1.0)
    slabs = b * (0.85 + 0.15 * ((i + j) % 2) * (1 - blur) + 0.15 * _hash01(seed + 3, i, j))[None]
    c = np.where(road[None], asphalt, slabs)
    return np.where(kerb[None], c * 0.6, c)


_TEXTURES: dict[int, Callable] = {
    TILES: _tex_tiles, STRIPES: _tex_stripes, FACADE: _tex_facade, ART: _tex_art, GROUND: _tex_ground,
}


def _surface_uv(x: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In-plane coordinates of hit points: horizontal and height on walls, (x, y) on floors and roofs."""
    u = np.where(axis == 0, x[1], x[0])
    v = np.where(axis == 2, x[1], x[2])
    return u, v


def _shade(world: World, o, d, t, mat, axis, focal: float) -> np.ndarray:
    """(3, P) colours in [0, 1]: texture x lighting, with sky where no surface was hit."""
    p = d.shape[1]
    hit = mat >= 0
    tt = np.where(hit, t, 0.0).astype(np.float32)
    x = o[:, None] + d * tt[None]
    u, v = _surface_uv(x, axis)
    footprint = tt / focal  # metres per pixel at the hit: fade patterns finer than two pixels
    rgb = np.zeros((3, p), np.float32)
    mat_c = np.where(hit, mat, 0)
    kinds = world.kind[mat_c]
    for kind, fn in _TEXTURES.items():
        sel = np.flatnonzero(hit & (kinds == kind))
        if sel.size == 0:
            continue
        m = mat_c[sel]
        s = np.take(world.scale, m, axis=1)
        blur = np.clip(4.0 * footprint[sel] / np.minimum(s[0], s[1]) - 1.0, 0.0, 1.0)
        col_a, col_b = np.take(world.col_a, m, axis=1), np.take(world.col_b, m, axis=1)
        rgb[:, sel] = fn(u[sel], v[sel], s, col_a, col_b, m, world.seed, blur)
    # The surface normal opposes the ray along the hit face's axis.
    normal = np.zeros((3, p), np.float32)
    normal[axis, np.arange(p)] = -np.sign(d[axis, np.arange(p)])
    light = _light_indoor(world, x, normal) if world.light is not None else _light_outdoor(normal)
    rgb *= light[None]
    if world.light is None:
        rgb = _sky_and_haze(rgb, d, tt, hit)
    return rgb


def _light_indoor(world: World, x: np.ndarray, normal: np.ndarray) -> np.ndarray:
    to_l = world.light[:, None] - x
    dist = np.linalg.norm(to_l, axis=0) + 1e-6
    lambert = np.clip((normal * to_l).sum(0) / dist, 0.0, 1.0)
    return 0.35 + 0.85 * lambert / (1.0 + 0.04 * dist * dist)


def _light_outdoor(normal: np.ndarray) -> np.ndarray:
    sun = np.array([0.45, -0.35, 0.82], np.float32)
    sun /= np.linalg.norm(sun)
    return 0.6 + 0.5 * np.clip((normal * sun[:, None]).sum(0), 0.0, 1.0)


def _sky_and_haze(rgb, d, t, hit) -> np.ndarray:
    up = np.clip(d[2], 0.0, 1.0)
    horizon = np.array([0.85, 0.9, 0.95], np.float32)[:, None]
    zenith = np.array([0.35, 0.55, 0.9], np.float32)[:, None]
    sky = horizon + (zenith - horizon) * np.sqrt(up)[None]
    haze = (1.0 - np.exp(-t / 150.0))[None]
    return np.where(hit[None], rgb * (1 - haze) + horizon * haze, sky)


# ----------------------------------------------------------------------------------------------------
# Files


def _fmt_7scenes(value: float) -> str:
    # The real pose.txt files were written by a Windows printf: '%.7e' with three exponent digits.
    mant, exp = f"{value:.7e}".split("e")
    return f"{mant}e{exp[0]}{int(exp[1:]):03d}".rjust(16)


def _write_labels(spec: SceneSpec, root: Path, poses: dict[int, np.ndarray]) -> list[tuple[Path, np.ndarray]]:
    """Write the split and pose files, then read them back with the project's readers: (image, c2w) pairs."""
    if spec.layout == "7scenes":
        _write_7scenes(spec, root, poses)
    else:
        _write_cambridge(spec, root, poses)
    # Render from the poses exactly as a reader will see them (rounded by the text format), so
    # images and labels agree bit for bit, and check the conventions round-trip.
    wanted = {s: list(p) for s, p in poses.items()}
    out = []
    for split, seqs in (("train", spec.train_seqs), ("test", spec.test_seqs)):
        frames = read_split(root, spec, split, check_images=False)
        expected = [m for s in seqs for m in wanted[s]]
        for frame, c2w_wanted in zip(frames, expected, strict=True):
            c2w = camera_to_world(frame.pose, spec.layout)
            if not np.allclose(c2w, c2w_wanted, atol=1e-4):
                raise RuntimeError(f"pose convention mismatch for {frame.image_path}: written and read-back "
                                   "camera-to-world matrices differ (readers.pose_label / camera_to_world)")
            out.append((frame.image_path, c2w))
    return out


def _write_7scenes(spec: SceneSpec, root: Path, poses: dict[int, np.ndarray]) -> None:
    for seq, mats in poses.items():
        seq_dir = root / f"seq-{seq:02d}"
        seq_dir.mkdir()
        for i, m in enumerate(mats):
            text = "".join("\t".join(_fmt_7scenes(x) for x in row) + "\t\r\n" for row in m)
            (seq_dir / f"frame-{i:06d}.pose.txt").write_bytes(text.encode())
    for name, seqs in (("TrainSplit.txt", spec.train_seqs), ("TestSplit.txt", spec.test_seqs)):
        (root / name).write_bytes("".join(f"sequence{s}\r\n" for s in seqs).encode())


def _write_cambridge(spec: SceneSpec, root: Path, poses: dict[int, np.ndarray]) -> None:
    for split, seqs in (("train", spec.train_seqs), ("test", spec.test_seqs)):
        lines = [CAMBRIDGE_HEADER]
        for seq in seqs:
            (root / f"seq{seq}").mkdir()
            for i, m in enumerate(poses[seq]):
                label = pose_label(m, spec.layout)
                lines.append(f"seq{seq}/frame{i + 1:05d}.png " + " ".join(f"{x:.6f}" for x in label) + "\n")
        (root / f"dataset_{split}.txt").write_text("".join(lines), encoding="utf-8", newline="\n")


def _render_frames(spec: SceneSpec, frames: list[tuple[Path, np.ndarray]], size: tuple[int, int], seed: int,
                   quiet: bool) -> None:
    world = _world(spec.name, int(seed))
    w, h = size
    with make_progress(quiet) as progress:
        task = progress.add_task(f"rendering {spec.name}", total=len(frames), info=f"{w}x{h}")
        for path, c2w in frames:
            _save_png(_render(world, c2w, w, h), path)
            progress.advance(task)


def _save_png(img: np.ndarray, path: Path) -> None:
    Image.fromarray(img, "RGB").save(path, format="PNG", compress_level=3)
