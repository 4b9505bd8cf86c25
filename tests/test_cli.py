"""Command-line behaviour shared by every command: help, clean errors, scenes list."""

import shutil
import subprocess
import sys

from kdbench.cli import main
from kdbench.scenes.cache import prepare_scene


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "kdbench" in capsys.readouterr().out


def test_user_errors_exit_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "kdbench.cli", "train", "--scene", "stairz"], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "kdbench: error: unknown scene 'stairz'. Did you mean Stairs" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_scenes_list_shows_on_disk_and_prepared(tiny_data_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_data_root / "SynthRoom", root / "SynthRoom", ignore=shutil.ignore_patterns(".kdbench-cache"))
    prepare_scene("SynthRoom", root, load_size=24, quiet=True)
    assert main(["scenes", "list", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert len([n for n in lines if n != "scene"]) == 15
    assert "yes" in lines["SynthRoom"] and "24px" in lines["SynthRoom"]
    assert " no " in lines["SynthStreet"] and " no " in lines["KingsCollege"]
    assert "1220" in lines["KingsCollege"] and "343" in lines["KingsCollege"]


def test_synth_then_list_shows_prepared(tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["scenes", "synth", "SynthStreet", "--data-root", str(root), "--frames", "3", "--size", "40x30",
                 "--quiet"]) == 0
    capsys.readouterr()
    main(["scenes", "list", "--data-root", str(root)])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "SynthStreet" in ln)
    from kdbench.config import get_preset

    quick = f"{get_preset('quick').load_size}px"
    assert "yes" in line and quick in line and "256px" not in line  # prepared at the quick preset's size
