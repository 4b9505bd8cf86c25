"""Inter-process file locks that die with their process: one writer per scene, cache or job at a time.

`file_lock(path, what)` holds an exclusive `fcntl.flock` on `path` (created if needed). The kernel drops
the lock when the holding process exits, however it exits (kill -9 included), so a lock file left on disk
is never "stale": the next process simply takes it. A second process waits (printing once whom it waits
for), or raises a KdbenchError after `timeout` seconds.

Within one process the lock is re-entrant per thread (a scene lock held by `prepare_scene` may be taken
again by the cache build it calls), and threads of the same process exclude each other: flock alone
would not give either (a second flock on a new descriptor in the same process blocks forever).
Without fcntl (Windows) only the in-process part holds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from kdbench.errors import KdbenchError

try:
    import fcntl
except ImportError:  # Windows: in-process exclusion only
    fcntl = None  # type: ignore[assignment]

POLL_S = 0.1


class _Held:
    """A path's in-process state: the thread lock, the open lock file and the re-entry count."""

    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.count = 0
        self.fh: IO | None = None


_registry: dict[str, _Held] = {}
_registry_guard = threading.Lock()


def _held(path: Path) -> _Held:
    key = os.path.realpath(path)
    with _registry_guard:
        return _registry.setdefault(key, _Held())


def _open_lock_file(path: Path, what: str) -> IO:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a")
    except OSError as exc:
        raise KdbenchError(f"cannot create the lock file {path} for {what} ({exc.strerror or exc}): the folder "
                           f"{path.parent} must be writable; use a writable location or fix its permissions") from None


def _flock(fh: IO, path: Path, what: str, deadline: float | None, quiet: bool) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    if not quiet:
        from kdbench.progress import console

        console.print(f"waiting for another kdbench process: {what} (lock {path})", markup=False, highlight=False,
                      soft_wrap=True)
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                raise _timeout(path, what) from None
            time.sleep(POLL_S)


def _timeout(path: Path, what: str) -> KdbenchError:
    return KdbenchError(f"timed out waiting for {what}: another process holds the lock {path}; wait for it to "
                        "finish (or stop it) and rerun")


@contextmanager
def file_lock(path: str | os.PathLike, what: str, timeout: float | None = None,
              quiet: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on `path` for the block; `what` names the work in messages (e.g. 'scene X').

    Waits for another holder (forever when `timeout` is None, else raises KdbenchError after `timeout`
    seconds). Re-entrant within a thread. The lock file is left in place: removing it could let two
    processes lock two different files of the same name.
    """
    path = Path(path)
    deadline = None if timeout is None else time.monotonic() + timeout
    held = _held(path)
    if not held.rlock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
        raise _timeout(path, what)
    try:
        if held.count == 0:
            fh = _open_lock_file(path, what)
            try:
                _flock(fh, path, what, deadline, quiet)
            except BaseException:
                fh.close()
                raise
            held.fh = fh
        held.count += 1
        try:
            yield path
        finally:
            held.count -= 1
            if held.count == 0 and held.fh is not None:
                fh, held.fh = held.fh, None
                if fcntl is not None:
                    fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
    finally:
        held.rlock.release()
