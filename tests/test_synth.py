"""The synthetic scene renderer: layouts, pose conventions, determinism, trajectories, atomic writes."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.poses import matrix_to_quat, quat_to_matrix, rotation_errors_deg
from kdbench.scenes import camera_to_world, get_scene, is_on_disk, read_split, scene_dir, synth
from kdbench.scenes.synth import render_scene, render_view, sequence_poses

SIZE = (64, 48)
FRAMES = 6
SCENES = ("SynthRoom", "SynthStreet")
CACHE_DIR = ".kdbench-cache"  # what prepare_scene adds inside a scene folder; not part of the dataset


def _image(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two images in grey levels."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _blocks(img: np.ndarray, k: int = 8) -> np.ndarray:
    """Means of k x k pixel blocks: the coarse layout of an image."""
    h, w, c = img.shape
    return img.reshape(h // k, k, w // k, k, c).astype(np.float64).mean((1, 3))


def _dataset_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and CACHE_DIR not in p.parts}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Both synthetic scenes rendered (and prepared) through the CLI at 64x48, 6 frames per sequence."""
    root = tmp_path_factory.mktemp("synth-data")
    for name in SCENES:
        rc = main(["scenes", "synth", name, "--data-root", str(root), "--frames", str(FRAMES),
                   "--size", f"{SIZE[0]}x{SIZE[1]}", "--quiet"])
        assert rc == 0
    return root


# ---------------------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("name", SCENES)
def test_cli_render_reads_back(data, name):
    spec = get_scene(name)
    assert is_on_disk(spec, data)
    folder = scene_dir(spec, data)
    for split, seqs in (("train", spec.train_seqs), ("test", spec.test_seqs)):
        frames = read_split(folder, spec, split)
        assert len(frames) == FRAMES * len(seqs)
        poses = np.stack([f.pose for f in frames])
        np.testing.assert_allclose(np.linalg.norm(poses[:, 3:], axis=1), 1.0, atol=1e-6)
        assert (poses[:, 3] >= 0).all()
        seq_of = [int(re.search(r"seq-?(\d+)", f.image_path.parent.name).group(1)) for f in frames]
        assert sorted(set(seq_of)) == sorted(seqs)
        with Image.open(frames[0].image_path) as img:
            assert img.size == SIZE and img.mode == "RGB"


def test_7scenes_files_match_the_real_format(data):
    folder = scene_dir("SynthRoom", data)
    assert (folder / "TrainSplit.txt").read_bytes() == b"sequence1\r\nsequence2\r\nsequence3\r\nsequence4\r\n"
    assert (folder / "TestSplit.txt").read_bytes() == b"sequence5\r\nsequence6\r\n"
    assert sorted(p.name for p in (folder / "seq-01").iterdir())[:2] == [
        "frame-000000.color.png", "frame-000000.pose.txt"]
    raw = (folder / "seq-01" / "frame-000000.pose.txt").read_bytes()
    rows = raw.split(b"\r\n")
    assert len(rows) == 5 and rows[-1] == b""  # four CRLF-terminated rows, as in the real files
    for row in rows[:4]:
        cols = row.split(b"\t")
        assert len(cols) == 5 and cols[-1] == b""
        assert all(re.fullmatch(rb" *-?\d\.\d{7}e[+-]\d{3}", c) for c in cols[:4])
    assert rows[3].split() == [b"0.0000000e+000"] * 3 + [b"1.0000000e+000"]


def test_cambridge_files_match_the_real_format(data):
    folder = scene_dir("SynthStreet", data)
    lines = (folder / "dataset_test.txt").read_text(encoding="utf-8").split("\n")
    assert lines[:3] == ["Visual Landmark Dataset V1", "ImageFile, Camera Position [X Y Z W P Q R]", ""]
    assert re.fullmatch(r"seq5/frame00001\.png( -?\d+\.\d{6}){7}", lines[3])
    assert (folder / "seq6" / f"frame{FRAMES:05d}.png").is_file()


# ---------------------------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("name", SCENES)
def test_labels_reproduce_the_images(data, name):
    """A label read with its layout's convention renders the image on disk; the other convention does not."""
    spec = get_scene(name)
    other = "7scenes" if spec.layout == "cambridge" else "cambridge"
    for split in ("train", "test"):
        frames = read_split(scene_dir(spec, data), spec, split)
        for f in frames[:: FRAMES + 1][:3]:  # frames from different sequences
            on_disk = _image(f.image_path)
            right = render_view(spec, camera_to_world(f.pose, spec.layout), SIZE, seed=0)
            assert np.abs(right.astype(np.int16) - on_disk).max() <= 1
            wrong = render_view(spec, camera_to_world(f.pose, other), SIZE, seed=0)
            assert _mad(wrong, on_disk) > 15.0


@pytest.mark.parametrize("name", SCENES)
def test_quaternion_direction_follows_datasets_md(data, name):
    """Independent of camera_to_world: the camera's y axis (down, OpenCV) must point down the world's z axis.

    It is a column of R(q) when q is camera-to-world (7-Scenes) and a row when it is world-to-camera
    (Cambridge); the other reading gives something else.
    """
    spec = get_scene(name)
    frames = read_split(scene_dir(spec, data), spec, "train")
    r = quat_to_matrix(np.stack([f.pose[3:] for f in frames]))
    cam_y = r[:, 1, :] if spec.layout == "cambridge" else r[:, :, 1]
    swapped = r[:, :, 1] if spec.layout == "cambridge" else r[:, 1, :]
    assert (cam_y[:, 2] < -0.9).all()
    assert not (swapped[:, 2] < -0.9).all()


def test_pinhole_camera_follows_opencv_axes():
    """Rays match K^-1 [u, v, 1] at pixel centres; y points down: sky on top, street below."""
    w, h = SIZE
    k = synth.camera_intrinsics(SIZE)
    assert k[0, 0] == k[1, 1] == pytest.approx(0.9 * w) and (k[0, 2], k[1, 2]) == (w / 2, h / 2)
    rays = synth._camera_rays(w, h).reshape(3, h, w)
    for row, col in ((0, 0), (h - 1, 5), (10, w - 1)):
        expected = np.linalg.solve(k, [col + 0.5, row + 0.5, 1.0])
        np.testing.assert_allclose(rays[:, row, col], expected / np.linalg.norm(expected), atol=1e-6)
    pitch = 0.3  # looking down the street (+x), tilted up: sky above the rooftops, asphalt below
    right, down, fwd = [0, -1, 0], [np.sin(pitch), 0, -np.cos(pitch)], [np.cos(pitch), 0, np.sin(pitch)]
    c2w = np.eye(4)
    c2w[:3, :3] = np.array([right, down, fwd]).T
    c2w[:3, 3] = [0.0, 0.0, 1.7]
    img = render_view("SynthStreet", c2w, SIZE).astype(np.int16)
    sky, street = img[0].mean(0), img[-1].mean(0)
    assert sky[2] > sky[0] + 20 and sky.mean() > 150  # light blue
    assert abs(street[2] - street[0]) < 20 and street.mean() < 130  # grey asphalt


# ---------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_another_seed_differs(data, tmp_path):
    for name in SCENES:
        again = render_scene(name, tmp_path / "again", frames_per_seq=FRAMES, size=SIZE, seed=0, quiet=True)
        assert _dataset_files(again) == _dataset_files(scene_dir(name, data))
    other = render_scene("SynthRoom", tmp_path / "b", frames_per_seq=FRAMES, size=SIZE, seed=1, quiet=True)
    first = scene_dir("SynthRoom", data)
    for rel in ("seq-01/frame-000000.color.png", "seq-05/frame-000003.color.png"):
        assert _mad(_image(other / rel), _image(first / rel)) > 10.0
    c2w = np.eye(4)
    c2w[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # looking along +x from the room centre
    c2w[:3, 3] = [0.0, 0.0, 1.5]
    views = [render_view("SynthRoom", c2w, SIZE, seed=s) for s in (0, 1)]
    assert _mad(*views) > 10.0


# ---------------------------------------------------------------------------------------------- trajectories


@pytest.mark.parametrize("name", SCENES)
def test_neighbouring_frames_are_similar_and_distant_ones_differ(name):
    poses = sequence_poses(name, 2, 100, seed=0)
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    q = matrix_to_quat(poses[:, :3, :3])
    turn = rotation_errors_deg(q[:-1], q[1:])
    assert steps.max() < (0.25 if name == "SynthRoom" else 2.0)  # metres per frame
    assert turn.max() < 10.0  # degrees per frame
    # Compare 8x8-pixel block means: textures make even a one-pixel shift change many single pixels.
    views = [_blocks(render_view(name, poses[i], SIZE)) for i in (0, 1, 25, 50, 75)]
    near = _mad(views[0], views[1])
    far = min(_mad(views[0], v) for v in views[2:])
    assert far > 12.0 and far > 2.0 * near, (near, far)


def test_frames_on_disk_are_distinct(data):
    for name in SCENES:
        spec = get_scene(name)
        frames = read_split(scene_dir(spec, data), spec, "test")
        images = [_image(f.image_path) for f in frames]
        for i in range(len(images)):
            for j in range(i + 1, len(images)):
                assert _mad(images[i], images[j]) > 5.0, (frames[i].image_path, frames[j].image_path)


@pytest.mark.parametrize("name", SCENES)
def test_test_sequences_cover_the_training_space(name):
    """Test cameras are near training cameras in position and heading: same distribution, new noise."""
    spec = get_scene(name)
    train = np.concatenate([sequence_poses(spec, s, 100) for s in spec.train_seqs])
    test = np.concatenate([sequence_poses(spec, s, 100) for s in spec.test_seqs])
    dist = np.linalg.norm(test[:, None, :3, 3] - train[None, :, :3, 3], axis=-1)
    fwd_cos = np.einsum("ai,bi->ab", test[:, :3, 2], train[:, :3, 2])
    # For each test camera: some training camera within this distance that looks within ~35 degrees.
    reach = np.where(fwd_cos > np.cos(np.radians(35)), dist, np.inf).min(1)
    assert np.median(reach) < (0.35 if name == "SynthRoom" else 3.0)
    assert np.percentile(reach, 95) < (0.8 if name == "SynthRoom" else 6.0)


@pytest.mark.parametrize("name", SCENES)
def test_cameras_stay_in_free_space_and_see_content(name):
    spec = get_scene(name)
    world = synth._world(spec.name, 0)
    for seq in spec.train_seqs + spec.test_seqs:
        c = sequence_poses(spec, seq, 100)[:, :3, 3]
        inside = ((c[:, None] > world.lo[None] - 0.2) & (c[:, None] < world.hi[None] + 0.2)).all(-1)
        assert not inside.any()
        if world.room_lo is not None:
            assert ((c > world.room_lo + 0.5) & (c < world.room_hi - 0.5)).all()
    poses = sequence_poses(spec, 1, 24)
    for m in poses[::4]:  # no blank views: every frame has texture everywhere, not a flat colour
        img = render_view(spec, m, SIZE).astype(np.float32)
        assert img.std(axis=(0, 1)).mean() > 12.0


# ---------------------------------------------------------------------------------------------- atomicity


def test_failed_render_leaves_no_ready_scene_and_keeps_the_old_one(tmp_path, monkeypatch):
    root = tmp_path / "data"
    good = render_scene("SynthStreet", root, frames_per_seq=3, size=(32, 24), quiet=True)
    before = _dataset_files(good)
    calls = {"n": 0}
    real_save = synth._save_png

    def flaky_save(img, path):
        calls["n"] += 1
        if calls["n"] % 7 == 0:  # fails midway through each render
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        real_save(img, path)

    monkeypatch.setattr(synth, "_save_png", flaky_save)
    # a write error is one line (fileio.write_error), and nothing already written changes
    with pytest.raises(KdbenchError, match="disk full"):
        render_scene("SynthStreet", root, frames_per_seq=3, size=(32, 24), seed=5, quiet=True)
    assert is_on_disk("SynthStreet", root) and _dataset_files(good) == before
    with pytest.raises(KdbenchError, match="disk full"):
        render_scene("SynthRoom", root, frames_per_seq=3, size=(32, 24), quiet=True)
    assert not is_on_disk("SynthRoom", root) and not scene_dir("SynthRoom", root).exists()
    assert sorted(p.name for p in root.iterdir() if p.name != ".kdbench-locks") == ["SynthStreet"]  # no temp folders


def test_rerender_replaces_the_scene(tmp_path):
    first = render_scene("SynthRoom", tmp_path, frames_per_seq=4, size=(32, 24), quiet=True)
    render_scene("SynthRoom", tmp_path, frames_per_seq=2, size=(32, 24), quiet=True)
    assert len(read_split(first, "SynthRoom", "train")) == 2 * 4
    assert not (first / "seq-01" / "frame-000003.color.png").exists()


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spec_or_name": "Stairs"}, "real scene"),
        ({"size": (8, 48)}, "between 16"),
        ({"size": (64,)}, "expected"),
        ({"frames_per_seq": 1}, "at least 2"),
    ],
)
def test_render_scene_errors(tmp_path, kwargs, message):
    args = {"spec_or_name": "SynthRoom", "root": tmp_path, "quiet": True, **kwargs}
    with pytest.raises(KdbenchError, match=message):
        render_scene(**args)
    assert not any(tmp_path.iterdir())


def test_render_view_errors():
    with pytest.raises(KdbenchError, match="4x4"):
        render_view("SynthRoom", np.eye(3))
    with pytest.raises(KdbenchError, match="real scene"):
        render_view("KingsCollege", np.eye(4))


def test_cli_reports_bad_arguments(tmp_path, capsys):
    base = ["scenes", "synth", "--data-root", str(tmp_path), "--quiet"]
    assert main([*base, "SynthRoom", "--size", "8x8"]) == 2
    assert "between 16" in capsys.readouterr().err
    assert main([*base, "SynthRoom", "--frames", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main([*base, "ShopFacade"]) == 2
    assert "real scene" in capsys.readouterr().err
