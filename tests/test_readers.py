"""Scene catalog and readers: real fixtures and every kind of bad input."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from kdbench.errors import KdbenchError
from kdbench.scenes import CATALOG, get_scene, read_split, resolve_scenes
from kdbench.scenes.readers import camera_to_world, pose_label


def test_catalog_has_all_real_and_synthetic_scenes():
    fams = [s.family for s in CATALOG]
    assert fams.count("cambridge") == 6 and fams.count("7scenes") == 7 and fams.count("synthetic") == 2
    for s in CATALOG:
        assert s.n_train > 0 and s.n_test > 0 and s.beta > 0
        if not s.synthetic:
            assert s.url.startswith("http") and s.url.endswith(".zip")


def test_names_match_case_insensitively_and_groups_expand():
    assert get_scene("stairs") is get_scene("Stairs") is get_scene("STAIRS")
    assert [s.name for s in resolve_scenes("ShopFacade,stairs,shopfacade")] == ["ShopFacade", "Stairs"]
    assert len(resolve_scenes("7scenes")) == 7 and len(resolve_scenes("all")) == 15
    assert [s.name for s in resolve_scenes("synthetic")] == ["SynthRoom", "SynthStreet"]


def test_unknown_scene_suggests_closest():
    with pytest.raises(KdbenchError, match="Did you mean.*ShopFacade"):
        get_scene("shopfacde")


def test_stairs_fixture_poses(stairs_dir):
    train = read_split(stairs_dir, "stairs", "train")
    test = read_split(stairs_dir, "Stairs", "test")
    assert len(train) == 6 and len(test) == 6
    assert {f.image_path.parent.name for f in train} == {"seq-02", "seq-03"}
    assert {f.image_path.parent.name for f in test} == {"seq-01", "seq-04"}
    first = test[0]
    assert first.image_path.is_absolute() and first.image_path.name == "frame-000000.color.png"
    assert first.image_path.parent.name == "seq-01"
    assert np.allclose(first.pose[3:], [0.96652, -0.18689, 0.13473, 0.11297], atol=1e-4)
    assert np.allclose(first.pose[:3], [-1.4903377, -0.49737796, -0.054694783], atol=1e-6)
    for f in train + test:
        assert f.pose.shape == (7,) and f.pose[3] >= 0 and np.isclose(np.linalg.norm(f.pose[3:]), 1)


def test_shopfacade_labels(shopfacade_labels):
    train = read_split(shopfacade_labels, "ShopFacade", "train", check_images=False)
    test = read_split(shopfacade_labels, "ShopFacade", "test", check_images=False)
    assert len(train) == 231 and len(test) == 103
    assert train[0].image_path == shopfacade_labels.resolve() / "seq2/frame00001.png"
    assert np.allclose(train[0].pose[:3], [-11.664603, -8.199192, 1.947634])
    assert all(f.pose[3] >= 0 for f in train + test)


def test_cambridge_convention_round_trip():
    # Cambridge labels carry the world-to-camera rotation: c2w uses its transpose.
    pose = np.array([1.0, 2.0, 3.0, 0.678307, 0.569025, -0.308146, 0.348075])
    pose[3:] /= np.linalg.norm(pose[3:])
    c2w = camera_to_world(pose, "cambridge")
    assert np.allclose(pose_label(c2w, "cambridge"), pose, atol=1e-9)
    assert not np.allclose(camera_to_world(pose, "7scenes")[:3, :3], c2w[:3, :3])


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def test_bad_pose_matrix_names_file(stairs_dir, tmp_path):
    d = _copy(stairs_dir, tmp_path / "stairs")
    bad = d / "seq-02" / "frame-000001.pose.txt"
    bad.write_text("2\t0\t0\t0\r\n0\t1\t0\t0\r\n0\t0\t1\t0\r\n0\t0\t0\t1\r\n")
    with pytest.raises(KdbenchError, match=r"frame-000001\.pose\.txt.*not a rigid transform"):
        read_split(d, "stairs", "train")
    bad.write_text("1\t0\t0\r\n")
    with pytest.raises(KdbenchError, match=r"frame-000001\.pose\.txt:1: expected 4 values"):
        read_split(d, "stairs", "train")
    bad.write_text("1\tx\t0\t0\r\n")
    with pytest.raises(KdbenchError, match=r"frame-000001\.pose\.txt:1: non-numeric"):
        read_split(d, "stairs", "train")


def test_missing_split_and_image(stairs_dir, tmp_path):
    d = _copy(stairs_dir, tmp_path / "stairs")
    (d / "seq-04" / "frame-000002.color.png").unlink()
    with pytest.raises(KdbenchError, match=r"frame-000002\.color\.png, which does not exist"):
        read_split(d, "stairs", "test")
    (d / "TestSplit.txt").unlink()
    with pytest.raises(KdbenchError, match="missing split file.*TestSplit.txt"):
        read_split(d, "stairs", "test")
    (d / "TrainSplit.txt").write_text("sequence2\r\nseq 3\r\n")
    with pytest.raises(KdbenchError, match=r"TrainSplit.txt:2: expected a line like 'sequence2'"):
        read_split(d, "stairs", "train")
    (d / "TrainSplit.txt").write_text("\r\n")
    with pytest.raises(KdbenchError, match="lists no images"):
        read_split(d, "stairs", "train")


def test_bad_cambridge_lines(tmp_path):
    header = "Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n"
    (tmp_path / "dataset_train.txt").write_text(header + "seq1/a.png 1 2 3 1 0 0 0\nseq1/b.png 1 2 3 1 0 0\n")
    with pytest.raises(KdbenchError, match=r"dataset_train.txt:5: expected 8 space-separated columns"):
        read_split(tmp_path, "ShopFacade", "train", check_images=False)
    (tmp_path / "dataset_train.txt").write_text(header + "seq1/a.png 1 2 three 1 0 0 0\n")
    with pytest.raises(KdbenchError, match=r"dataset_train.txt:4: non-numeric"):
        read_split(tmp_path, "ShopFacade", "train", check_images=False)
    (tmp_path / "dataset_train.txt").write_text(header + "../a.png 1 2 3 1 0 0 0\n")
    with pytest.raises(KdbenchError, match="must be relative"):
        read_split(tmp_path, "ShopFacade", "train", check_images=False)
    with pytest.raises(KdbenchError, match="missing label file.*dataset_test.txt"):
        read_split(tmp_path, "ShopFacade", "test", check_images=False)


def test_street_style_paths_are_accepted(tmp_path):
    header = "Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n"
    (tmp_path / "dataset_test.txt").write_text(header + "img_east/image_east_0001.png 1 2 3 -0.5 0.5 0.5 0.5\n")
    (f,) = read_split(tmp_path, "Street", "test", check_images=False)
    assert f.image_path.name == "image_east_0001.png"
    assert np.allclose(f.pose[3:], [0.5, -0.5, -0.5, -0.5])  # sign made canonical


# ---------------------------------------------------------------- split integrity and headers


@pytest.fixture
def stairs_copy(stairs_dir, tmp_path) -> Path:
    dest = tmp_path / "stairs"
    shutil.copytree(stairs_dir, dest)
    return dest


@pytest.mark.parametrize("split", ["train", "test"])
def test_7scenes_sequence_in_both_splits_is_leakage(stairs_copy, split):
    (stairs_copy / "TrainSplit.txt").write_bytes(b"sequence2\r\nsequence3\r\nsequence4\r\n")  # 4 is a test seq
    with pytest.raises(KdbenchError, match=r"sequence4 is also in .*both splits \(train/test leakage\)"):
        read_split(stairs_copy, "Stairs", split)


def test_7scenes_sequence_listed_twice(stairs_copy):
    (stairs_copy / "TestSplit.txt").write_bytes(b"sequence1\r\nsequence4\r\nsequence1\r\n")
    with pytest.raises(KdbenchError, match=r"TestSplit.txt:3: sequence1 is listed again \(first on line 1\)"):
        read_split(stairs_copy, "Stairs", "test")


def _cambridge(folder: Path, train: list[str], test: list[str], header: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    head = "Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n" if header else ""
    for split, lines in (("train", train), ("test", test)):
        (folder / f"dataset_{split}.txt").write_text(head + "".join(f"{line}\n" for line in lines))
    return folder


def test_cambridge_image_listed_twice_with_different_poses(tmp_path):
    root = _cambridge(tmp_path / "shop", ["seq2/a.png 1 2 3 1 0 0 0", "seq2/b.png 1 2 3 1 0 0 0",
                                          "seq2/a.png 9 9 9 0 1 0 0"], ["seq1/c.png 0 0 0 1 0 0 0"])
    with pytest.raises(KdbenchError, match=r"dataset_train.txt:6: image seq2/a.png is listed again \(first on "
                                           r"line 4\)"):
        read_split(root, "ShopFacade", "train", check_images=False)


@pytest.mark.parametrize("split", ["train", "test"])
def test_cambridge_image_in_both_splits_is_leakage(tmp_path, split):
    root = _cambridge(tmp_path / "shop", ["seq2/a.png 1 2 3 1 0 0 0", "seq1/c.png 1 2 3 1 0 0 0"],
                      ["seq1/c.png 0 0 0 1 0 0 0"])
    with pytest.raises(KdbenchError, match=r"image seq1/c.png is also in dataset_.*both splits \(train/test "
                                           r"leakage\)"):
        read_split(root, "ShopFacade", split, check_images=False)


def test_cambridge_header_is_detected_by_content(shopfacade_labels, tmp_path):
    no_header = tmp_path / "no-header"
    no_header.mkdir()
    for split in ("train", "test"):
        lines = (shopfacade_labels / f"dataset_{split}.txt").read_text().splitlines(keepends=True)
        assert lines[0].startswith("Visual Landmark")  # the real files have the 3-line header
        (no_header / f"dataset_{split}.txt").write_text("".join(lines[3:]))
    for split, n in (("train", 231), ("test", 103)):
        with_h = read_split(shopfacade_labels, "ShopFacade", split, check_images=False)
        without = read_split(no_header, "ShopFacade", split, check_images=False)
        assert len(with_h) == len(without) == n  # no frame lost without the header
        assert [f.image_path.name for f in with_h] == [f.image_path.name for f in without]
        assert np.array_equal(np.stack([f.pose for f in with_h]), np.stack([f.pose for f in without]))


def test_cambridge_one_line_header_and_a_malformed_first_frame(tmp_path):
    root = _cambridge(tmp_path / "a", ["seq2/a.png 1 2 3 1 0 0 0"], ["seq1/c.png 0 0 0 1 0 0 0"], header=False)
    (root / "dataset_train.txt").write_text("ImageFile X Y Z W P Q R\nseq2/a.png 1 2 3 1 0 0 0\n")
    assert len(read_split(root, "ShopFacade", "train", check_images=False)) == 1
    # A first line that names an image is a frame, never a header: a broken one is an error, not skipped.
    (root / "dataset_train.txt").write_text("seq2/a.png 1 2 3 1 0 0\nseq2/b.png 1 2 3 1 0 0 0\n")
    with pytest.raises(KdbenchError, match=r"dataset_train.txt:1: expected 8 space-separated columns"):
        read_split(root, "ShopFacade", "train", check_images=False)


def test_data_root_naming_a_file(tmp_path, monkeypatch):
    from kdbench.scenes.catalog import data_root

    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(KdbenchError, match=r"--data-root .*file.txt .* is a file, not a folder"):
        data_root(str(f))
    monkeypatch.setenv("KDBENCH_DATA", str(f))
    with pytest.raises(KdbenchError, match=r"\$KDBENCH_DATA=.*is a file, not a folder"):
        data_root()
