"""Plugins: a file passed with --plugin, an installed entry point, and the README's example."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.methods import GroundTruth, LossContext, PoseLoss, create_method, load_plugin, registry
from kdbench.models import PoseOutput

README = Path(__file__).resolve().parents[1] / "README.md"

FILE_PLUGIN = '''
import torch
from kdbench.methods import HParam, Method, register_method


@register_method("my_file_kd")
class MyFileKD(Method):
    description = "scaled imitation from a plugin file"
    hparams = {"scale": HParam(0.25, "float", "weight of the imitation term")}

    def loss(self, student, teacher, gt, ctx):
        imitation = ctx.pose_loss.per_sample(student.xyz, student.q, teacher.xyz, teacher.q).mean()
        return {"gt": ctx.pose_loss(student, gt), "imitation": self.scale * imitation}
'''

ENTRY_POINT_MODULE = '''
from kdbench.methods import HParam, Method


class MyMethod(Method):  # no decorator: the entry point's name registers it
    description = "a method installed through an entry point"
    hparams = {"strength": HParam(7, "int", "how hard to distil")}

    def loss(self, student, teacher, gt, ctx):
        return {"gt": ctx.pose_loss(student, gt)}
'''


@pytest.fixture(autouse=True)
def clean_registry():
    """Names registered by a test do not leak into other tests."""
    saved, loaded = dict(registry._REGISTRY), registry._entry_points_loaded
    modules = set(sys.modules)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    registry._entry_points_loaded = loaded
    for name in set(sys.modules) - modules:
        if name.startswith("kdbench_plugin_") or name in ("mymodule",):
            del sys.modules[name]


def test_plugin_file_appears_in_methods(tmp_path, capsys):
    path = tmp_path / "my_kd.py"
    path.write_text(FILE_PLUGIN)
    assert main(["methods", "--plugin", str(path)]) == 0
    out = capsys.readouterr().out
    assert "my_file_kd" in out and "scaled imitation from a plugin file" in out
    assert re.search(r"^\s+scale\s+float\s+0\.25\s+weight of the imitation term", out, re.M)
    assert create_method("my_file_kd", {"scale": "2"}).scale == 2.0


def test_bad_plugin_files_are_clear_errors(tmp_path, capsys):
    assert main(["methods", "--plugin", str(tmp_path / "missing.py")]) == 2
    assert "does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken.py"
    broken.write_text("def oops(:\n")
    with pytest.raises(KdbenchError, match="failed to import"):
        load_plugin(broken)
    clash = tmp_path / "clash.py"
    clash.write_text(FILE_PLUGIN.replace('"my_file_kd"', '"sckd"'))
    with pytest.raises(KdbenchError, match="already registered"):
        load_plugin(clash)


def _install_entry_point_package(tmp_path, monkeypatch) -> None:
    """A minimal installed distribution (a .dist-info with entry_points.txt) on sys.path, then reload."""
    site = tmp_path / "site"
    dist = site / "myplug-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kdbench.methods]\nmyname = mymodule:MyMethod\n")
    (site / "mymodule.py").write_text(ENTRY_POINT_MODULE)
    monkeypatch.syspath_prepend(str(site))
    registry.reload_entry_points()


def test_entry_point_plugin_appears_in_methods(tmp_path, monkeypatch, capsys):
    _install_entry_point_package(tmp_path, monkeypatch)
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^myname\s+\(teacher, from mymodule\)", out, re.M)
    assert re.search(r"^\s+strength\s+int\s+7\s+how hard to distil", out, re.M)
    assert create_method("myname").strength == 7


def readme_example() -> str:
    """The python code block of the README's "Add a KD method" section."""
    section = README.read_text().split("## Add a KD method", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section should hold exactly one python example"
    return blocks[0]


def test_readme_example_loads_and_computes_its_loss(tmp_path, capsys):
    path = tmp_path / "my_kd.py"
    path.write_text(readme_example())
    assert main(["methods", "--plugin", str(path)]) == 0
    assert "my_kd" in capsys.readouterr().out
    # The README's usage lines name the file and method the example defines.
    assert "kdbench methods --plugin my_kd.py" in README.read_text()
    assert re.search(r"kdbench run --plugin my_kd.py --methods \S*my_kd", README.read_text())

    m = create_method("my_kd", {"weight": "3"})
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(4, 4, generator=gen), dim=1)
    s = PoseOutput(torch.randn(4, 3, generator=gen, requires_grad=True), q,
                   {"pool": torch.randn(4, 16, generator=gen, requires_grad=True)})
    t = PoseOutput(torch.randn(4, 3, generator=gen), q, {"pool": torch.randn(4, 24, generator=gen)})
    gt = GroundTruth(torch.randn(4, 3, generator=gen), q)
    m.setup(s, t)
    pose_loss = PoseLoss(500.0)
    terms = m.loss(s, t, gt, LossContext(pose_loss, 0, 1))
    expected_match = ((m.adaptor(s.features["pool"]) - t.features["pool"]) ** 2).mean()
    assert torch.allclose(terms["gt"], pose_loss(s, gt))
    assert torch.allclose(terms["match"], 3 * expected_match)
    sum(terms.values()).backward()
    assert m.adaptor.weight.grad is not None and s.features["pool"].grad is not None
    assert m.student_taps() == ("pool",) and list(m.state_dict()) == ["adaptor.weight", "adaptor.bias"]


def test_readme_documents_the_entry_point_group():
    text = README.read_text()
    assert '[project.entry-points."kdbench.methods"]' in text
    assert registry.ENTRY_POINT_GROUP == "kdbench.methods"
    assert 'my_kd = "my_package.my_kd:PoolMatch"' in text


TINY_RUN = ["--scenes", "SynthRoom", "--epochs", "1", "--batch-size", "4", "--load-size", "32", "--crop", "28",
            "--quiet"]


def _trained_methods(runs) -> dict[str, str]:
    from kdbench.reports.store import ResultsStore

    with ResultsStore(runs) as store:
        return {r["method"]: r["status"] for r in store.jobs() if r["kind"] == "student"}


def test_file_plugin_trains_through_kdbench_run(tmp_path, tiny_data_root, capsys):
    plugin = tmp_path / "my_file_kd.py"
    plugin.write_text(FILE_PLUGIN)
    runs = tmp_path / "runs"
    rc = main(["run", "--seeds", "1",
               "--plugin", str(plugin), "--methods", "my_file_kd", "--set", "my_file_kd.scale=0.5",
               "--runs-dir", str(runs), "--data-root", str(tiny_data_root), *TINY_RUN])
    assert rc == 0, capsys.readouterr()
    assert _trained_methods(runs) == {"my_file_kd": "done"}
    assert "my_file_kd" in capsys.readouterr().out  # on the printed leaderboard


def test_entry_point_plugin_trains_through_kdbench_run(tmp_path, tiny_data_root, monkeypatch, capsys):
    _install_entry_point_package(tmp_path, monkeypatch)
    runs = tmp_path / "runs"
    rc = main(["run", "--seeds", "1",
               "--methods", "baseline,myname", "--runs-dir", str(runs), "--data-root", str(tiny_data_root),
               *TINY_RUN])
    assert rc == 0, capsys.readouterr()
    assert _trained_methods(runs) == {"baseline": "done", "myname": "done"}
