"""What a checkpoint or cache no longer matches is said in one line: changed labels at `evaluate`, a replaced
image at cache reuse, weights that do not fit their config, a method that replaced a student layer."""

import shutil
from pathlib import Path

import pytest
from conftest import one_line_error, torch_threads

from kdbench.cli import main
from kdbench.fileio import torch_save_atomic
from kdbench.runners.train import load_checkpoint

TINY = ["--epochs", "1", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def trained(tiny_data_root, tmp_path_factory):
    """A private data root and a `kdbench train` student trained on it (1 epoch)."""
    base = tmp_path_factory.mktemp("trained")
    data = Path(shutil.copytree(tiny_data_root, base / "data"))
    with torch_threads(1):
        assert main(["train", "--scene", "SynthRoom", "--runs-dir", str(base / "runs"), "--data-root", str(data),
                     *TINY]) == 0
    (ckpt,) = (base / "runs").rglob("checkpoint.pt")
    return data, ckpt


def test_evaluate_says_when_the_labels_changed_since_training(trained, tmp_path, capsys, one_thread):
    data, ckpt = trained
    assert main(["evaluate", str(ckpt), "--data-root", str(data), "--out", str(tmp_path / "e1"), "--quiet"]) == 0
    assert "changed since" not in capsys.readouterr().err
    data = Path(shutil.copytree(data, tmp_path / "data"))
    pose = data / "SynthRoom" / "seq-05" / "frame-000000.pose.txt"  # a test frame (TestSplit: 5, 6)
    rows = pose.read_text().splitlines()
    rows[0] = " ".join(str(float(v) + 0.5) if i == 3 else v for i, v in enumerate(rows[0].split()))
    pose.write_text("\n".join(rows) + "\n")
    assert main(["evaluate", str(ckpt), "--data-root", str(data), "--out", str(tmp_path / "e2"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data of SynthRoom changed since this model was trained" in err, err
    assert "kdbench run" in err


def test_weights_that_do_not_fit_their_config_are_one_line(trained, tmp_path, capsys):
    _, ckpt = trained
    state = load_checkpoint(ckpt)
    state["config"]["arch"] = "resnet34"  # resnet18 weights under a resnet34 config
    bad = tmp_path / "checkpoint.pt"
    torch_save_atomic(state, bad)
    for argv in (["evaluate", str(bad)], ["export", str(bad), "--out", str(tmp_path / "m.onnx")]):
        err = one_line_error(capsys, main(argv))
        assert "do not fit the resnet34" in err and "RuntimeError" not in err, err


LAYER_PLUGIN = '''
import torch
from kdbench.methods import Method, register_method

@register_method("{name}")
class Replacer(Method):
    description = "replaces the student's rotation head in frozen()"
    needs_teacher = False

    def frozen(self, student, epoch, epochs):
        student.fc_q = torch.nn.Sequential(torch.nn.Linear(student.fc_q.in_features, 4))
        return []

    def loss(self, student, teacher, gt, ctx):
        return {{"gt": ctx.pose_loss(student, gt)}}
'''


def test_a_method_that_replaces_a_student_layer_fails_its_job(tiny_data_root, tmp_path, capsys, one_thread,
                                                              monkeypatch):
    from kdbench.methods import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the plugin leaves no trace
    plugin = tmp_path / "replacer.py"
    plugin.write_text(LAYER_PLUGIN.format(name="replacer"))
    runs = tmp_path / "runs"
    rc = main(["run", "--seeds", "1", "--methods", "replacer", "--scenes", "SynthRoom", "--plugin", str(plugin),
               "--runs-dir", str(runs), "--data-root", str(tiny_data_root), "--load-size", "32", "--crop", "28",
               *TINY])
    out = capsys.readouterr().out
    assert rc == 1 and "changed the student's modules in frozen() (fc_q" in out, out
    assert not list(runs.rglob("metrics.json"))  # not recorded as done


def _prepare(data, capsys) -> str:
    capsys.readouterr()
    assert main(["scenes", "prepare", "SynthRoom", "--data-root", str(data), "--load-size", "32"]) == 0
    captured = capsys.readouterr()
    return captured.err + captured.out  # the reason for a rebuild on stderr, the fingerprint last on stdout


def test_an_image_replaced_with_the_same_size_and_mtime_rebuilds_the_cache(tiny_data_root, tmp_path, capsys):
    import io
    import os

    import numpy as np
    from PIL import Image

    data = Path(shutil.copytree(tiny_data_root, tmp_path / "data"))
    first = _prepare(data, capsys).splitlines()[-1]
    assert "rebuilding" not in _prepare(data, capsys)  # a copy's new ctimes: hashed once, found the same
    image = data / "SynthRoom" / "seq-01" / "frame-000000.color.png"  # a training frame
    st = image.stat()
    pixels = np.asarray(Image.open(image)).copy()
    pixels[:8] = 255 - pixels[:8]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=9)
    new = buf.getvalue()
    assert len(new) <= st.st_size
    image.write_bytes(new + b"\0" * (st.st_size - len(new)))  # PNG readers stop at IEND: same size, new content
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert image.stat().st_size == st.st_size and image.stat().st_mtime_ns == st.st_mtime_ns
    out = _prepare(data, capsys)
    assert "the content of seq-01/frame-000000.color.png changed" in out, out
    assert out.splitlines()[-1] != first  # another data fingerprint: jobs on it are new jobs
