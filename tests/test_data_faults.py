"""Fault injection on the data side, driven through the CLI: what breaks is repaired or refused in one line.

Scenes are small synthetic renders (`kdbench scenes synth ... --frames 30 --size 96x72`, as in the issue).
Errors: exit status 2 and a one-line message naming the file or folder. Repairs: exit 0 and a message.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdbench.cli import main
from kdbench.config import get_preset
from kdbench.scenes.cache import cache_path, load_split_cache
from kdbench.scenes.readers import read_split

REPO = Path(__file__).resolve().parents[1]
QUICK_LOAD = get_preset("quick").load_size  # `scenes synth` and `prepare` cache at the quick preset's size
SYNTH = ["--frames", "30", "--size", "96x72", "--quiet"]


def _cli(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "kdbench.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _one_line_error(capsys, argv: list[str], *parts: str) -> str:
    assert main(argv) == 2
    text = capsys.readouterr().err
    err = text.strip().splitlines()[-1]  # progress notes may come before it
    assert err.startswith("kdbench: error: ") and text.count("kdbench: error") == 1 and "Traceback" not in text
    for part in parts:
        assert part in err, err
    return err


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "data"
    for name in ("SynthRoom", "SynthStreet"):
        assert main(["scenes", "synth", name, "--data-root", str(root), *SYNTH]) == 0
    return root


@pytest.fixture
def data(rendered, tmp_path) -> Path:
    """A private copy of the rendered scenes (caches included) that a test may damage."""
    root = tmp_path / "data"
    shutil.copytree(rendered, root, symlinks=True, ignore=shutil.ignore_patterns(".kdbench-locks"))
    return root


def _prepare(capsys, root: Path, name: str = "SynthRoom") -> tuple[str, str]:
    """`kdbench scenes prepare`: (fingerprint, stderr)."""
    capsys.readouterr()
    assert main(["scenes", "prepare", name, "--data-root", str(root), "--quiet"]) == 0
    out, err = capsys.readouterr()
    name_out, size, fp = out.strip().split("\t")
    assert name_out == name and size == f"{QUICK_LOAD}px" and fp.startswith("data ")
    return fp[5:], " ".join(err.split())


# ---------------------------------------------------------------- caches repair themselves


@pytest.mark.parametrize("damage", ["truncated images.npy", "missing split_mean.npy"])
def test_corrupt_cache_is_rebuilt_with_a_message(data, capsys, damage):
    fp, err = _prepare(capsys, data)
    assert "damaged" not in err
    path = cache_path(data / "SynthRoom", "train", QUICK_LOAD)
    before = np.load(path / "images.npy").copy()
    if damage.startswith("truncated"):
        (path / "images.npy").write_bytes((path / "images.npy").read_bytes()[: 5000])
    else:
        (path / "split_mean.npy").unlink()
    fp2, err = _prepare(capsys, data)
    assert f"{path} is damaged" in err and "rebuilding it" in err  # said even with --quiet
    assert fp2 == fp and np.array_equal(np.load(path / "images.npy"), before)
    _, err = _prepare(capsys, data)
    assert "damaged" not in err  # repaired, not rebuilt on every run


def test_changed_data_gives_a_new_fingerprint(data, capsys):
    fp, _ = _prepare(capsys, data, "SynthStreet")
    label = data / "SynthStreet" / "dataset_test.txt"
    lines = label.read_text().splitlines(keepends=True)
    cols = lines[-1].split()
    cols[1] = f"{float(cols[1]) + 0.25:.6f}"  # one test label moved by 25 cm
    label.write_text("".join(lines[:-1]) + " ".join(cols) + "\n")
    fp_label, _ = _prepare(capsys, data, "SynthStreet")
    frame = read_split(data / "SynthStreet", "SynthStreet", "train")[7].image_path
    Image.new("RGB", (96, 72), (10, 20, 30)).save(frame)
    fp_image, _ = _prepare(capsys, data, "SynthStreet")
    assert len({fp, fp_label, fp_image}) == 3
    assert _prepare(capsys, data, "SynthStreet")[0] == fp_image  # unchanged data: same fingerprint


# ---------------------------------------------------------------- concurrency


def test_two_concurrent_synths_both_succeed(tmp_path):
    # On an unlocked main the race is lost when the second render lands during the first's cache build:
    # mostly with starts close together, sometimes at 0.2 s (the report).
    for delay in (0.0, 0.05, 0.0, 0.2):
        root = tmp_path / f"d{delay}"
        first = _cli("scenes", "synth", "SynthRoom", "--data-root", str(root), *SYNTH)
        time.sleep(delay)
        second = _cli("scenes", "synth", "SynthRoom", "--data-root", str(root), *SYNTH)
        for proc in (first, second):
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            assert out.strip() == str(root.resolve() / "SynthRoom")
        train = load_split_cache("SynthRoom", root, "train", load_size=QUICK_LOAD)
        test = load_split_cache("SynthRoom", root, "test", load_size=QUICK_LOAD, train_mean=train.mean)
        assert len(train) == 120 and len(test) == 60  # intact: every frame, both splits
        assert all(f.image_path.is_file() for f in read_split(root / "SynthRoom", "SynthRoom", "test"))
        assert not [p for p in root.iterdir() if p.name.startswith(".SynthRoom")]  # no temp folders


PREPARE = """
import sys
from kdbench.runners.benchmark import ensure_scenes
from kdbench.scenes.catalog import resolve_scenes
print(ensure_scenes(resolve_scenes("SynthRoom"), sys.argv[1], 32, True)["SynthRoom"])
"""


@pytest.mark.slow  # renders the default-size SynthRoom (what `kdbench run` renders), twice in parallel on main
def test_two_runs_on_a_fresh_data_root_render_once(tmp_path):
    """What two `kdbench run` do before training: the second waits, then reuses the first's scene."""
    root = tmp_path / "fresh"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = []
    for _ in range(2):
        procs.append(subprocess.Popen([sys.executable, "-c", PREPARE, str(root)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
        time.sleep(0.2)
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        outs.append(out.strip())
    assert outs[0] == outs[1] and len(outs[0]) == 16  # the same data, the same fingerprint


def test_killed_render_leaves_orphans_that_the_next_render_removes(tmp_path):
    root = tmp_path / "data"
    proc = _cli("scenes", "synth", "SynthRoom", "--data-root", str(root), "--frames", "100", "--size", "160x120",
                "--quiet")
    deadline = time.monotonic() + 120
    while not list(root.glob(".SynthRoom.*.tmp")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert list(root.glob(".SynthRoom.*.tmp"))  # the kill left its temporary folder
    assert main(["scenes", "synth", "SynthRoom", "--data-root", str(root), "--frames", "3", "--size", "48x36",
                 "--quiet"]) == 0
    assert not [p for p in root.iterdir() if p.name.startswith(".SynthRoom")]
    assert len(read_split(root / "SynthRoom", "SynthRoom", "train")) == 12


# ---------------------------------------------------------------- refused in one line, exit status 2


def test_leaking_split_exits_2(data, capsys):
    (data / "SynthRoom" / "TrainSplit.txt").write_bytes(b"sequence1\r\nsequence2\r\nsequence5\r\n")
    _one_line_error(capsys, ["scenes", "prepare", "SynthRoom", "--data-root", str(data)],
                    "TrainSplit.txt:3: sequence5 is also in TestSplit.txt:1", "train/test leakage")


def test_duplicate_cambridge_image_exits_2(data, capsys):
    label = data / "SynthStreet" / "dataset_train.txt"
    lines = label.read_text().splitlines(keepends=True)
    image = lines[5].split()[0]
    label.write_text("".join(lines) + f"{image} 1 2 3 1 0 0 0\n")
    _one_line_error(capsys, ["scenes", "prepare", "SynthStreet", "--data-root", str(data)],
                    f"dataset_train.txt:{len(lines) + 1}: image {image} is listed again (first on line 6)")


@pytest.mark.parametrize("fault,index", [("1x1", 0), ("1x1", 17), ("16-bit", 3), ("corrupt", 0)])
def test_odd_or_corrupt_image_exits_2(data, capsys, fault, index):
    frame = read_split(data / "SynthRoom", "SynthRoom", "train")[index].image_path
    if fault == "1x1":
        Image.new("RGB", (1, 1)).save(frame)
    elif fault == "16-bit":
        Image.fromarray(np.full((72, 96), 50000, np.uint16)).save(frame)
    else:
        frame.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    what = {"1x1": "is 1x1 RGB", "16-bit": "is 96x72 I;16", "corrupt": "corrupt"}[fault]
    _one_line_error(capsys, ["scenes", "prepare", "SynthRoom", "--data-root", str(data)], str(frame), what)


def test_data_root_naming_a_file_exits_2(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    for argv in (["scenes", "list"], ["scenes", "synth", "SynthRoom", "--frames", "2"],
                 ["scenes", "prepare", "SynthRoom"]):
        _one_line_error(capsys, [*argv, "--data-root", str(f)], f"--data-root {f}", "is a file, not a folder")


def _read_only(cmd: list[str]) -> list[str]:
    """Run `cmd` unable to write read-only folders: root ignores permission bits unless its capability goes."""
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a folder read-only for the test")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]


def test_read_only_data_root(data):
    for p in [data, *data.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode & ~0o222)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        base = [sys.executable, "-m", "kdbench.cli", "scenes", "prepare", "SynthRoom", "--data-root", str(data)]
        ok = subprocess.run(_read_only(base), capture_output=True, text=True, env=env)
        assert ok.returncode == 0, ok.stderr  # a prepared cache is read without writing anything
        other = QUICK_LOAD + 8  # a load size with no cache yet
        bad = subprocess.run(_read_only([*base, "--load-size", str(other)]), capture_output=True, text=True, env=env)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
        err = bad.stderr.strip()
        assert "\n" not in err and f"needs a new {other}px cache" in err and "is not writable" in err
        assert str(data / "SynthRoom" / ".kdbench-cache") in err and "copy the scene folder" in err
    finally:
        for p in [data, *data.rglob("*")]:
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o200)
