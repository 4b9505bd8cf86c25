"""Shared test fixtures. Real-data samples are read from ../shared/fixtures (or $KDBENCH_FIXTURES)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("KDBENCH_FIXTURES", REPO.parent / "shared" / "fixtures"))


def _fixture(*parts: str) -> Path:
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real-data fixture {path} is absent (set KDBENCH_FIXTURES)")
    return path


@pytest.fixture
def stairs_dir() -> Path:
    """The real 7-Scenes stairs sample: frames 0-2 of seq-01..04 with split files."""
    return _fixture("7scenes-stairs-sample", "stairs")


@pytest.fixture
def shopfacade_labels() -> Path:
    """The real ShopFacade dataset_train.txt / dataset_test.txt (no images)."""
    return _fixture("cambridge-shopfacade-labels")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads the user's data root or writes into the repo."""
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "datasets"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


TINY = {"frames_per_seq": 4, "size": (48, 36)}  # 16 train / 8 test frames; renders in well under a second


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """A data root holding tiny renders of both synthetic scenes (read-only for tests: copy to modify)."""
    from kdbench.scenes.synth import render_scene

    root = tmp_path_factory.mktemp("tiny-data")
    for name in ("SynthRoom", "SynthStreet"):
        render_scene(name, root, quiet=True, **TINY)
    return root


def tiny_config(scene: str = "SynthRoom", arch: str = "resnet18", **overrides):
    """A TrainConfig small enough for a test: 32 px cache, 28 px crops, batch 4, 2 epochs."""
    from kdbench.config import make_config

    base = dict(epochs=2, batch_size=4, load_size=32, crop_size=28)
    base.update(overrides)
    return make_config(scene, arch, "quick", **base)


@contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to n inside the block, restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions gain nothing from a second thread, and lose much when the cores are shared."""
    with torch_threads(1):
        yield


def one_line_error(capsys, rc: int) -> str:
    """Assert a CLI call failed with exit 2 and exactly one `kdbench: error:` line, no traceback; return it."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("kdbench: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err
