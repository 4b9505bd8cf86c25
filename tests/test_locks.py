"""kdbench.locks.file_lock: exclusive across processes and threads, re-entrant, dies with its holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kdbench.errors import KdbenchError
from kdbench.locks import file_lock

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="inter-process locks need fcntl")

HOLDER = """
import sys, time
from kdbench.locks import file_lock
with file_lock(sys.argv[1], "a test holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    open(sys.argv[1] + ".done", "w").close()  # the last thing done while holding it
"""


def _holder(lock: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_waits_and_times_out_with_a_message(tmp_path):
    lock = tmp_path / "locks" / "scene.lock"
    proc = _holder(lock, 30)
    try:
        with pytest.raises(KdbenchError, match=r"timed out waiting for scene X.*scene\.lock"):
            with file_lock(lock, "scene X", timeout=0.3, quiet=True):
                pass
    finally:
        proc.terminate()
        proc.wait()
    with file_lock(lock, "scene X", timeout=5, quiet=True):  # free once the holder ended
        pass


def test_a_waiter_gets_the_lock_when_the_holder_finishes(tmp_path):
    lock = tmp_path / "job.lock"
    proc = _holder(lock, 0.5)
    with file_lock(lock, "job", timeout=30, quiet=True):
        assert Path(f"{lock}.done").exists()  # only after the holder finished its work
    proc.wait()


def test_lock_dies_with_a_killed_process(tmp_path):
    lock = tmp_path / "job.lock"
    proc = _holder(lock, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lock.exists()  # the file stays, the lock does not
    with file_lock(lock, "job", timeout=2, quiet=True):
        pass


def test_reentrant_in_one_thread(tmp_path):
    lock = tmp_path / "a.lock"
    with file_lock(lock, "outer", timeout=1, quiet=True):
        with file_lock(lock, "inner", timeout=1, quiet=True):
            pass
        with file_lock(tmp_path / "." / "a.lock", "same file by another spelling", timeout=1, quiet=True):
            pass


def test_threads_of_one_process_exclude_each_other(tmp_path):
    lock = tmp_path / "a.lock"
    errors: list[Exception] = []
    inside = threading.Event()
    release = threading.Event()

    def hold():
        with file_lock(lock, "thread A", quiet=True):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    inside.wait(10)
    try:
        with file_lock(lock, "thread B", timeout=0.2, quiet=True):
            pass
    except KdbenchError as exc:
        errors.append(exc)
    release.set()
    t.join()
    assert len(errors) == 1 and "thread B" in str(errors[0])
    with file_lock(lock, "thread B", timeout=1, quiet=True):
        pass


def test_unwritable_lock_folder_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(KdbenchError, match=r"cannot create the lock file .*not-a-folder.*must be writable"):
        with file_lock(blocker / "x.lock", "scene Y"):
            pass
